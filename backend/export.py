"""Export edited images as PNG, JPEG or WebP with the edit recorded in the file's metadata.

PNG keeps the record in an ``iTXt`` chunk named ``dragstudio``, WebP in its XMP packet; JPEG and
WebP also carry it in the EXIF ``UserComment`` (ASCII-prefixed JSON), where photo tools show it.
EXIF must fit one 64 KB JPEG segment, so it holds a summary when the full record (a long
history) is larger: the current edit and how many drags were accepted. The record names the
points, prompt, parameters and model, so an exported picture says how it was made. Files are
written atomically, like projects, so an interrupted export never leaves half a picture.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from backend import __version__
from backend.atomicio import write_atomic
from backend.document import HistoryEntry, Pair
from backend.errors import DragStudioError
from backend.request import DragParams, LoraParams, params_to_dict

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
PNG_KEY = "dragstudio"
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_SOFTWARE = 0x0131
_ASCII = b"ASCII\0\0\0"


def edit_record(
    pairs: Sequence[Pair],
    prompt: str,
    params: DragParams,
    lora: LoraParams,
    model: str,
    *,
    history: Sequence[HistoryEntry] = (),
) -> dict[str, Any]:
    """What went into an image, as JSON-friendly data."""
    return {
        "software": f"DragStudio {__version__}",
        "model": model,
        "prompt": prompt,
        "pairs": [
            {"handle": list(p.handle), "target": None if p.target is None else list(p.target)}
            for p in pairs
        ],
        "params": params_to_dict(params),
        "lora_params": params_to_dict(lora),
        "accepted_drags": [
            {
                "pairs": [[*p.handle, *(p.target or p.handle)] for p in e.pairs],
                "prompt": e.prompt,
                "model": e.model,
                "params": params_to_dict(e.params),
                "lora_params": params_to_dict(e.lora),
            }
            for e in history
        ],
    }


def entry_record(entry: HistoryEntry) -> dict[str, Any]:
    """The record of one accepted result (its own drag)."""
    return edit_record(entry.pairs, entry.prompt, entry.params, entry.lora, entry.model)


MAX_EXIF_TEXT = 60_000
"""JPEG's APP1 segment holds 65,533 bytes; the rest of the EXIF block needs the difference."""
_XMP_NS = "https://github.com/dragstudio/ns/1.0/"


def exif_text(record: dict[str, Any]) -> str:
    """The record for EXIF: whole when it fits, else a summary that always does."""
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    if len(text) <= MAX_EXIF_TEXT:
        return text
    drags = record.get("accepted_drags", [])
    summary = {**record, "accepted_drags": len(drags), "summary": True}
    text = json.dumps(summary, ensure_ascii=True, separators=(",", ":"))
    if len(text) <= MAX_EXIF_TEXT:
        return text
    keep = ("software", "model", "params", "lora_params")
    summary = {k: record[k] for k in keep if k in record}
    summary.update(pairs=len(record.get("pairs", [])), accepted_drags=len(drags), summary=True)
    return json.dumps(summary, ensure_ascii=True, separators=(",", ":"))


def _xmp(text: str) -> bytes:
    value = html.escape(text, quote=True)
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        f'xmlns:dragstudio="{_XMP_NS}" dragstudio:record="{value}"/></rdf:RDF></x:xmpmeta>'
    ).encode()


def _from_xmp(xmp: Any) -> str | None:
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", "replace")
    if not isinstance(xmp, str):
        return None
    found = re.search(r'dragstudio:record="([^"]*)"', xmp)
    return html.unescape(found.group(1)) if found else None


def encode(image: np.ndarray, fmt: str, record: dict[str, Any], quality: int = 92) -> bytes:
    """The image in ``fmt`` ("PNG", "JPEG", "WEBP") with ``record`` embedded."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.dtype == np.uint8):
        raise DragStudioError("nothing to export: not an RGB image")
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    pil = Image.fromarray(image)
    buf = io.BytesIO()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt(PNG_KEY, text)
        info.add_text("Software", f"DragStudio {__version__}")
        pil.save(buf, format="PNG", pnginfo=info)
    elif fmt in ("JPEG", "WEBP"):
        quality = max(1, min(100, int(quality)))
        exif = Image.Exif()
        exif[_SOFTWARE] = f"DragStudio {__version__}"
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _ASCII + exif_text(record).encode("ascii")
        extra: dict[str, Any] = {}
        if fmt == "JPEG" and quality >= 90:
            extra["subsampling"] = 0
        if fmt == "WEBP":
            extra["xmp"] = _xmp(text)  # the full record, however long the history
        try:
            pil.save(buf, format=fmt, quality=quality, exif=exif.tobytes(), **extra)
        except (OSError, ValueError) as exc:
            raise DragStudioError(f"cannot encode the image as {fmt}: {exc}") from exc
    else:
        raise DragStudioError(f"cannot export as {fmt}: use PNG, JPEG or WebP")
    return buf.getvalue()


def format_for(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DragStudioError(f"cannot export {path.name}: use .png, .jpg or .webp")
    return fmt


def export_image(
    image: np.ndarray, path: str | Path, record: dict[str, Any], *, quality: int = 92
) -> Path:
    """Write ``image`` (at its full resolution) to ``path`` in the format its suffix names."""
    path = Path(path)
    try:
        data = encode(image, format_for(path), record, quality)
    except DragStudioError as exc:
        raise DragStudioError(f"cannot export {path.name}: {exc}") from exc
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise DragStudioError(f"cannot export {path.name}: {exc.strerror or exc}") from exc
    return path


def series_paths(path: str | Path, count: int) -> list[Path]:
    """``photo.png`` → ``photo-0001.png`` … for a numbered series."""
    path = Path(path)
    return [path.with_name(f"{path.stem}-{n:04d}{path.suffix}") for n in range(1, count + 1)]


def export_series(
    history: Sequence[HistoryEntry], path: str | Path, *, quality: int = 92
) -> list[Path]:
    """Every accepted result as a numbered file, each recording its own drag."""
    if not history:
        raise DragStudioError("there are no accepted results to export")
    return [
        export_image(entry.after, target, entry_record(entry), quality=quality)
        for entry, target in zip(history, series_paths(path, len(history)), strict=True)
    ]


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The edit record an exported file carries, or None (for tests and curious users)."""
    from backend.imagefile import open_image

    with open_image(path, formats=("PNG", "JPEG", "WEBP"), photo=False) as im:
        im.load()
        text = im.info.get(PNG_KEY) or _from_xmp(im.info.get("xmp"))
        if text is None:
            comment = im.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
            if isinstance(comment, bytes) and comment.startswith(_ASCII):
                text = comment[len(_ASCII) :].decode("ascii")
            elif isinstance(comment, str):
                text = comment
    if not text:
        return None
    data = json.loads(text)
    return data if isinstance(data, dict) else None
