"""DragStudio's engine: DragDiffusion on Stable Diffusion. Never imports Qt."""

from __future__ import annotations

__version__ = "0.1.0"
