"""Side panels: prompt and parameters, model picker; the progress panel will join them."""

from __future__ import annotations
