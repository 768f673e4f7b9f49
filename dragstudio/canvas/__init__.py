"""The image canvas: view, layers and tools."""

from __future__ import annotations

from dragstudio.canvas.tools import Tool
from dragstudio.canvas.view import CanvasView

__all__ = ["CanvasView", "Tool"]
