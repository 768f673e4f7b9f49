"""Whether Drag can run now, and if not, why, in words shown next to the Drag button.

One function decides, from the document, the engine host and the model choice, so the button,
the menu action and the hint never disagree; the window recomputes it whenever any of them
changes (a job ending included). Qt-free and torch-free: it runs on every document change.
"""

from __future__ import annotations

from pathlib import Path

from backend.document import Document
from backend.limits import MAX_DRAG_PAIRS

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def looks_like_hub_id(spec: str) -> bool:
    """``owner/name``: neither a path nor a file name."""
    spec = spec.strip()
    return (
        spec.count("/") == 1
        and not spec.startswith((".", "/", "~"))
        and not any(c.isspace() for c in spec)
        and not spec.lower().endswith(CHECKPOINT_SUFFIXES)
        and not Path(spec).expanduser().exists()
    )


def local_model_problem(spec: str) -> str:
    """Why a model that names a local folder or file cannot be used ("" if it can, or is a hub id).

    Cheap (a couple of ``stat`` calls), so the hint can say at once that a chosen folder has gone.
    """
    spec = spec.strip()
    if not spec or looks_like_hub_id(spec):
        return ""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            return f"{path.name} is not a diffusers model folder (no model_index.json)"
        return ""
    if path.is_file():
        return ""
    return f"the model {path.name} is not on disk any more"


def hub_model_cached(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id``'s pipeline, without touching the network.

    Checked before the engine tries to load a hub model: an offline load waits on the hub for
    seconds before it fails, while the cache answers at once.
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:
        return False
    return isinstance(found, str) and Path(found).is_file()


def drag_blocker(
    document: Document,
    *,
    drag_running: bool,
    other_job: str = "",
    model: str = "",
    on_server: bool = False,
) -> str:
    """Why Drag cannot start now, or "" when it can (or when it is running: then it cancels).

    ``on_server``: the engine is a server, whose model names are its own, not paths here."""
    if drag_running:
        return ""
    if not document.has_image:
        return "Open a photo (or generate one) to drag."
    if other_job:
        return f"Wait for the {other_job} to finish, or cancel it."
    pairs = document.pairs
    complete = document.complete_pairs
    if not pairs:
        return "Click a handle point, then its target, to place a pair."
    if not complete:
        return "Click where the handle should go, to finish the pair."
    if len(complete) > MAX_DRAG_PAIRS:
        return (
            f"Too many point pairs ({len(complete)}); {MAX_DRAG_PAIRS} at most: "
            "right-click a point to delete its pair, or Undo."
        )
    problem = "" if on_server else local_model_problem(model or document.model)
    if problem:
        return f"Cannot drag: {problem}. Choose a model folder or checkpoint below."
    return ""
