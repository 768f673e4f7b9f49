"""Shared fixtures: a tiny random-weight SD-1.5-shaped model on disk, and an engine on CPU."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Recovery files, settings and the LoRA cache go to a private folder, never the user's.
_PRIVATE = tempfile.mkdtemp(prefix="dragstudio-tests-")
os.environ.setdefault("DRAGSTUDIO_DATA_DIR", os.path.join(_PRIVATE, "data"))
os.environ.setdefault("DRAGSTUDIO_CACHE_DIR", os.path.join(_PRIVATE, "cache"))
os.environ.setdefault("DRAGSTUDIO_CONFIG_DIR", os.path.join(_PRIVATE, "config"))

# One torch thread: the tiny test models gain nothing from more, and on a 2-core machine shared
# with other work extra threads oversubscribe it (measured: 2-3× slower suite). Subprocesses
# inherit it through OMP_NUM_THREADS. Set DRAGSTUDIO_TEST_THREADS to change it.
_threads = os.environ.setdefault("DRAGSTUDIO_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", _threads)

DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dragbench-dev"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ["DRAGSTUDIO_TEST_THREADS"]))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backend.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path):
    from backend.engine import Engine

    eng = Engine("cpu")
    eng.load_model(str(tiny_model_dir))
    return eng


@pytest.fixture(scope="module")
def pipe():
    """The tiny random pipeline (seed 3) with every weight frozen, as LoRA training finds it;
    one per module, since tests attach and remove adapters on it."""
    from backend.tiny import build_tiny_pipeline

    p = build_tiny_pipeline(seed=3)
    for m in (p.unet, p.vae, p.text_encoder):
        m.requires_grad_(False)
    return p


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real engine server on 127.0.0.1 with the tiny model, one per test module
    (``tests/server_helpers.py``)."""
    pytest.importorskip("websockets")
    from tests.server_helpers import ThreadServer

    with ThreadServer(tiny_model_dir, tmp_path_factory.mktemp("server")) as s:
        yield s


@pytest.fixture(scope="session")
def dev_data() -> Path:
    if not DEV_DATA.is_dir():
        pytest.skip(f"DragBench dev data not found at {DEV_DATA}")
    return DEV_DATA


@pytest.fixture
def photo() -> np.ndarray:
    """A smooth synthetic 'photo' with structure for features to lock on to."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256].astype(np.float32)
    img = np.stack(
        [
            128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0),
            128 + 90 * np.cos(x / 17.0 + y / 29.0),
            128 + 80 * np.sin((x + y) / 41.0),
        ],
        axis=-1,
    )
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
