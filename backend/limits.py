"""The one set of size limits shared by image opening, the project writer and the reader.

Whatever DragStudio lets a user create must reopen, and whatever a file asks for must cost
memory in proportion to its own size. So every image read (photo, mask, project member, bench
data) and every project written goes through these checks, with the same numbers; the numbers
are documented in ``docs/project-format.md``.
"""

from __future__ import annotations

MIN_SIDE = 1
"""Any non-empty image opens (the engine upsamples small ones to its working size)."""
MAX_SIDE = 16384
MAX_PIXELS = 150_000_000
"""Per image: a 100 MP medium-format photo (11648×8736) and a 12000×9000 scan fit."""
MAX_ASPECT = 32.0
"""Long side over short side; a generated 64×2048 image is the most elongated the app makes."""
MAX_WORKING_SIDE = 2048
"""The engine's long side at most (or the working width, if larger): tall narrow photos are
edited smaller instead of at 512×300,000."""

BASE_PIXELS = 64_000_000
"""Decoded pixels any file may ask for regardless of its size."""
MAX_PIXELS_PER_BYTE = 64
"""Beyond the base, a file may decode to at most this many pixels per byte of its own size: a
photo PNG holds about 0.5 pixel per byte, so only crafted (or blank) images come near."""
MAX_PROJECT_PIXELS = 6_000_000_000
"""All images of a project together (photo and results): a 48 MP photo with 120 results."""
MAX_DRAG_PAIRS = 64
"""Point pairs in one drag (a document or project may hold more, up to MAX_PAIRS): more is a
mistake, and each costs a feature lookup per step."""
MAX_HISTORY = 500
MAX_PAIRS = 1000
MAX_TEXT = 2000


def image_problem(width: int, height: int) -> str | None:
    """Why an image of this size cannot be edited, or None."""
    if width < 1 or height < 1:
        return "the image is empty"
    if width < MIN_SIDE or height < MIN_SIDE:
        return f"it is {width}×{height}; DragStudio needs at least {MIN_SIDE} pixels on each side"
    if width > MAX_SIDE or height > MAX_SIDE:
        return f"it is {width}×{height}; DragStudio opens up to {MAX_SIDE} pixels on a side"
    if width * height > MAX_PIXELS:
        return (
            f"it is {width}×{height} ({width * height / 1e6:.0f} MP); DragStudio opens up to "
            f"{MAX_PIXELS / 1e6:.0f} MP"
        )
    return aspect_problem(width, height)


def aspect_problem(width: int, height: int) -> str | None:
    """Why the sides are too unequal to edit, or None."""
    if max(width, height) > MAX_ASPECT * min(width, height):
        return (
            f"it is {width}×{height}; the long side may be at most {MAX_ASPECT:g} times the "
            "short side (crop it first)"
        )
    return None


def decode_allowance(file_bytes: int) -> int:
    """How many decoded pixels a file of ``file_bytes`` bytes may ask for."""
    return max(BASE_PIXELS, MAX_PIXELS_PER_BYTE * max(0, file_bytes))


def decode_problem(pixels: int, file_bytes: int) -> str | None:
    """Why ``pixels`` decoded from ``file_bytes`` bytes is refused as a decompression bomb."""
    if pixels > decode_allowance(file_bytes):
        return (
            f"it would decode to {pixels / 1e6:.0f} million pixels from only "
            f"{file_bytes / 2**20:.1f} MB; beyond {BASE_PIXELS // 10**6} million pixels a file "
            f"may hold at most {MAX_PIXELS_PER_BYTE} pixels per byte (a decompression bomb?)"
        )
    return None
