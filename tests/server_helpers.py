"""A real DragStudio server for tests: in this process (on its own loop thread) or as a
subprocess (for restarts), always on 127.0.0.1 and a free port, with the tiny model."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from backend.request import DragParams, DragRequest, LoraParams, PointPair

TOKEN = "test-token-0123456789abcdef"


def run(coro: Any) -> Any:
    """Run a client coroutine to its end on a fresh event loop (10 minutes at most)."""
    return asyncio.run(asyncio.wait_for(coro, 600))


async def connected(url: str, token: str = TOKEN) -> Any:
    """A :class:`~backend.server.client.ServerClient` that has shaken hands with ``url``."""
    from backend.server.client import ServerClient

    client = ServerClient(url, token)
    await client.connect()
    return client


class ThreadServer:
    """``with ThreadServer(models, cache) as s:`` → ``s.url``; closes (and joins) on exit."""

    def __init__(
        self,
        tiny: Path,
        tmp: Path,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        **limits: Any,
    ) -> None:
        from backend.server.app import Server, ServerConfig
        from backend.server.protocol import Limits

        config = ServerConfig(
            token=TOKEN,
            models={"tiny": str(tiny)},
            cache_dir=tmp / "server-cache",
            host="127.0.0.1",
            port=0,
            devices=("cpu",),
            certfile=certfile,
            keyfile=keyfile,
            limits=replace(Limits(), **limits),
        )
        self.server = Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self

    @property
    def url(self) -> str:
        return self.server.url

    def __exit__(self, *_: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class ProcessServer:
    """``python -m backend.server`` in a subprocess; ``start()`` again after ``kill()`` reuses
    the same port, token file and cache (a restart)."""

    def __init__(self, tiny: Path, tmp: Path, port: int = 0) -> None:
        self.args = [
            sys.executable, "-m", "backend.server", "--allow-model", f"tiny={tiny}",
            "--devices", "cpu", "--cache-dir", str(tmp / "server-cache"),
            "--token-file", str(tmp / "token"), "--host", "127.0.0.1",
        ]  # fmt: skip
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.proc = subprocess.Popen(
            [*self.args, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            found = re.search(r"listening on (ws://127\.0\.0\.1:(\d+)/v1)", line)
            if found:
                self.port = int(found.group(2))
                threading.Thread(target=self._drain, daemon=True).start()
                return found.group(1)
        raise RuntimeError("the server did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def token(self) -> str:
        text = "".join(self.output)
        found = re.search(r"^\s{4}(\S{20,})$", text, re.M)
        assert found, text
        return found.group(1)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def tiny_request(photo: np.ndarray, model: str = "tiny", **changes: Any) -> DragRequest:
    """A fast edit of the 256² test photo (few steps everywhere)."""
    mask = np.zeros(photo.shape[:2], bool)
    mask[60:200, 60:200] = True
    params = DragParams(inference_steps=6, drag_steps=3, working_width=128)
    return DragRequest(
        image=photo,
        pairs=changes.pop("pairs", (PointPair((100.0, 120.0), (130.0, 120.0)),)),
        mask=changes.pop("mask", mask),
        prompt="a test",
        params=replace(params, **changes.pop("params", {})),
        lora=replace(LoraParams(steps=2, batch_size=1, resolution=64), **changes.pop("lora", {})),
        model=model,
        **changes,
    )
