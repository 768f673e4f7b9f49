"""GoodDrag from the shell and in files: ``edit``/``bench --method``, projects and history."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from backend.methods import GOODDRAG, PAPER, GoodDragParams

FAST = ["--ddim-steps", "4", "--working-width", "128", "--device", "cpu", "--quiet"]
FAST_GD = ["--gooddrag", "drag_end_step=2", "--gooddrag", "tracks_per_step=1",
           "--gooddrag", "drags_per_track=2"]  # fmt: skip


@pytest.fixture(autouse=True)
def no_default_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


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


def test_bench_gooddrag_on_dev_cases_writes_the_paper_report(
    dev_data: Path, tiny_model_dir: Path, lpips_file: Path, tmp_path: Path
) -> None:
    scoring = ["--dift-model", str(tiny_model_dir), "--lpips-weights", str(lpips_file)]
    runs = {}
    for method, extra in ((PAPER, ["--drag-steps", "2"]), (GOODDRAG, FAST_GD)):
        out = tmp_path / method
        args = ["bench", "--data", str(dev_data), "--model", str(tiny_model_dir), "--out",
                str(out), "--limit", "2", "--lora-steps", "0", "--method",
                method, *extra, *FAST, *scoring]  # fmt: skip
        assert main(args) == 0
        runs[method] = (json.loads((out / "metrics.json").read_text()), out)
    (paper, _), (good, out) = runs[PAPER], runs[GOODDRAG]
    # The same report: the same keys everywhere, the same table, numbers for every metric.
    assert set(good) - {"method", "gooddrag"} == set(paper)  # + the run's GoodDrag settings
    assert set(good["overall"]) == set(paper["overall"])
    assert set(good["cases"][0]) == set(paper["cases"][0])
    assert good["overall"]["done"] == 2 and good["overall"]["mean_distance"] is not None
    assert all(good["overall"]["dai"][g] is not None for g in ("1", "5", "10", "20"))
    assert good["metrics"]["dai"]["available"] and good["methods"] == [GOODDRAG]
    assert paper["methods"] == [PAPER]
    header = lambda run: (run[1] / "metrics.md").read_text().split("| category")[1].split("\n")[0]  # noqa: E731
    assert header(runs[GOODDRAG]) == header(runs[PAPER])
    # Each case ran GoodDrag with its defaults where no flag was given.
    trace = json.loads(next(out.rglob("trace.json")).read_text())
    assert trace["method"] == GOODDRAG
    assert (trace["params"]["r1"], trace["params"]["r2"], trace["params"]["lam"]) == (4, 12, 0.1)
    assert trace["params"]["inversion_strength"] == 0.75 and trace["lora_params"]["steps"] == 0
    assert trace["gooddrag"]["params"]["drag_end_step"] == 2
    assert json.loads((out / "bench.json").read_text())["settings"]["method"] == GOODDRAG


def test_edit_with_method_saves_it_in_the_trace_project_and_history(
    tiny_model_dir: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    from backend.project import read_project

    image = tmp_path / "photo.png"
    Image.fromarray(photo).save(image)
    proj = tmp_path / "a.dragstudio"
    trace = tmp_path / "trace.json"
    args = ["edit", "--image", str(image), "--model", str(tiny_model_dir), "--pair",
            "80,128,140,128", "--lora-steps", "0", "--no-lora-cache", "--r1", "2",
            "--out", str(tmp_path / "out.png"), "--trace", str(trace), "--save-project",
            str(proj), "--method", GOODDRAG, *FAST_GD, *FAST]  # fmt: skip
    assert main(args) == 0
    t = json.loads(trace.read_text())
    assert t["method"] == GOODDRAG and t["params"]["r1"] == 2  # the flag wins over GoodDrag's 4
    assert t["params"]["r2"] == 12 and t["lora_params"]["steps"] == 0
    project = read_project(proj)
    assert project.method == GOODDRAG and project.history[-1].method == GOODDRAG
    gd = GoodDragParams(drag_end_step=2, tracks_per_step=1, drags_per_track=2)
    assert project.gooddrag == gd and project.history[-1].gooddrag == gd
    assert project.to_request().method == GOODDRAG
    # Continuing the project keeps its method unless told otherwise.
    again = ["edit", "--project", str(proj), "--pair", "90,128,120,128",
             "--out", str(tmp_path / "out2.png"), "--trace", str(trace), "--no-lora-cache",
             *FAST]  # fmt: skip
    assert main(again) == 0
    t2 = json.loads(trace.read_text())
    assert t2["method"] == GOODDRAG and t2["gooddrag"]["params"]["tracks_per_step"] == 1
    assert main([*again, "--method", PAPER, "--drag-steps", "1", "--lora-steps", "0"]) == 0
    t3 = json.loads(trace.read_text())
    assert t3["method"] == PAPER and t3["params"]["r2"] == 3  # back to the paper's defaults


def test_bad_method_flags_are_one_line_errors(
    tiny_model_dir: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "photo.png"
    Image.fromarray(photo).save(image)
    base = ["edit", "--image", str(image), "--model", str(tiny_model_dir), "--pair",
            "80,128,140,128", "--out", str(tmp_path / "o.png"), "--method", GOODDRAG,
            *FAST]  # fmt: skip
    assert main([*base, "--gooddrag", "speed=3"]) == 2
    assert "KEY=VALUE with KEY one of" in capsys.readouterr().err
    assert main([*base, "--gooddrag", "drag_end_step=two"]) == 2
    assert "must be a whole number" in capsys.readouterr().err
    assert main([*base, "--gooddrag", "drags_per_track=0"]) == 2
    assert "drags per track" in capsys.readouterr().err


def test_old_projects_read_as_paper_and_bad_methods_are_refused(tmp_path: Path) -> None:
    import zipfile

    from backend.errors import DragStudioError
    from backend.project import MANIFEST, Project, read_project, save_project
    from backend.request import DragParams, LoraParams

    img = np.zeros((32, 32, 3), np.uint8)
    project = Project(img, None, (), "", DragParams(), LoraParams(), "m")
    path = tmp_path / "p.dragstudio"
    save_project(project, path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members[MANIFEST])
    assert manifest["method"] == PAPER
    for change, ok in (({"method": None, "gooddrag": None}, True), ({"method": "magic"}, False)):
        m = dict(manifest)
        for k, v in change.items():
            if v is None:
                m.pop(k)
            else:
                m[k] = v
        bad = tmp_path / "q.dragstudio"
        with zipfile.ZipFile(bad, "w") as zf:
            for n, data in members.items():
                zf.writestr(n, json.dumps(m) if n == MANIFEST else data)
        if ok:
            assert read_project(bad).method == PAPER
        else:
            with pytest.raises(DragStudioError, match="unknown method"):
                read_project(bad)
