"""``dragstudio-cli bench`` end to end on the tiny model with randomly initialised metric
networks: both data formats, resuming, refusing mixed settings, unavailable metrics."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.bench import formats
from backend.cli import main
from backend.errors import InvalidRequest

FAST = [
    "--lora-steps", "0", "--drag-steps", "2", "--ddim-steps", "4",
    "--working-width", "128", "--device", "cpu", "--quiet",
]  # fmt: skip


def _image(h: int, w: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    img = np.stack([128 + 90 * np.sin(x / 9 + seed), 128 + 90 * np.cos(y / 7), 100 + x % 50], -1)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def _dragbench_case(folder: Path, seed: int, points: list[list[int]], prompt: str) -> None:
    folder.mkdir(parents=True)
    img = _image(96, 128, seed)
    Image.fromarray(img).save(folder / "original_image.png")
    mask = np.zeros((96, 128), np.uint8)
    mask[20:70, 30:100] = 1
    meta = {"prompt": prompt, "points": points, "mask": mask}
    (folder / "meta_data.pkl").write_bytes(pickle.dumps(meta))


def _drag100_case(folder: Path, seed: int, points: list[list[float]]) -> None:
    folder.mkdir(parents=True)
    Image.fromarray(_image(80, 112, seed)).save(folder / "original.jpg", quality=95)
    mask = np.zeros((80, 112), np.uint8)
    mask[10:60, 20:90] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    (folder / "points.json").write_text(json.dumps({"points": points}))


@pytest.fixture(scope="module")
def dragbench_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dragbench")
    _dragbench_case(root / "animals" / "c1", 1, [[40, 40], [52, 44]], "a photo of a dog")
    # A zero-length pair, and a target on the far edge (x = W) that must be clamped.
    _dragbench_case(root / "land_scape" / "c2", 2, [[60, 50], [60, 50], [110, 30], [128, 30]], "")
    return root


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    from backend.bench.lpips import random_lpips

    state = {
        k: v for k, v in random_lpips(seed=3).state_dict().items() if k not in ("shift", "scale")
    }
    path = tmp_path_factory.mktemp("lpips") / "lpips-random.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture(autouse=True)
def no_default_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real AlexNet weights in this machine's torch hub cache must not leak into the tests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def _metrics(results: Path) -> dict:
    return json.loads((results / "metrics.json").read_text())


def test_formats_are_told_apart(dragbench_data: Path, tmp_path: Path) -> None:
    cases = formats.load_cases(dragbench_data)
    assert [(c.category, c.name, c.fmt) for c in cases] == [
        ("animals", "c1", "dragbench"),
        ("land_scape", "c2", "dragbench"),
    ]
    assert cases[1].pairs[0].length == 0 and len(cases[1].pairs) == 2
    _drag100_case(tmp_path / "d100" / "x", 0, [[10, 10], [20, 12]])
    (d100,) = formats.load_cases(tmp_path / "d100")
    assert (d100.fmt, d100.prompt, d100.relpath) == ("drag100", "", "x")
    assert d100.mask.shape == (80, 112) and d100.mask.sum() == 50 * 70
    assert formats.load_cases(dragbench_data, ["land_scape"])[0].name == "c2"
    with pytest.raises(InvalidRequest, match="unknown categories"):
        formats.load_cases(dragbench_data, ["cats"])
    _drag100_case(tmp_path / "mixed" / "a", 0, [[1, 1], [2, 2]])
    _dragbench_case(tmp_path / "mixed" / "b", 0, [[1, 1], [2, 2]], "")
    with pytest.raises(InvalidRequest, match="mixes"):
        formats.load_cases(tmp_path / "mixed")


def test_bench_edits_scores_and_resumes(
    dragbench_data: Path,
    tiny_model_dir: Path,
    lpips_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "results"
    common = ["--data", str(dragbench_data), "--model", str(tiny_model_dir), "--out", str(out)]
    scoring = ["--dift-model", str(tiny_model_dir), "--lpips-weights", str(lpips_file)]
    assert main(["bench", *common, *FAST, *scoring]) == 0
    table = capsys.readouterr().out
    assert "**overall**" in table and "land_scape" in table
    for rel in ("animals/c1", "land_scape/c2"):
        img = Image.open(out / rel / "dragged_image.png")
        assert img.size == (128, 96)
        trace = json.loads((out / rel / "trace.json").read_text())
        assert trace["params"]["keep_unmasked_pixels"] is False
    assert json.loads((out / "land_scape/c2/trace.json").read_text())["clamped_points"] is True
    m = _metrics(out)
    assert (
        m["metrics"]["mean_distance"]["available"] and m["metrics"]["image_fidelity"]["available"]
    )
    overall = m["overall"]
    assert (overall["done"], overall["pairs"]) == (2, 3)
    per_case = {r["case"]: r for r in m["cases"]}
    assert len(per_case["land_scape/c2"]["distances"]) == 2
    all_d = [d for r in m["cases"] for d in r["distances"]]
    assert overall["mean_distance"] == pytest.approx(np.mean(all_d))  # over pairs, not cases
    assert 0 < overall["image_fidelity"] < 1
    assert set(overall["seconds"]) >= {"lora", "inversion", "drag", "denoise", "total"}
    assert m["kept_original_pixels_outside_mask"]["measured"] == "no"
    assert m["kept_original_pixels_outside_mask"]["keep_unmasked_pixels_setting"] == [False]
    assert (out / "metrics.md").read_text().count("|") > 20

    # Resume: finished cases are skipped (their files untouched) ...
    stamp = (out / "animals/c1/dragged_image.png").stat().st_mtime_ns
    assert main(["bench", *common, *FAST, "--no-metrics"]) == 0
    assert (out / "animals/c1/dragged_image.png").stat().st_mtime_ns == stamp
    # ... and a case interrupted before its trace was written is redone.
    (out / "land_scape/c2/trace.json").unlink()
    before = (out / "land_scape/c2/dragged_image.png").stat().st_mtime_ns
    assert main(["bench", *common, *FAST[:-1], "--no-metrics"]) == 0
    err = capsys.readouterr().err
    assert "edited 1, skipped 1" in err
    assert (out / "land_scape/c2/trace.json").is_file()
    assert (out / "land_scape/c2/dragged_image.png").stat().st_mtime_ns != before

    # Other settings in the same folder are refused, not mixed into one table.
    other = [a if a != "2" else "3" for a in FAST]
    assert main(["bench", *common, *other, "--no-metrics"]) == 2
    assert "other settings" in capsys.readouterr().err

    # Scoring without weights reports each metric unavailable with the reason: never a number.
    assert main(["bench-metrics", "--data", str(dragbench_data), "--results", str(out),
                 "--dift-model", str(tmp_path / "no-such-model"), "--device", "cpu",
                 "--quiet"]) == 0  # fmt: skip
    m = _metrics(out)
    for key in ("mean_distance", "image_fidelity"):
        assert m["metrics"][key]["available"] is False and m["metrics"][key]["reason"]
    assert m["overall"]["mean_distance"] is None and m["overall"]["image_fidelity"] is None
    assert "unavailable" in (out / "metrics.md").read_text()


def test_bench_drag100_many_pairs_and_kept_pixels(
    tiny_model_dir: Path, lpips_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "drag100"
    many = [[float(20 + 5 * i), 30.0] if k == 0 else [float(22 + 5 * i), 36.0]
            for i in range(12) for k in range(2)]  # fmt: skip
    _drag100_case(data / "many", 1, many)
    out = tmp_path / "results"
    args = ["bench", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out)]
    scoring = ["--dift-model", str(tiny_model_dir), "--lpips-weights", str(lpips_file)]
    assert main([*args, *FAST, *scoring, "--keep-pixels"]) == 0
    assert (out / "many" / "dragged_image.png").is_file()
    m = _metrics(out)
    assert m["format"] == "drag100" and m["overall"]["pairs"] == 12
    assert len(m["cases"][0]["distances"]) == 12
    assert m["kept_original_pixels_outside_mask"]["measured"] == "yes"
    assert m["categories"].keys() == {formats.NO_CATEGORY}


def test_a_failing_case_is_recorded_and_the_run_goes_on(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _dragbench_case(data / "a" / "bad", 0, [[10, 10], [20, 20]], "")
    meta = {"prompt": "", "points": [[10, 10], [20, 20]], "mask": np.ones((5, 5), np.uint8)}
    (data / "a" / "bad" / "meta_data.pkl").write_bytes(pickle.dumps(meta))  # wrong mask size
    out = tmp_path / "out"
    args = ["bench", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out)]
    assert main([*args, *FAST, "--no-metrics"]) == 1
    failed = json.loads((out / "a" / "bad" / "failed.json").read_text())
    assert "mask" in failed["error"]
    assert not (out / "a" / "bad" / "trace.json").exists()
