"""The one way DragStudio opens an image file: known formats only, sizes checked first.

``PIL.Image.open`` without ``formats=`` tries every plugin, including PostScript, which hands
the file to Ghostscript: a crafted ``.png`` could then run a PostScript program. Here only the
formats DragStudio supports are tried, and the declared size is checked against
:mod:`backend.limits` (per image, and against the file's own size) before a pixel is decoded.
Photo, mask, project members and bench data all open through :func:`open_image`.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from backend import limits
from backend.errors import InvalidRequest

READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
"""What a photo or mask may be (Pillow opens phones' multi-picture JPEGs as JPEG)."""
PNG_ONLY = ("PNG",)

DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,  # Pillow reports some broken chunks this way
    EOFError,
    struct.error,
    NotImplementedError,
    Image.DecompressionBombError,
)
"""What decoding a damaged file may raise (besides :class:`ImageRefused`)."""


class ImageRefused(InvalidRequest):
    """The file is not an image DragStudio opens (format, size, or decompression ratio)."""


def size_problem(width: int, height: int, *, photo: bool) -> str | None:
    """Why an image of this size is refused: a photo must be editable (:mod:`backend.limits`);
    anything else (a mask, a result) only has to be an image no larger than a photo may be."""
    if photo:
        return limits.image_problem(width, height)
    if not (1 <= width <= limits.MAX_SIDE and 1 <= height <= limits.MAX_SIDE):
        return f"it has an unsupported size {width}×{height}"
    if width * height > limits.MAX_PIXELS:
        return f"it is {width}×{height}, more than {limits.MAX_PIXELS / 1e6:.0f} MP"
    return None


@contextlib.contextmanager
def open_image(
    source: str | Path | bytes,
    *,
    formats: Sequence[str] = READ_FORMATS,
    photo: bool = True,
) -> Iterator[Image.Image]:
    """Yield the opened, not yet decoded image; :class:`ImageRefused` says why not.

    Decoding errors of a damaged file (``DECODE_ERRORS``) pass through for the caller to name.
    """
    if isinstance(source, bytes):
        fp: str | io.BytesIO = io.BytesIO(source)
        nbytes = len(source)
    else:
        fp = str(source)
        nbytes = os.stat(fp).st_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fp, formats=list(formats))
        except UnidentifiedImageError:
            names = ", ".join(formats)
            raise ImageRefused(f"it is not an image DragStudio reads ({names})") from None
        with im:
            w, h = im.size
            problem = size_problem(w, h, photo=photo) or limits.decode_problem(w * h, nbytes)
            if problem:
                raise ImageRefused(problem)
            yield im


STRIP_PIXELS = 1 << 18
"""Pixels converted or blended at once on full-size images: each float32 temporary of a strip
is 3 MB, whatever the photo's size."""


def strip_rows(height: int, width: int) -> range:
    """Row starts of strips of at most ``STRIP_PIXELS`` pixels."""
    return range(0, height, max(1, STRIP_PIXELS // max(1, width)))


def pil_to_array(pil: Image.Image) -> np.ndarray:
    """A writable uint8 array of ``pil`` (RGB or L), filled strip by strip.

    ``np.asarray(pil)`` goes through ``tobytes()``, which for a 48 MP photo briefly holds the
    pixels twice over on top of Pillow's own copy; here only the array and one strip are added.
    """
    w, h = pil.size
    bands = len(pil.getbands())
    out = np.empty((h, w, bands) if bands > 1 else (h, w), np.uint8)
    step = strip_rows(h, w).step
    for y in range(0, h, step):
        out[y : y + step] = np.asarray(pil.crop((0, y, w, min(h, y + step))), dtype=np.uint8)
    return out


def png_bytes(image: np.ndarray, level: int = 1) -> bytes:
    """An 8-bit RGB image, or a bool mask as a 1-bit PNG, encoded at zlib ``level`` (projects
    and the server's wire both write their PNGs here)."""
    buf = io.BytesIO()
    if image.dtype == bool:
        pil = Image.fromarray(np.ascontiguousarray(image)).convert("1")
    else:
        pil = Image.fromarray(np.ascontiguousarray(image))
    pil.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()
