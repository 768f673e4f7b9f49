"""CLI projects: save an edit, continue it with the bundled LoRA (no retraining), inspect it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cli import main
from backend.engine import Engine
from backend.lora import lora_from_bytes
from backend.project import read_project
from backend.request import DragRequest, PointPair

FAST = ["--lora-steps", "1", "--drag-steps", "2", "--ddim-steps", "10", "--working-width",
        "128", "--no-lora-cache", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def saved(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli-project")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), np.uint8)).save(folder / "photo.png")
    mask = np.zeros((64, 80), np.uint8)
    mask[10:50, 10:60] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    code = main([
        "edit", "--model", str(tiny_model_dir), "--image", str(folder / "photo.png"),
        "--mask", str(folder / "mask.png"), "--pair", "20,20,30,24", "--prompt", "a test",
        "--out", str(folder / "a.png"), "--trace", str(folder / "a.json"),
        "--save-project", str(folder / "p.dragstudio"), *FAST,
    ])  # fmt: skip
    assert code == 0
    return {"folder": folder, "project": folder / "p.dragstudio"}


def test_save_project_records_the_edit_exactly(saved, tiny_model_dir: Path) -> None:
    folder = saved["folder"]
    project = read_project(saved["project"])
    photo = np.asarray(Image.open(folder / "photo.png").convert("RGB"))
    assert np.array_equal(project.original, photo)
    assert np.array_equal(project.mask, np.asarray(Image.open(folder / "mask.png")) > 0)
    (entry,) = project.history
    assert np.array_equal(entry.after, np.asarray(Image.open(folder / "a.png").convert("RGB")))
    assert [(p.handle, p.target) for p in entry.pairs] == [((20.0, 20.0), (30.0, 24.0))]
    assert project.pairs == ()  # spent by the accepted edit, as in the window
    assert project.prompt == entry.prompt == "a test" and project.model == str(tiny_model_dir)
    assert (project.params.drag_steps, project.params.working_width) == (2, 128)
    assert project.lora_params.steps == 1 and project.lora is not None
    trace = json.loads((folder / "a.json").read_text())
    assert project.lora.key == trace["lora"]["key"]
    assert entry.final_handles == tuple(tuple(h) for h in trace["final_handles"])
    # The bundled tensors are the ones the engine trains for this request, bit for bit.
    engine = Engine("cpu")
    pairs = tuple(PointPair(p.handle, p.target) for p in entry.pairs if p.target is not None)
    request = DragRequest(image=project.original, pairs=pairs, mask=project.mask,
                          prompt=entry.prompt, params=entry.params, lora=entry.lora,
                          model=entry.model)  # fmt: skip
    engine.edit(request)
    state, _, key = lora_from_bytes(project.lora.data)
    assert key == engine.current_lora.key
    for name, tensor in engine.current_lora.state.items():
        assert torch.equal(state[name], tensor)


def test_continuing_a_project_reuses_its_lora(saved) -> None:
    folder = saved["folder"]
    out, trace_path = folder / "b.png", folder / "b.json"
    code = main([
        "edit", "--project", str(saved["project"]), "--pair", "40,30,44,30", "--out", str(out),
        "--trace", str(trace_path), "--save-project", str(folder / "p2.dragstudio"),
        "--no-lora-cache", "--quiet",
    ])  # fmt: skip
    assert code == 0
    trace = json.loads(trace_path.read_text())
    assert trace["lora"]["cached"] is True and trace["lora"]["source"] == "memory"
    assert trace["project_lora"] == {"bundled": True, "used": True}
    again = read_project(folder / "p2.dragstudio")
    assert len(again.history) == 2
    assert again.lora is not None and again.lora.data == read_project(saved["project"]).lora.data


def test_a_changed_prompt_retrains_and_says_why(saved, capsys) -> None:
    folder = saved["folder"]
    code = main([
        "edit", "--project", str(saved["project"]), "--pair", "40,30,44,30", "--prompt", "other",
        "--out", str(folder / "c.png"), "--trace", str(folder / "c.json"), "--no-lora-cache",
    ])  # fmt: skip
    assert code == 0
    assert "retraining the project's LoRA: the prompt changed" in capsys.readouterr().err
    trace = json.loads((folder / "c.json").read_text())
    assert trace["lora"]["source"] == "trained" and trace["project_lora"]["used"] is False


def test_project_info_summarises_and_validates(saved, capsys, tmp_path: Path) -> None:
    assert main(["project", "info", str(saved["project"])]) == 0
    out = capsys.readouterr().out
    assert "1 accepted result(s)" in out and "80×64" in out and "'a test'" in out
    bad = tmp_path / "bad.dragstudio"
    bad.write_bytes(saved["project"].read_bytes()[:500])
    assert main(["project", "info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dragstudio-cli: error: bad.dragstudio") and err.count("\n") == 1
