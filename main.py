"""Run DragStudio from a checkout: ``python main.py [photo]``."""

from __future__ import annotations

from dragstudio.app import main

raise SystemExit(main())
