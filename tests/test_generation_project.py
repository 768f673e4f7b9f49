"""Generated images in projects, the document and the CLI: latents kept bit for bit, hostile
latents refused, and ``generate`` → ``edit --project`` dragging without LoRA or inversion."""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from backend import project as bp
from backend.cli import main
from backend.document import Document, HistoryEntry, Pair
from backend.generation import Generation
from backend.project import (
    LATENTS,
    Project,
    ProjectError,
    latents_bytes,
    project_from_generation,
    read_project,
    save_project,
)
from backend.request import DragParams, LoraParams


def _generation(width: int = 64, height: int = 72, steps: int = 3) -> Generation:
    rng = np.random.default_rng(5)
    shape = (steps + 1, 4, height // 8, width // 8)
    return Generation(prompt="a red ball ñ", negative_prompt="blurry", seed=2**40 + 3,
                      width=width, height=height, guidance_scale=4.5, steps=steps,
                      trajectory=rng.standard_normal(shape).astype(np.float32))  # fmt: skip


def _generated_project() -> Project:
    g = _generation()
    image = np.random.default_rng(1).integers(0, 256, (g.height, g.width, 3), np.uint8)
    return project_from_generation(image, g, "tiny")


def _assert_same_generation(a: Generation | None, b: Generation | None) -> None:
    assert a is not None and b is not None
    for name in ("prompt", "negative_prompt", "seed", "width", "height", "guidance_scale", "steps"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.trajectory.dtype == b.trajectory.dtype == np.float32
    assert a.trajectory.tobytes() == b.trajectory.tobytes()  # bit for bit, NaN-free


def test_generation_round_trips_bit_for_bit(tmp_path: Path) -> None:
    p = _generated_project()
    save_project(p, tmp_path / "g.dragstudio")
    back = read_project(tmp_path / "g.dragstudio")
    _assert_same_generation(p.generation, back.generation)
    assert back.format_version == 2 and np.array_equal(back.original, p.original)
    request = back.to_request()
    assert request.generation is back.generation and request.lora_image is None
    manifest = json.loads(zipfile.ZipFile(tmp_path / "g.dragstudio").read("manifest.json"))
    assert manifest["generation"]["file"] == LATENTS and manifest["generation"]["steps"] == 3


def test_after_an_accepted_result_the_next_drag_is_a_photo_drag() -> None:
    p = _generated_project()
    after = 255 - p.original
    entry = HistoryEntry(p.original, after, (Pair((1.0, 1.0), (2.0, 2.0)),), p.prompt,
                         DragParams(), LoraParams(), "tiny", 1.0)  # fmt: skip
    request = replace(p, history=(entry,)).to_request()
    assert request.generation is None
    assert request.image is after and request.lora_image is p.original  # LoRA keyed to the original


def test_document_carries_the_generation_and_drops_it_for_another_image() -> None:
    p = _generated_project()
    doc = Document()
    p.apply(doc)
    assert doc.generation is p.generation
    assert doc.to_request().generation is p.generation
    _assert_same_generation(Project.from_document(doc).generation, p.generation)
    entry = HistoryEntry(doc.image, 255 - doc.image, (), doc.prompt, doc.params, doc.lora, "m", 0)
    doc.accept_result(entry)
    assert doc.to_request().generation is None and doc.generation is p.generation
    doc.undo_accept()
    assert doc.to_request().generation is p.generation
    doc.set_image(np.zeros((p.generation.height, p.generation.width, 3), np.uint8))
    assert doc.generation is None and doc.to_request().generation is None


def test_version_1_projects_migrate_without_a_generation(tmp_path: Path) -> None:
    p = replace(_generated_project(), generation=None)
    save_project(p, tmp_path / "v2.dragstudio")
    members = {n: zipfile.ZipFile(tmp_path / "v2.dragstudio").read(n) for n in
               zipfile.ZipFile(tmp_path / "v2.dragstudio").namelist()}  # fmt: skip
    manifest = json.loads(members["manifest.json"])
    manifest["format_version"] = 1
    del manifest["generation"]
    members["manifest.json"] = json.dumps(manifest).encode()
    _write(tmp_path / "v1.dragstudio", members)
    back = read_project(tmp_path / "v1.dragstudio")
    assert back.generation is None and back.format_version == 2


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _members(tmp_path: Path) -> dict[str, bytes]:
    save_project(_generated_project(), tmp_path / "ok.dragstudio")
    with zipfile.ZipFile(tmp_path / "ok.dragstudio") as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _header(data: bytes, change) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    change(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def _manifest(m: dict[str, bytes], change) -> dict[str, bytes]:
    d = json.loads(m["manifest.json"])
    change(d)
    return {**m, "manifest.json": json.dumps(d).encode()}


BAD_LATENTS = {
    "wrong shape": (
        lambda m: {**m, LATENTS: latents_bytes(np.zeros((4, 4, 9, 7), np.float32))},
        "shape",
    ),
    "float64": (
        lambda m: {
            **m,
            LATENTS: _header(m[LATENTS], lambda h: h["trajectory"].update(dtype="F64")),
        },
        "must be F32",
    ),
    "truncated data": (lambda m: {**m, LATENTS: m[LATENTS][:-4]}, "does not match its header"),
    "trailing data": (lambda m: {**m, LATENTS: m[LATENTS] + b"\0" * 4}, "does not match"),
    "two tensors": (
        lambda m: {**m, LATENTS: _header(m[LATENTS], lambda h: h.update(extra=h["trajectory"]))},
        "one tensor",
    ),
    "huge header": (lambda m: {**m, LATENTS: struct.pack("<Q", 2**40) + b"{}"}, "header"),
    "nan": (
        lambda m: {**m, LATENTS: latents_bytes(np.full((4, 4, 9, 8), np.nan, np.float32))},
        "NaN",
    ),
    "missing member": (lambda m: {k: v for k, v in m.items() if k != LATENTS}, "no generation/"),
    "unlisted member": (lambda m: _manifest(m, lambda d: d.update(generation=None)), "not listed"),
    "size mismatch": (
        lambda m: _manifest(m, lambda d: d["generation"].update(width=72)),
        "but the image is",
    ),
    "too many steps": (
        lambda m: _manifest(m, lambda d: d["generation"].update(steps=5000)),
        "generation.steps",
    ),
    "bad guidance": (
        lambda m: _manifest(m, lambda d: d["generation"].update(guidance_scale=0.2)),
        "guidance",
    ),
    "bad seed": (lambda m: _manifest(m, lambda d: d["generation"].update(seed=-1)), "seed"),
}


@pytest.mark.parametrize("case", sorted(BAD_LATENTS))
def test_reader_rejects_bad_latents(tmp_path: Path, case: str) -> None:
    change, expected = BAD_LATENTS[case]
    path = _write(tmp_path / "bad.dragstudio", change(_members(tmp_path)))
    with pytest.raises(ProjectError, match=expected):
        read_project(path)


def _hand_rolled_latents(trajectory: np.ndarray) -> bytes:
    """The writer of DragStudio 0.1 before ``safetensors.numpy``: a length, JSON, padding, data."""
    data = np.ascontiguousarray(trajectory, dtype="<f4").tobytes()
    header = {"__metadata__": {"format": "dragstudio-generation"},
              "trajectory": {"dtype": "F32", "shape": list(trajectory.shape),
                             "data_offsets": [0, len(data)]}}  # fmt: skip
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("steps", [2, 3, 50])
def test_latents_written_by_the_old_hand_rolled_writer_still_open(
    tmp_path: Path, steps: int
) -> None:
    g = _generation(steps=steps)
    image = np.random.default_rng(1).integers(0, 256, (g.height, g.width, 3), np.uint8)
    save_project(project_from_generation(image, g, "tiny"), tmp_path / "new.dragstudio")
    members = {n: zipfile.ZipFile(tmp_path / "new.dragstudio").read(n) for n in
               zipfile.ZipFile(tmp_path / "new.dragstudio").namelist()}  # fmt: skip
    old = _hand_rolled_latents(g.trajectory)
    assert members[LATENTS] == old  # safetensors.numpy writes the same bytes
    members[LATENTS] = old
    back = read_project(_write(tmp_path / "old.dragstudio", members))
    _assert_same_generation(back.generation, g)


def test_reader_bounds_the_latents_member_by_its_declared_size(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path / "big.dragstudio", _members(tmp_path))
    monkeypatch.setattr(bp, "MAX_LATENTS_BYTES", 1000)
    with pytest.raises(ProjectError, match="too large"):
        read_project(path)


# ---------------------------------------------------------------------------------------------
# The command line: generate, then drag the project without LoRA or inversion


def test_cli_generate_then_edit_project_skips_lora_and_inversion(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    project = tmp_path / "g.dragstudio"
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "a ball",
                 "--width", "64", "--height", "64", "--steps", "4", "--seed", "3",
                 "--out", str(tmp_path / "g.png"), "--save-project", str(project),
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    saved = read_project(project)
    assert saved.generation is not None and saved.generation.trajectory.shape == (5, 4, 8, 8)
    assert saved.prompt == "a ball" and saved.lora is None
    trace_path = tmp_path / "t.json"
    assert main(["edit", "--project", str(project), "--pair", "20,30,30,30",
                 "--drag-steps", "1", "--out", str(tmp_path / "e.png"), "--trace",
                 str(trace_path), "--save-project", str(tmp_path / "e.dragstudio"),
                 "--device", "cpu", "--no-lora-cache"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    trace = json.loads(trace_path.read_text())
    assert trace["generated"] is True and trace["lora"]["source"] == "generated"
    assert trace["lora"]["steps"] == 0
    # Skipped, not merely fast: the stages say so and report no step.
    assert "lora: started (skipped (generated image))" in err
    assert "inversion: started (skipped (generated image))" in err
    assert "  lora " not in err and "  inversion " not in err
    after = read_project(tmp_path / "e.dragstudio")
    assert len(after.history) == 1 and after.to_request().generation is None
    _assert_same_generation(after.generation, saved.generation)
