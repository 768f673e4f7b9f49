"""numpy ↔ QImage without surprises about strides and buffer lifetimes."""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QImage


def rgb_to_qimage(image: np.ndarray) -> QImage:
    """An ``H×W×3`` uint8 array as a QImage that owns its pixels (RGB32, fast to draw)."""
    h, w = image.shape[:2]
    rgb = np.ascontiguousarray(image, dtype=np.uint8)
    wrapped = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    # convertToFormat copies, so the result no longer points into ``rgb``.
    return wrapped.convertToFormat(QImage.Format.Format_RGB32)


def argb_to_qimage(pixels: np.ndarray) -> QImage:
    """An ``H×W`` uint32 array of premultiplied ARGB as a QImage that owns a copy."""
    h, w = pixels.shape
    buf = np.ascontiguousarray(pixels, dtype=np.uint32)
    wrapped = QImage(buf.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied)
    return wrapped.copy()
