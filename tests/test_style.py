"""Lint, format and the import contracts (docs/architecture.md) are part of the test run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by the test extra")
def test_ruff_lint_and_format_are_clean() -> None:
    lint = _run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_backend_never_imports_qt() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = _run(exe, "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KEPT" in result.stdout
    assert "Contracts: 4 kept, 0 broken." in result.stdout, result.stdout


def test_the_session_layer_loads_no_torch_at_run_time() -> None:
    # The import contract checks the code statically; this checks what really gets loaded.
    code = (
        "import sys, backend.document, backend.project, backend.export, backend.lora_cache,"
        " backend.generation, backend.settings, backend.params, backend.events;"
        "bad=[m for m in ('torch','diffusers','peft','transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_whole_engine_loads_no_qt() -> None:
    code = (
        "import sys, backend.engine, backend.cli, backend.bench.runner, backend.document;"
        "bad=[m for m in sys.modules if m.startswith(('PySide6','shiboken6','qasync'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_window_module_has_a_layer() -> None:
    # A module missing from the layers contract is unchecked: it could import main_window.
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c.get("containers") == ["dragstudio"]]
    listed = {name.strip() for layer in layers for name in layer.split(":")}
    package = ROOT / "dragstudio"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert modules - listed == set()
