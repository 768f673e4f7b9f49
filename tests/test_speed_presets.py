"""Named fast options: ``--speed`` for edit and bench, the label in traces, projects, history."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from backend.errors import InvalidRequest
from backend.methods import GOODDRAG
from backend.request import DragParams, DragRequest, LoraParams, PointPair
from backend.speed_presets import PAPER_SPEED, PRESETS, SPEEDS, check_speed, with_speed

FAST = ["--working-width", "128", "--device", "cpu", "--quiet", "--drag-steps", "1"]


def test_each_preset_sets_its_knobs_and_paper_puts_them_back() -> None:
    params = replace(DragParams(), r1=2, inference_steps=30)
    lora = replace(LoraParams(), rank=8, steps=12)
    for name, preset in PRESETS.items():
        p, lo = with_speed(params, lora, name)
        assert all(getattr(p, k) == v for k, v in preset.drag.items())
        assert all(getattr(lo, k) == v for k, v in preset.lora.items())
        assert p.r1 == 2 and lo.rank == 8  # knobs no preset touches are kept
    p, lo = with_speed(params, lora, PAPER_SPEED)
    assert (p.inference_steps, lo.steps, lo.learning_rate, lo.resolution) == (50, 80, 5e-4, 512)
    _, lo = with_speed(params, lora, PAPER_SPEED, GOODDRAG)
    assert lo.steps == 70  # the method's default
    assert SPEEDS[0] == PAPER_SPEED and set(SPEEDS[1:]) == set(PRESETS)
    with pytest.raises(InvalidRequest, match="unknown speed"):
        check_speed("ludicrous")
    request = DragRequest(np.zeros((32, 32, 3), np.uint8), (PointPair((1, 1), (2, 2)),))
    with pytest.raises(InvalidRequest, match="unknown speed"):
        replace(request, speed="ludicrous").validate()


def test_edit_with_speed_records_it_in_trace_project_and_history(
    tiny_model_dir: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    from backend.project import read_project

    image = tmp_path / "photo.png"
    Image.fromarray(photo).save(image)
    proj, trace = tmp_path / "a.dragstudio", tmp_path / "trace.json"
    args = ["edit", "--image", str(image), "--model", str(tiny_model_dir), "--pair",
            "80,128,140,128", "--lora-steps", "0", "--no-lora-cache", "--out",
            str(tmp_path / "out.png"), "--trace", str(trace), "--save-project", str(proj),
            "--speed", "ddim-25", *FAST]  # fmt: skip
    assert main(args) == 0
    t = json.loads(trace.read_text())
    assert t["speed"] == "ddim-25" and t["ddim_steps"] == 25
    assert t["lora_params"]["steps"] == 0  # the flag wins over the method's 80
    project = read_project(proj)
    assert project.speed == "ddim-25" and project.history[-1].speed == "ddim-25"
    assert project.to_request().speed == "ddim-25"
    # Continuing the project keeps its speed; a flag still wins over the preset's value.
    again = ["edit", "--project", str(proj), "--pair", "90,128,120,128", "--out",
             str(tmp_path / "out2.png"), "--trace", str(trace), "--no-lora-cache",
             "--lora-steps", "0", *FAST]  # fmt: skip
    assert main([*again, "--ddim-steps", "6"]) == 0
    t2 = json.loads(trace.read_text())
    assert t2["speed"] == "ddim-25" and t2["ddim_steps"] == 6
    assert main([*again, "--speed", "paper", "--ddim-steps", "4"]) == 0
    t3 = json.loads(trace.read_text())
    assert "speed" not in t3 and t3["params"]["inference_steps"] == 4  # paper: absent


def test_bench_with_speed_records_it(dev_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fast"
    args = ["bench", "--data", str(dev_data), "--model", str(tiny_model_dir), "--out", str(out),
            "--limit", "1", "--lora-steps", "0", "--ddim-steps", "4", "--no-metrics",
            "--speed", "lora-40-fast-lr", *FAST]  # fmt: skip
    assert main(args) == 0
    trace = json.loads(next(out.rglob("trace.json")).read_text())
    assert trace["speed"] == "lora-40-fast-lr"
    assert trace["lora_params"]["learning_rate"] == 1e-3 and trace["lora_params"]["steps"] == 0
    settings = json.loads((out / "bench.json").read_text())["settings"]
    assert settings["speed"] == "lora-40-fast-lr"


def test_bad_speed_is_a_one_line_error(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["edit", "--image", str(tmp_path / "x.png"), "--model", str(tiny_model_dir),
            "--out", str(tmp_path / "o.png"), "--speed", "warp"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and "invalid choice: 'warp'" in capsys.readouterr().err


def test_speed_crosses_the_server_codec_and_old_projects_read_as_paper(tmp_path: Path) -> None:
    from backend.errors import DragStudioError
    from backend.project import MANIFEST, Project, read_project, save_project
    from backend.result import LoraOutcome, Trace
    from backend.server.codec import request_from_json, request_to_json, trace_from_json

    image = np.zeros((32, 32, 3), np.uint8)
    request = DragRequest(image, (PointPair((1, 1), (2, 2)),), model="m", speed="lora-256")
    blobs = {"image": "a" * 64}
    wire = request_to_json(request, blobs)
    assert wire["speed"] == "lora-256"
    assert "speed" not in request_to_json(replace(request, speed=PAPER_SPEED), blobs)
    assert request_from_json(wire, lambda _kind, _sha: image).speed == "lora-256"
    trace = Trace(
        stages={}, lora=LoraOutcome(0, False, "none"), iterations=(), drag_iterations=0,
        reached=False, final_handles=(), handles=(), targets=(), final_distances=(),
        image_size=(32, 32), working_size=(32, 32), feature_size=(16, 16),
        optimized_timestep=1, device="cpu", dtype="float32", model="m", prompt="",
        generated=False, guidance_scale=1.0, ddim_steps=25, params=DragParams(),
        lora_params=LoraParams(), speed="ddim-25",
    )  # fmt: skip
    assert trace_from_json(trace.to_dict()).speed == "ddim-25"

    path = tmp_path / "p.dragstudio"
    save_project(Project(image, None, (), "", DragParams(), LoraParams(), "m"), path)
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read(MANIFEST))
        files = {n: z.read(n) for n in z.namelist()}
    assert manifest["speed"] == PAPER_SPEED
    for value, ok in ((None, True), ("warp", False)):
        if value is None:
            manifest.pop("speed")
        else:
            manifest["speed"] = value
        files[MANIFEST] = json.dumps(manifest).encode()
        with zipfile.ZipFile(path, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        if ok:
            assert read_project(path).speed == PAPER_SPEED  # older files: the paper's
        else:
            with pytest.raises(DragStudioError, match="unknown speed"):
                read_project(path)
