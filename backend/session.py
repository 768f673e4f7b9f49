"""A session's bookkeeping around an edit, shared by the window and the command line.

Turning a finished edit into a history entry, bundling its LoRA for a project and building the
project after an accepted edit used to be written twice (``dragstudio/drag_controller.py`` and
``backend/project_cli.py``); both call these now. Torch-free: a LoRA arrives as the bytes of its
safetensors file (from :meth:`backend.engine.Engine.export_lora` or the cache), never as tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from backend.document import HistoryEntry, Pair
from backend.project import BundledLora, Project, sha256_pixels
from backend.request import DragRequest
from backend.result import Trace


def request_pairs(request: DragRequest) -> tuple[Pair, ...]:
    """The request's point pairs as the document's (complete) pairs."""
    return tuple(Pair(tuple(p.handle), tuple(p.target)) for p in request.pairs)  # type: ignore[arg-type]


def history_entry(
    request: DragRequest,
    before: np.ndarray,
    after: np.ndarray,
    trace: Trace,
    *,
    seconds: float | None = None,
    pairs: tuple[Pair, ...] | None = None,
) -> HistoryEntry:
    """The accepted edit as a history entry.

    ``seconds`` defaults to the engine's own total; ``pairs`` to the request's (the window passes
    the document's, which may include pairs the drag did not use)."""
    return HistoryEntry(
        before=before,
        after=after,
        pairs=request_pairs(request) if pairs is None else pairs,
        prompt=request.prompt,
        params=request.params,
        lora=request.lora,
        model=request.model,
        seconds=trace.seconds if seconds is None else float(seconds),
        lora_reused=trace.lora.cached,
        final_handles=tuple((float(x), float(y)) for x, y in trace.final_handles),
        method=request.method,
        gooddrag=request.gooddrag,
        speed=request.speed,
    )


def bundle_lora(key: str, data: bytes, request: DragRequest) -> BundledLora:
    """A trained LoRA's file, labelled with what it fits, ready to go into a project."""
    return BundledLora(
        key=key,
        params=request.lora,
        data=data,
        image_sha256=sha256_pixels(request.identity_image),
        prompt=request.prompt,
        model=request.model,
    )


def project_after_edit(
    request: DragRequest,
    image: np.ndarray,
    trace: Trace,
    previous: Project | None,
    export_lora: Callable[[str], bytes | None],
) -> Project:
    """The session with this edit accepted: history grows, points are spent, LoRA bundled.

    ``export_lora(key)`` returns the file of the LoRA the edit used, or None when it is gone;
    it is not called when ``previous`` already bundles that very LoRA (kept byte for byte).
    """
    photo = previous.original if previous is not None else request.image
    history = previous.history if previous is not None else ()
    entry = history_entry(request, request.image, image, trace)
    key = trace.lora.key
    bundled = None
    if key is not None:
        if previous is not None and previous.lora is not None and previous.lora.key == key:
            bundled = previous.lora
        elif (data := export_lora(key)) is not None:
            bundled = bundle_lora(key, data, request)
    return Project(
        original=photo,
        mask=request.mask,
        pairs=(),
        prompt=request.prompt,
        params=request.params,
        lora_params=request.lora,
        model=request.model,
        history=(*history, entry),
        lora=bundled,
        generation=previous.generation if previous is not None else None,
        method=request.method,
        gooddrag=request.gooddrag,
        speed=request.speed,
    )
