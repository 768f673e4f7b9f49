"""Download a model from the Hugging Face hub with byte progress and cancellation, Qt-free.

``snapshot_download`` reports bytes through the tqdm class it is given; ours forwards them to a
callback and raises :class:`Cancelled` from inside the download when asked to stop.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

from backend.errors import Cancelled, ModelNotFound

Progress = Callable[[int, int], None]
"""``(bytes done, bytes total)``; total is 0 while unknown."""

PATTERNS = ["model_index.json", "*.json", "*.txt", "*.safetensors"]
"""What a diffusers pipeline needs, without the duplicate .bin, .ckpt and fp16/onnx variants."""
IGNORE = ["*.bin", "*.ckpt", "*.onnx", "*.msgpack", "*.h5", "*fp16*", "*non_ema*", "*.pt"]


def _progress_class(on_progress: Progress, cancel: threading.Event) -> type:
    from tqdm.auto import tqdm

    class Reporter(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)
            self._bytes = kwargs.get("unit") == "B"

        def update(self, n: float | None = 1) -> bool | None:
            if cancel.is_set():
                raise Cancelled()
            out = super().update(n)
            if self._bytes:
                on_progress(int(self.n), int(self.total or 0))
            return out

    return Reporter


def download_model(
    repo_id: str, on_progress: Progress, cancel: threading.Event, *, offline: bool = False
) -> str:
    """Fetch ``repo_id`` into the Hugging Face cache and return its folder.

    Raises :class:`Cancelled` when ``cancel`` is set, :class:`ModelNotFound` with a readable
    reason when the hub cannot be reached or the model does not exist.
    """
    from huggingface_hub import snapshot_download

    if cancel.is_set():
        raise Cancelled()
    try:
        return str(
            snapshot_download(
                repo_id,
                allow_patterns=PATTERNS,
                ignore_patterns=IGNORE,
                local_files_only=offline,
                tqdm_class=_progress_class(on_progress, cancel),
            )
        )
    except Cancelled:
        raise
    except Exception as exc:
        if cancel.is_set():
            raise Cancelled() from exc
        reason = (
            str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        )
        raise ModelNotFound(
            f"could not download {repo_id}: {reason[:300]}. Check the internet connection "
            "(and HF_HUB_OFFLINE), or choose a model folder or checkpoint already on disk"
        ) from exc
