"""Project files: exact round trips, atomic saves, and a reader that survives hostile archives."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import backend.project as bp
from backend.document import Document
from backend.lora import lora_from_bytes
from backend.project import Project, ProjectError, describe, read_project, save_project
from tests.project_helpers import KEY, assert_same_project, sample_project

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_keeps_every_field_and_the_lora_bit_for_bit(tmp_path: Path) -> None:
    project = sample_project()
    path = tmp_path / "p.dragstudio"
    save_project(project, path)
    again = read_project(path)
    assert_same_project(project, again)
    assert again.history[1].before is again.history[0].after  # befores are derived, shared
    state, params, key = lora_from_bytes(again.lora.data)
    original_state, _, _ = lora_from_bytes(project.lora.data)
    assert key == KEY and params == project.lora_params
    for name, tensor in original_state.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor)
    assert sorted(zipfile.ZipFile(path).namelist()) == [
        "image.png", "lora/adapter.safetensors", "manifest.json", "mask.png",
        "results/0001.png", "results/0002.png",
    ]  # fmt: skip


def test_document_round_trip_restores_the_session(tmp_path: Path) -> None:
    project = sample_project()
    doc = Document()
    project.apply(doc, tmp_path / "p.dragstudio")
    assert doc.image is project.history[-1].after and doc.original is project.original
    assert doc.pairs == project.pairs and doc.prompt == project.prompt
    assert np.array_equal(doc.mask, project.mask)
    again = Project.from_document(doc, project.lora)
    assert_same_project(project, again)
    # The next drag trains (and reuses) the LoRA on the photo, as before saving.
    assert doc.to_request().identity_image is not None
    assert np.array_equal(doc.to_request().identity_image, project.original)


def test_without_lora_or_history(tmp_path: Path) -> None:
    p = sample_project(with_lora=False)
    p = Project(p.original, None, (), "", p.params, p.lora_params, "m")
    save_project(p, tmp_path / "a.dragstudio")
    assert_same_project(p, read_project(tmp_path / "a.dragstudio"))
    assert "no LoRA bundled" in describe(p)


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    path = tmp_path / "p.dragstudio"
    save_project(sample_project(with_lora=False), path)
    before = path.read_bytes()

    def full_disk(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ProjectError, match="No space left"):
        save_project(sample_project(), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["p.dragstudio"]


def test_a_save_killed_mid_write_leaves_the_old_file_readable(tmp_path: Path) -> None:
    path = tmp_path / "p.dragstudio"
    save_project(sample_project(with_lora=False), path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import sys, time, zipfile
        sys.path.insert(0, {str(ROOT)!r})
        import backend.project as bp
        from tests.project_helpers import sample_project
        real = zipfile.ZipFile.writestr
        count = 0
        def slow(self, info, data, *a, **k):
            global count
            real(self, info, data, *a, **k)
            count += 1
            if count == 2:
                self.fp.flush()
                print("writing", flush=True)
                time.sleep(60)
        zipfile.ZipFile.writestr = slow
        bp.save_project(sample_project(), {str(path)!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "writing"
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert temps and temps[0].stat().st_size > 0  # it really was half-way through
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert path.read_bytes() == before
    assert_same_project(sample_project(with_lora=False), read_project(path))


# -- hostile files ---------------------------------------------------------------------------


def _valid_members() -> dict[str, bytes]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, compression in bp._members(sample_project(), 1):
            zf.writestr(name, data, compress_type=compression)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _with_manifest(change) -> dict[str, bytes]:
    members = _valid_members()
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    return members


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


HOSTILE = {
    "escape": (lambda m: {**m, "../evil.png": b"x"}, "unexpected member"),
    "absolute": (lambda m: {**m, "/etc/passwd": b"x"}, "unexpected member"),
    "pickle": (lambda m: {**m, "lora/adapter.pkl": b"\x80\x04"}, "unexpected member"),
    "no manifest": (lambda m: {k: v for k, v in m.items() if k != "manifest.json"}, "no manifest"),
    "not json": (lambda m: {**m, "manifest.json": b"{nope"}, "not valid JSON"),
    "nan": (lambda m: {**m, "manifest.json": m["manifest.json"].replace(b'"lam": 0.25',
                                                                      b'"lam": NaN')}, "JSON"),
    "deep json": (lambda m: {**m, "manifest.json": b"[" * 100_000}, "JSON"),
    "newer": (lambda m: _with_manifest(lambda d: d.update(format_version=99)), "newer DragStudio"),
    "wrong format": (lambda m: _with_manifest(lambda d: d.update(format="zip")), "not describe"),
    "point outside": (lambda m: _with_manifest(lambda d: d["pairs"][0].update(handle=[1e6, 0])),
                      "outside"),
    "bad param": (lambda m: _with_manifest(lambda d: d["params"].update(drag_steps="many")),
                  "params"),
    "bad key": (lambda m: _with_manifest(lambda d: d["lora"].update(key="../../x")), "lora.key"),
    "lora key mismatch": (lambda m: _with_manifest(lambda d: d["lora"].update(key="cd" * 32)),
                          "does not match"),
    "unlisted result": (lambda m: {**m, "results/0009.png": m["results/0001.png"]},
                        "not listed"),
    "wrong size image": (lambda m: {**m, "image.png": _png(np.zeros((10, 10, 3), np.uint8))},
                         "manifest says"),
    "rgba image": (lambda m: {**m, "image.png": _png(np.zeros((32, 40, 4), np.uint8))},
                   "RGB PNG"),
    "not png": (lambda m: {**m, "image.png": b"GIF89a" + bytes(100)}, "not an image"),
    "lora header": (lambda m: {**m, "lora/adapter.safetensors": b"\xff" * 64}, "header"),
    "too many results": (lambda m: _with_manifest(lambda d: d.update(history=[{}] * 501)),
                         "too many"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archives_are_refused_with_a_reason(case: str, tmp_path: Path) -> None:
    make, message = HOSTILE[case]
    path = _write(tmp_path / "bad.dragstudio", make(_valid_members()))
    with pytest.raises(ProjectError, match=message):
        read_project(path)


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    members = _valid_members()
    path = tmp_path / "dup.dragstudio"
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning):
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("mask.png", members["mask.png"])
    with pytest.raises(ProjectError, match="twice"):
        read_project(path)


def test_declared_sizes_are_not_trusted(tmp_path: Path) -> None:
    """A member whose header under-declares its size (a zip bomb's trick) is caught."""
    path = _write(tmp_path / "lie.dragstudio", _valid_members())
    data = bytearray(path.read_bytes())
    # Patch the central directory's uncompressed size for manifest.json to 10 bytes.
    cd = data.find(b"PK\x01\x02")
    while cd != -1:
        name_len = int.from_bytes(data[cd + 28 : cd + 30], "little")
        if data[cd + 46 : cd + 46 + name_len] == b"manifest.json":
            data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
            break
        cd = data.find(b"PK\x01\x02", cd + 4)
    assert cd != -1
    path.write_bytes(bytes(data))
    with pytest.raises(ProjectError, match=r"damaged|not the size"):
        read_project(path)


def test_oversized_members_are_refused_from_the_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bp, "MAX_MANIFEST_BYTES", 100)
    path = _write(tmp_path / "big.dragstudio", _valid_members())
    with pytest.raises(ProjectError, match="too large"):
        read_project(path)


