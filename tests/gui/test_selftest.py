"""`dragstudio --self-test` — the check CI and packagers run — passes from a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_self_test_passes_and_reports_each_check(tmp_path: Path) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--self-test"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) >= 5, out
    for needed in (
        "Qt bindings sound",
        "canvas repaints keep None",
        "tiny model",
        "stage events in order",
        "tracking events",
        "result",
    ):
        assert any(needed in line for line in lines), (needed, out)
    assert not any(line.lower().startswith(("fail", "✗")) for line in lines), out
