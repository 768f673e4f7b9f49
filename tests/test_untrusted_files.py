"""Files and inputs that used to break DragStudio (issue 13): each attack, reproduced.

Items 1, 3, 4, 7, 8, 11, 12 and 14, the mutation fuzzer (2,000 cases) and the round-trip
property: whatever document the app can create saves and reopens identically. The LoRA items
are in ``test_untrusted_lora.py``, the window's parts in ``gui/test_untrusted_gui.py``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from backend import limits
from backend import project as bp
from backend.atomicio import atomic_file, stale_temporaries
from backend.cli import main
from backend.document import HistoryEntry, Pair, load_image
from backend.errors import InvalidRequest
from backend.imaging import working_size
from backend.params import ParamSpec, param_specs
from backend.project import Project, ProjectError, read_project, save_project
from backend.request import DragParams, LoraParams
from tests import fuzz_projects
from tests.project_helpers import assert_same_project, sample_project


def _project(w: int, h: int, results: int = 1, prompt: str = "p", flat: bool = False) -> Project:
    rng = np.random.default_rng(w * 1000 + h)
    make = (lambda: np.zeros((h, w, 3), np.uint8)) if flat else (
        lambda: rng.integers(0, 256, (h, w, 3), np.uint8))  # fmt: skip
    photo = make()
    history, before = [], photo
    for _ in range(results):
        after = make()
        pairs = (Pair((0.0, 0.0), (w - 1.0, h - 1.0)),)
        history.append(HistoryEntry(before, after, pairs, prompt, DragParams(), LoraParams(),
                                    "m", 1.0, False, ()))  # fmt: skip
        before = after
    return Project(original=photo, mask=np.ones((h, w), bool), pairs=(Pair((0.0, 0.0), None),),
                   prompt=prompt, params=DragParams(), lora_params=LoraParams(), model="m",
                   history=tuple(history))  # fmt: skip


# -- 1. what saves reopens: one set of limits ---------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (10, 10), (15, 200), (16, 512), (2048, 64)])
def test_small_and_narrow_images_save_and_reopen(size, tmp_path: Path) -> None:
    project = _project(*size)
    save_project(project, tmp_path / "p.dragstudio")
    assert_same_project(project, read_project(tmp_path / "p.dragstudio"))


def test_the_writer_refuses_what_the_reader_would_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "p.dragstudio"
    save_project(_project(40, 32), path)
    before = path.read_bytes()
    with pytest.raises(ProjectError, match=r"cannot save: .*32 times"):
        save_project(_project(1, 40), path)  # 40:1, beyond limits.MAX_ASPECT
    long_history = replace(_project(1, 1), history=_project(1, 1, results=501).history)
    with pytest.raises(ProjectError, match="500"):
        save_project(long_history, path)
    assert path.read_bytes() == before


def test_the_limits_hold_a_desktop_photo_editors_work() -> None:
    """12000×9000 and 100 MP photos open; a 48 MP photo with a long history saves and reopens
    (its PNGs hold about a byte per pixel, far from the decompression-bomb ratio)."""
    assert limits.image_problem(12000, 9000) is None
    assert limits.image_problem(11648, 8736) is None
    pixels = bp.project_pixels(8000, 6000, 100, True)
    assert bp.project_pixels_problem(pixels, file_bytes=pixels // 2) is None
    assert limits.image_problem(16385, 100) and limits.image_problem(20000, 10000)


def test_blank_images_beyond_the_ratio_are_stored_so_they_reopen(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(limits, "BASE_PIXELS", 10_000)
    monkeypatch.setattr(limits, "MAX_PIXELS_PER_BYTE", 8)
    project = _project(200, 200, results=3, flat=True)  # 200 kpx in a few kilobytes
    compressed = sum(len(d) for _, d, _ in bp._members(project, 6))
    assert bp.project_pixels_problem(bp.project_pixels(200, 200, 3, True), compressed)
    save_project(project, tmp_path / "p.dragstudio")
    assert_same_project(project, read_project(tmp_path / "p.dragstudio"))


def test_a_500_result_history_round_trips(tmp_path: Path) -> None:
    project = _project(2, 2, results=limits.MAX_HISTORY)
    save_project(project, tmp_path / "p.dragstudio", compress_level=1)
    assert_same_project(project, read_project(tmp_path / "p.dragstudio"))


# -- 3. lone surrogates ---------------------------------------------------------------------------


def test_a_lone_surrogate_in_a_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "s.dragstudio"
    path.write_bytes(fuzz_projects.corpus()["surrogate in history"])
    with pytest.raises(ProjectError, match="surrogate"):
        read_project(path)


def test_a_lone_surrogate_in_memory_never_stops_a_save(tmp_path: Path) -> None:
    project = replace(sample_project(), prompt="cat \ud800 dog \ud83d\ude00")
    save_project(project, tmp_path / "p.dragstudio")
    back = read_project(tmp_path / "p.dragstudio")
    assert back.prompt == "cat \ufffd dog \U0001f600"  # the pair is the emoji it encodes
    save_project(back, tmp_path / "again.dragstudio")  # and it saves again


# -- 4. temporaries of killed saves ----------------------------------------------------------------


def test_a_killed_saves_temporary_is_removed_by_the_next_save(tmp_path: Path) -> None:
    path = tmp_path / "p.dragstudio"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from backend.atomicio import atomic_file
        with atomic_file({str(path)!r}) as f:
            f.write(b"x" * 100000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1
    assert stale_temporaries(path) == []  # its writer is alive: not stale
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert stale_temporaries(path) == temps
    foreign = tmp_path / ".p.dragstudio.notours.tmp"
    foreign.write_bytes(b"someone else's")
    save_project(sample_project(), path)
    assert not temps[0].exists() and foreign.exists()  # ours only
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, foreign.name])


def test_two_writers_never_remove_each_others_live_temporary(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    with atomic_file(path) as f:
        f.write(b"one")
        with atomic_file(path) as g:  # a second save of the same file meanwhile
            g.write(b"two")
        f.write(b"!")
    assert path.read_bytes() == b"one!"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# -- 7. only the formats DragStudio reads ----------------------------------------------------------


@pytest.fixture
def postscript_png(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(fuzz_projects.POSTSCRIPT)
    return path


def test_postscript_named_png_is_refused_everywhere(postscript_png, tmp_path, capsys) -> None:
    seeds = fuzz_projects.corpus()
    start = time.perf_counter()
    with pytest.raises(InvalidRequest, match="not an image DragStudio reads"):
        load_image(postscript_png)
    for seed in ("postscript image", "postscript result"):
        (tmp_path / "p.dragstudio").write_bytes(seeds[seed])
        with pytest.raises(ProjectError, match="not an image"):
            read_project(tmp_path / "p.dragstudio")
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "real.png")
    code = main(["edit", "--model", str(tmp_path), "--image", str(tmp_path / "real.png"),
                 "--mask", str(postscript_png), "--pair", "1,1,2,2", "--out",
                 str(tmp_path / "o.png")])  # fmt: skip
    assert code == 2 and "not an image" in capsys.readouterr().err
    assert time.perf_counter() - start < 10  # nothing ran the PostScript program


def test_drag100_masks_open_with_the_same_rules(postscript_png, tmp_path: Path) -> None:
    from backend.bench.formats import _load_drag100

    case = tmp_path / "case"
    case.mkdir()
    (case / "points.json").write_text(json.dumps({"points": [[1, 1], [2, 2]]}))
    (case / "mask.png").write_bytes(postscript_png.read_bytes())
    with pytest.raises(InvalidRequest, match=r"mask\.png"):
        _load_drag100(case)


# -- 8. a file never downloads by itself ---------------------------------------------------------


class _RecordingEngine:
    made: ClassVar[list[bool]] = []

    def __init__(self, *_a, allow_download: bool = True, **_k) -> None:
        _RecordingEngine.made.append(allow_download)

    def load_model(self, spec: str) -> float:
        from backend.errors import ModelNotFound

        raise ModelNotFound(f"could not load '{spec}' in the Hugging Face cache")

    def edit(self, request, *_a):
        self.load_model(request.model)


def test_a_projects_model_id_needs_allow_download(tmp_path, monkeypatch, capsys) -> None:
    import backend.engine

    monkeypatch.setattr(backend.engine, "Engine", _RecordingEngine)
    project = replace(sample_project(with_lora=False), model="attacker-org/exfiltrate")
    save_project(project, tmp_path / "p.dragstudio")
    args = ["edit", "--project", str(tmp_path / "p.dragstudio"), "--out", str(tmp_path / "o.png"),
            "--no-lora-cache", "--quiet"]  # fmt: skip
    _RecordingEngine.made.clear()
    assert main(args) == 1
    assert _RecordingEngine.made == [False]
    err = capsys.readouterr().err
    assert "attacker-org/exfiltrate" in err and "--allow-download" in err
    assert main([*args, "--allow-download"]) == 1 and _RecordingEngine.made[-1] is True
    # A model the user names on the command line is theirs to fetch.
    assert main([*args, "--model", "owner/name"]) == 1 and _RecordingEngine.made[-1] is True


def test_the_windows_engine_never_downloads_by_itself(monkeypatch) -> None:
    import backend.engine
    from dragstudio.runner import default_engine_factory

    monkeypatch.setattr(backend.engine, "Engine", _RecordingEngine)
    _RecordingEngine.made.clear()
    default_engine_factory("cpu")()
    assert _RecordingEngine.made == [False]


# -- 11. declared sizes before allocating ----------------------------------------------------------


def test_a_small_png_declaring_gigapixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(fuzz_projects.bomb_png(16000, 11000))  # 176 MP: over the per-image limit
    assert path.stat().st_size < 600_000
    start = time.perf_counter()
    with pytest.raises(InvalidRequest, match="150 MP"):
        load_image(path)
    assert time.perf_counter() - start < 2
    path.write_bytes(fuzz_projects.bomb_png(12000, 9000))  # 108 MP: within it, but from 300 KB
    start = time.perf_counter()
    with pytest.raises(InvalidRequest, match="decompression bomb"):
        load_image(path)
    assert time.perf_counter() - start < 2


def test_a_project_of_blank_results_is_refused_before_decoding(tmp_path: Path) -> None:
    seed = fuzz_projects.corpus()["bomb history"]
    (tmp_path / "p.dragstudio").write_bytes(seed)
    start = time.perf_counter()
    with pytest.raises(ProjectError, match="decompression bomb"):
        read_project(tmp_path / "p.dragstudio")
    assert time.perf_counter() - start < 2


def _bench_case(folder: Path, meta: bytes) -> Path:
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "original_image.png")
    (folder / "meta_data.pkl").write_bytes(meta)
    return folder


def test_a_dragbench_pickle_declaring_a_huge_array_is_refused(tmp_path: Path) -> None:
    from numpy._core.multiarray import _reconstruct

    from backend.bench.dragbench import load_case

    class Huge:
        def __reduce__(self):
            return (_reconstruct, (np.ndarray, (40000, 30000), b"b"))

    class Lying:
        def __reduce__(self):
            state = (1, (40000, 30000), np.dtype("u1"), False, b"\0" * 3)
            return (_reconstruct, (np.ndarray, (0,), b"b"), state)

    for name, obj in (("huge", Huge()), ("lying", Lying())):
        meta = pickle.dumps({"prompt": "", "points": [], "mask": obj}, protocol=4)
        assert len(meta) < 200
        with pytest.raises(InvalidRequest, match="not valid DragBench metadata"):
            load_case(_bench_case(tmp_path / name, meta))
    good = {"prompt": "a", "points": [[1, 2], [3, 4]], "mask": np.ones((32, 32), np.uint8)}
    case = load_case(_bench_case(tmp_path / "good", pickle.dumps(good, protocol=4)))
    assert case.mask.all() and len(case.pairs) == 1


# -- 12. working size bounded on both sides --------------------------------------------------------


def test_working_size_is_bounded_and_extreme_strips_are_refused() -> None:
    assert working_size(512, 512) == (512, 512) and working_size(4000, 3000) == (512, 384)
    with pytest.raises(InvalidRequest, match=r"17×9999.*32 times"):
        working_size(17, 9999, 512)
    w, h = working_size(300, 9000, 512)  # 30:1, allowed, but not 512×15360
    assert h == limits.MAX_WORKING_SIDE and w % 8 == 0 and w >= 64


# -- 14. CLI ------------------------------------------------------------------------------------


def test_cli_pair_values_may_start_with_a_minus(tmp_path: Path, capsys) -> None:
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "p.png")
    code = main(["edit", "--model", str(tmp_path), "--image", str(tmp_path / "p.png"),
                 "--pair", "-1,5,10,10", "--out", str(tmp_path / "o.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "expected one argument" not in err and "outside" in err


def test_cli_bomb_mask_is_a_usage_error(tmp_path: Path, capsys) -> None:
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "m.png").write_bytes(fuzz_projects.bomb_png(12000, 9000))
    code = main(["edit", "--model", str(tmp_path), "--image", str(tmp_path / "p.png"),
                 "--mask", str(tmp_path / "m.png"), "--pair", "1,1,2,2",
                 "--out", str(tmp_path / "o.png")])  # fmt: skip
    assert code == 2 and "decompression bomb" in capsys.readouterr().err


def test_a_broken_local_model_folder_does_not_suggest_hf_download(tmp_path: Path) -> None:
    import torch

    from backend.errors import ModelNotFound
    from backend.models import load_pipeline

    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ModelNotFound) as info:
        load_pipeline(str(tmp_path), torch.device("cpu"))
    assert "hf download" not in str(info.value) and "diffusers pipeline" in str(info.value)


# -- the mutation fuzzer and the round trip -------------------------------------------------


def test_fuzz_2000_mutated_projects(tmp_path: Path) -> None:
    """Seeds (valid projects and every attack above) then mutations: the reader opens or
    refuses each with a one-line reason; no other exception, none slow, memory bounded.

    It runs in a fresh process so the peak memory measured is the fuzzer's own."""
    root = Path(__file__).parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_projects", "--cases", "2000", "--seed", "0"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    summary = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0, run.stdout + run.stderr
    found = re.match(
        r"2000 cases: (\d+) opened, (\d+) refused, 0 uncaught exceptions, 0 over 10 s "
        r"\(slowest ([\d.]+) s\), peak memory (\d+) MB",
        summary,
    )
    assert found, summary
    opened, refused, _slowest, peak = (float(g) for g in found.groups())
    assert refused > 1000 and opened >= 3 and peak < 1024


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=limits.MAX_TEXT)
_POINT_SIZE = st.tuples(st.integers(1, 48), st.integers(1, 48)).filter(
    lambda s: limits.aspect_problem(*s) is None
)


