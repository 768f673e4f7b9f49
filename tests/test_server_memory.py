"""The memory plan travels to the engine server: a real server on 127.0.0.1 (tiny model), the
GUI's remote host, the CLI, and the strict codec's refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backend.server import protocol
from backend.server.client import RemoteError, ServerClient, remote_edit
from backend.server.codec import request_to_json, sha256, upload_parts
from dragstudio.remote import RemoteEngineHost
from tests.server_helpers import TOKEN, ThreadServer, run, tiny_request

pytest.importorskip("websockets")


def _engine_settings(server: ThreadServer) -> list[str]:
    return [w.engine.memory_setting for w in server.server.workers if w.engine is not None]


def test_the_gui_host_sends_its_memory_plan_and_the_server_engine_runs_with_it(
    server: ThreadServer, photo: np.ndarray
) -> None:
    host = RemoteEngineHost(server.url, TOKEN)
    request = tiny_request(photo)

    async def go() -> None:
        client = await host.connect()
        assert "memory" in client.features
        host.memory = "6gb"
        lean = await host.run_edit(request)
        assert lean.ok, lean.failure
        assert lean.value.trace.memory_plan == "6gb"
        assert _engine_settings(server) == ["6gb"]
        host.memory = None  # the server's own choice: auto, which is high on a CPU
        own = await host.run_edit(request)
        assert own.ok, own.failure
        assert own.value.trace.memory_plan == "high"
        assert _engine_settings(server) == ["auto"]
        # Within the plan's documented tolerance of each other (the same engine code).
        diff = np.abs(lean.value.image.astype(int) - own.value.image.astype(int)).mean()
        assert diff <= 0.5, diff
        await client.close()

    run(go())


def test_a_server_without_the_feature_is_not_sent_the_field(
    server: ThreadServer, photo: np.ndarray
) -> None:
    sent: list[dict[str, Any]] = []

    async def go() -> None:
        client = ServerClient(server.url, TOKEN)
        await client.connect()
        submit = client.submit

        async def spy(header: dict[str, Any]) -> Any:
            sent.append(header)
            return await submit(header)

        client.submit = spy  # type: ignore[method-assign]
        client.welcome = {**client.welcome, "features": []}  # an older server's welcome
        result = await remote_edit(client, tiny_request(photo), memory="8gb")
        assert result.trace.memory_plan == "high"  # the server ran its own choice
        client.welcome = {**client.welcome, "features": list(protocol.FEATURES)}
        result = await remote_edit(client, tiny_request(photo), memory="8gb")
        assert result.trace.memory_plan == "8gb"
        await client.close()

    run(go())
    assert "memory" not in sent[0] and sent[1]["memory"] == "8gb"


def test_the_server_refuses_a_memory_plan_it_does_not_know(
    server: ThreadServer, photo: np.ndarray
) -> None:
    async def go() -> list[RemoteError]:
        client = ServerClient(server.url, TOKEN)
        await client.connect()
        request = tiny_request(photo)
        parts = upload_parts(request)
        for kind, data in parts.values():
            await client.upload(kind, data)
        body = request_to_json(request, {r: sha256(d) for r, (_, d) in parts.items()})
        errors = []
        for bad in ("4gb", "HIGH", 8, None, ["6gb"]):
            with pytest.raises(RemoteError) as e:
                await client.call({"type": "edit", "request": body, "memory": bad})
            errors.append(e.value)
        with pytest.raises(RemoteError) as e:  # still strict about fields it does not know
            await client.call({"type": "edit", "request": body, "memory_plan": "6gb"})
        errors.append(e.value)
        await client.call({"type": "ping"})  # the session lives on
        await client.close()
        return errors

    errors = run(go())
    assert all(e.code == protocol.BAD_MESSAGE for e in errors), [e.code for e in errors]
    assert all("edit.memory" in str(e) for e in errors[:-1])
    assert "memory_plan" in str(errors[-1])


def test_the_cli_sends_its_memory_option_to_the_server(
    server: ThreadServer, photo: np.ndarray, tmp_path: Path
) -> None:
    from backend.cli import main

    Image.fromarray(photo).save(tmp_path / "photo.png")
    args = ["edit", "--image", str(tmp_path / "photo.png"), "--pair", "100,120,130,120",
            "--lora-steps", "1", "--lora-resolution", "64", "--drag-steps", "1",
            "--ddim-steps", "4", "--working-width", "64", "--quiet", "--model", "tiny",
            "--server", server.url, "--token", TOKEN, "--out", str(tmp_path / "out.png"),
            "--trace", str(tmp_path / "t.json"), "--memory", "8gb"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((tmp_path / "t.json").read_text())["memory"]["plan"] == "8gb"