def test_migrations_run_in_order(monkeypatch) -> None:
    monkeypatch.setattr(bp, "FORMAT_VERSION", 3)
    monkeypatch.setattr(bp, "MIGRATIONS", {
        1: lambda m: {**m, "prompt": m["old_prompt"]},
        2: lambda m: {**m, "prompt": m["prompt"] + "!"},
    })  # fmt: skip
    out = bp.migrate({"format_version": 1, "old_prompt": "hi"})
    assert out["prompt"] == "hi!" and out["format_version"] == 3
    with pytest.raises(ProjectError, match="no longer supported"):
        bp.migrate({"format_version": 0})


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "p.dragstudio"
    save_project(sample_project(), path)
    return path.read_bytes()


def _read_bytes_quietly(data: bytes, folder: Path) -> None:
    path = folder / "fuzz.dragstudio"
    path.write_bytes(data)
    listing = sorted(os.listdir(folder))
    try:
        project = read_project(path)
    except ProjectError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(project, Project)
    assert sorted(os.listdir(folder)) == listing  # the reader never writes anything


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_truncated_and_mutated_archives(data, valid_bytes: bytes, tmp_path: Path) -> None:
    blob = bytearray(valid_bytes)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob)), label="length")]
    for _ in range(data.draw(st.integers(0, 8), label="mutations")):
        if blob:
            i = data.draw(st.integers(0, len(blob) - 1), label="offset")
            blob[i] = data.draw(st.integers(0, 255), label="byte")
    _read_bytes_quietly(bytes(blob), tmp_path)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    manifest=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
        ),
        max_leaves=30,
    ),
    key=st.sampled_from(["pairs", "params", "history", "lora", "image", "mask", "model", "prompt"]),
)
def test_fuzz_manifest_fields(manifest, key: str, tmp_path: Path) -> None:
    members = _with_manifest(lambda d: d.update({key: manifest}))
    _write(tmp_path / "f.dragstudio", members)
    _read_bytes_quietly((tmp_path / "f.dragstudio").read_bytes(), tmp_path)  # fmt: skip
