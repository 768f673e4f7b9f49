"""dragstudio-cli: the documented commands work, and bad input gets one line, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main

CASE_SQUARE = "animals/JH_2023-09-14-1820-16"  # 512×512
CASE_WIDE = "building_city_view/YAN_2023-09-15-2228-28"  # 512×288

FAST = [
    "--lora-steps",
    "1",
    "--lora-resolution",
    "128",
    "--drag-steps",
    "3",
    "--ddim-steps",
    "10",
    "--no-lora-cache",
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("case", [CASE_SQUARE, CASE_WIDE])
def test_edit_a_dragbench_case_end_to_end(case, dev_data, tiny_model_dir, tmp_path) -> None:
    out, trace_path = tmp_path / "out.png", tmp_path / "trace.json"
    result = _cli(
        "edit", "--model", str(tiny_model_dir), "--case", str(dev_data / case),
        "--out", str(out), "--trace", str(trace_path), *FAST,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    source = Image.open(dev_data / case / "original_image.png")
    assert Image.open(out).size == source.size
    trace = json.loads(trace_path.read_text())
    for key in ("stages", "lora", "iterations", "final_handles", "targets", "image_size",
                "working_size", "device", "dtype", "params"):  # fmt: skip
        assert key in trace
    assert set(trace["stages"]) == {"load", "lora", "inversion", "drag", "denoise", "total"}
    assert trace["lora"]["steps"] == 1 and trace["lora"]["cached"] is False
    assert trace["image_size"] == list(source.size)
    assert trace["working_size"][0] == 512 and trace["working_size"][1] % 8 == 0
    assert [it["step"] for it in trace["iterations"]] == [1, 2, 3]
    assert all(len(it["handles"]) == len(trace["targets"]) for it in trace["iterations"])
    assert trace["device"] == "cpu" and trace["dtype"] == "float32"
    # Outside the case's mask the photo's own pixels come through untouched.
    from backend.bench.dragbench import load_case

    mask = load_case(dev_data / case).mask
    edited = np.asarray(Image.open(out).convert("RGB"))
    original = np.asarray(source.convert("RGB"))
    assert np.array_equal(edited[~mask], original[~mask])


def test_make_tiny_model_writes_a_loadable_pipeline(tmp_path: Path) -> None:
    assert main(["make-tiny-model", str(tmp_path / "m"), "--seed", "3"]) == 0
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    import torch

    from backend.models import load_pipeline

    pipe, source = load_pipeline(str(tmp_path / "m"), torch.device("cpu"))
    assert source.kind == "folder"
    assert len(pipe.unet.down_blocks) == 4 and len(pipe.unet.up_blocks) == 4
    assert pipe.vae.config.block_out_channels and len(pipe.vae.config.block_out_channels) == 4
    assert pipe.scheduler.config.steps_offset == 1 and not pipe.scheduler.config.clip_sample


@pytest.fixture
def small_image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(np.full((64, 96, 3), 120, np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pair", "10,10,200,10"], "outside"),
        (["--pair", "10,10,20"], "HX,HY,TX,TY"),
        (["--pair", "a,b,c,d"], "numbers"),
        (["--pair", "nan,1,2,3"], "finite"),
        (["--pair", "10,10,20,10", "--mask", "MASK_WRONG"], "mask"),
        (["--pair", "10,10,20,10", "--lora-steps", "-3"], "LoRA steps"),
        (["--pair", "10,10,20,10", "--inversion-strength", "1.5"], "Inversion strength"),
    ],
)
def test_bad_input_gets_one_line_and_a_nonzero_exit(
    args, message, small_image, tiny_model_dir, tmp_path, capsys
) -> None:
    wrong = tmp_path / "mask.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(wrong)
    args = [str(wrong) if a == "MASK_WRONG" else a for a in args]
    argv = ["edit", "--model", str(tiny_model_dir), "--image", str(small_image),
            "--out", str(tmp_path / "o.png"), *args]  # fmt: skip
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects malformed flags itself
        code = exc.code
    assert code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert message in err
    assert "Traceback" not in err


def test_unreadable_image_and_unknown_model_are_one_line_errors(tmp_path, tiny_model_dir) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r1 = _cli("edit", "--model", str(tiny_model_dir), "--image", str(bad),
              "--pair", "1,1,2,2", "--out", str(tmp_path / "o.png"))  # fmt: skip
    assert r1.returncode != 0 and "Traceback" not in r1.stderr
    assert r1.stderr.strip().splitlines()[-1].startswith("dragstudio-cli: error:")
    img = tmp_path / "ok.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    r2 = _cli("edit", "--model", "nobody/no-such-model", "--image", str(img),
              "--pair", "1,1,2,2", "--out", str(tmp_path / "o.png"))  # fmt: skip
    assert r2.returncode != 0 and "Traceback" not in r2.stderr
    last = r2.stderr.strip().splitlines()[-1]
    assert "nobody/no-such-model" in last and "--model" in last
    r3 = _cli("edit", "--model", str(tmp_path / "weights.ckpt"), "--image", str(img),
              "--pair", "1,1,2,2", "--out", str(tmp_path / "o.png"))  # fmt: skip
    assert r3.returncode != 0 and "not found" in r3.stderr


def test_help_lists_the_commands() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("make-tiny-model", "edit", "bench"):
        assert command in result.stdout
