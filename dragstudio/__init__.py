"""DragStudio's desktop application (PySide6). Imports the engine lazily, never at start-up."""

from __future__ import annotations
