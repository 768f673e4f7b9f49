"""Loading images: orientation, colour modes and bit depths, and files that are not images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.document import Document, load_image
from backend.errors import InvalidRequest

DEV = Path("/work/shared/data/dragbench-dev")


def _save(im: Image.Image, path: Path, **kw: object) -> Path:
    im.save(path, **kw)
    return path


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # A 40×20 image, left half red; orientation 6 means "rotate 90° clockwise to view".
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    path = _save(im, tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(path)
    assert out.shape == (40, 20, 3)
    # After a clockwise quarter turn the left half becomes the top half.
    assert out[5, 10, 0] > 200 and out[5, 10, 1] < 60
    assert out[35, 10, 0] < 60


def test_rgba_is_flattened_over_white(tmp_path: Path) -> None:
    a = np.zeros((8, 8, 4), np.uint8)
    a[:, :4] = (0, 0, 255, 255)  # opaque blue
    a[:, 4:] = (255, 0, 0, 0)  # fully transparent red
    out = load_image(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[0, 7]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (6, 6), 0)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.paste(1, (0, 0, 3, 6))
    path = _save(im, tmp_path / "p.png", transparency=0)
    out = load_image(path)
    assert tuple(out[0, 0]) == (200, 100, 50)
    assert tuple(out[0, 5]) == (255, 255, 255)


def test_palette_gif(tmp_path: Path) -> None:
    im = Image.new("RGB", (6, 6), (0, 128, 255)).convert("P")
    out = load_image(_save(im, tmp_path / "p.gif"))
    assert out.shape == (6, 6, 3)
    assert abs(int(out[2, 2, 2]) - 255) < 10


def test_sixteen_bit_greyscale_is_scaled(tmp_path: Path) -> None:
    a = np.array([[0, 65535], [32896, 257]], np.uint16)
    out = load_image(_save(Image.fromarray(a), tmp_path / "g16.png"))
    assert out.shape == (2, 2, 3)
    assert out[:, :, 0].tolist() == [[0, 255], [128, 1]]
    assert (out[..., 0] == out[..., 2]).all()


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    # Pillow cannot build a 48-bit image from an array, so write one with the PNG layout by
    # hand: IHDR bit depth 16, colour type 2.
    import struct
    import zlib

    w, h = 3, 2
    px = np.zeros((h, w, 3), ">u2")
    px[..., 0] = 65535
    px[..., 2] = 32896
    raw = b"".join(b"\x00" + px[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    path = tmp_path / "rgb48.png"
    path.write_bytes(png)
    out = load_image(path)
    assert out.shape == (2, 3, 3)
    assert tuple(out[0, 0]) == (255, 0, 128)


def test_greyscale_and_bilevel(tmp_path: Path) -> None:
    g = Image.fromarray(np.full((5, 7), 99, np.uint8), "L")
    out = load_image(_save(g, tmp_path / "g.png"))
    assert out.shape == (5, 7, 3) and (out == 99).all()
    b = Image.new("1", (4, 4), 1)
    assert (load_image(_save(b, tmp_path / "b.png")) == 255).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in naive CMYK
    out = load_image(_save(im, tmp_path / "c.jpg", quality=95))
    assert out.shape == (16, 16, 3)
    r, g, b = (int(v) for v in out[8, 8])
    assert r > 200 and g < 60 and b < 60


def test_corrupt_and_non_image_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InvalidRequest, match=r"notes\.png"):
        load_image(text)
    good = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    path = _save(good, tmp_path / "t.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InvalidRequest, match=r"truncated\.jpg"):
        load_image(truncated)
    with pytest.raises(InvalidRequest, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidRequest, match="not a file"):
        load_image(tmp_path)


def test_failed_open_leaves_document_untouched(tmp_path: Path) -> None:
    doc = Document()
    doc.set_image(np.full((10, 10, 3), 7, np.uint8), "first.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    with pytest.raises(InvalidRequest):
        doc.open(bad)
    assert doc.image is not None and (doc.image == 7).all()
    assert doc.path is not None and doc.path.name == "first.png"


@pytest.mark.skipif(not DEV.exists(), reason="DragBench dev samples not present")
def test_dragbench_sample_loads() -> None:
    path = next(DEV.glob("*/*/original_image.png"))
    out = load_image(path)
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
