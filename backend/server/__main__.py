"""``python -m backend.server``: the same as ``dragstudio-server``."""

from __future__ import annotations

from backend.server.app import main

if __name__ == "__main__":
    raise SystemExit(main())