def _ends(lo: float, hi: float, integer: bool = False) -> st.SearchStrategy:
    inner = st.integers(int(lo), int(hi)) if integer else st.floats(lo, hi)
    return st.sampled_from([int(lo), int(hi)] if integer else [lo, hi]) | inner


def _value(spec: ParamSpec) -> st.SearchStrategy:
    """Any value the one validation accepts, its ends included (from ``backend.params``)."""
    if spec.kind == "bool":
        return st.booleans()
    if spec.kind == "ints":
        return st.lists(st.integers(int(spec.min), int(spec.max)), max_size=2).map(tuple)
    if spec.kind == "int":
        m = spec.multiple_of
        return _ends(-(-spec.min // m), spec.max // m, True).map(lambda n: int(n * m))
    return _ends(spec.min, spec.max)


def _valid(params: object) -> bool:
    try:
        params.validate()  # type: ignore[attr-defined]
    except InvalidRequest:
        return False
    return True


def _params(cls: type) -> st.SearchStrategy:
    fields = {spec.name: _value(spec) for spec in param_specs(cls)}
    return st.fixed_dictionaries(fields).map(lambda d: cls(**d)).filter(_valid)


_DRAG = _params(DragParams)
_LORA = _params(LoraParams)


@st.composite
def documents(draw) -> Project:
    w, h = draw(_POINT_SIZE)
    xs, ys = st.floats(0, w - 1), st.floats(0, h - 1)
    point = st.tuples(xs, ys)
    pair = st.builds(Pair, point, st.none() | point)
    pixels = st.integers(0, 2**32 - 1).map(
        lambda s: np.random.default_rng(s).integers(0, 256, (h, w, 3), np.uint8)
    )
    photo = draw(pixels)
    history, before = [], photo
    for _ in range(draw(st.integers(0, 4))):
        after = draw(pixels)
        entry = HistoryEntry(before, after, tuple(draw(st.lists(pair, max_size=3))),
                             draw(_TEXT), draw(_DRAG), draw(_LORA), draw(_TEXT.filter(bool)),
                             draw(st.floats(0, 1e6)), draw(st.booleans()),
                             tuple(draw(st.lists(point, max_size=3))))  # fmt: skip
        history.append(entry)
        before = after
    mask = draw(st.none() | st.integers(0, 2**32 - 1).map(
        lambda s: np.random.default_rng(s).random((h, w)) > 0.5))  # fmt: skip
    return Project(original=photo, mask=mask, pairs=tuple(draw(st.lists(pair, max_size=6))),
                   prompt=draw(_TEXT), params=draw(_DRAG), lora_params=draw(_LORA),
                   model=draw(_TEXT.filter(bool)), history=tuple(history))  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])  # fmt: skip
@given(project=documents())
def test_any_document_the_app_can_create_saves_and_reopens_identically(project, tmp_path):
    path = tmp_path / "p.dragstudio"
    save_project(project, path)
    assert_same_project(project, read_project(path))


def test_read_project_never_writes_and_members_stay_listed(tmp_path: Path) -> None:
    path = tmp_path / "p.dragstudio"
    save_project(sample_project(), path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    assert bp.MANIFEST in names and bp.LORA in names
    listing = sorted(os.listdir(tmp_path))
    read_project(path)
    assert sorted(os.listdir(tmp_path)) == listing
    assert io.BytesIO(path.read_bytes()).getbuffer().nbytes == path.stat().st_size
