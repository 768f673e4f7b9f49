"""``--server URL --token T`` for ``dragstudio-cli edit|generate|bench``: the same commands,
run by a DragStudio server instead of this machine's engine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from backend.errors import InvalidRequest

TOKEN_ENV = "DRAGSTUDIO_SERVER_TOKEN"


def add_server_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("remote engine (see docs/server.md)")
    group.add_argument(
        "--server",
        metavar="URL",
        help="run on a DragStudio server, e.g. ws://gpu-box:8765 (--model is then one of the "
        "names it allows)",
    )
    group.add_argument(
        "--token",
        help=f"the server's access token (or set ${TOKEN_ENV}, which keeps it out of the "
        "process list)",
    )
    group.add_argument("--server-ca", type=Path, help="CA certificate to trust for wss://")


def remote_engine(args: argparse.Namespace) -> Any:
    """A connected :class:`RemoteEngine` when ``--server`` was given, else None."""
    if getattr(args, "server", None) is None:
        return None
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise InvalidRequest(f"--server needs --token (or ${TOKEN_ENV})")
    try:
        from backend.server.client import RemoteEngine
    except ImportError:
        raise InvalidRequest('--server needs: pip install "dragstudio[server]"') from None
    engine = RemoteEngine(args.server, token, cafile=args.server_ca)
    if getattr(args, "memory", None) is not None:
        engine.use_memory_setting(args.memory)  # the server's engine runs the edit with it
    return engine
