"""TLS with a given certificate and key: wss:// works for a client that trusts it, and a
client that does not is refused before any token is sent."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from backend.server.client import ConnectionLost, ServerClient
from tests.server_helpers import TOKEN, ThreadServer

pytest.importorskip("websockets")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_wss_with_a_given_certificate(tiny_model_dir: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    with ThreadServer(tiny_model_dir, tmp_path, certfile=cert, keyfile=key) as server:
        assert server.url.startswith("wss://127.0.0.1:")

        async def go() -> None:
            client = ServerClient(server.url, TOKEN, cafile=cert)
            welcome = await client.connect()
            assert welcome["models"] == ["tiny"]
            await client.call({"type": "ping"})
            await client.close()
            with pytest.raises(ConnectionLost, match=r"(?i)certificate"):
                await ServerClient(server.url, TOKEN).connect()  # the system CAs don't know it
            with pytest.raises(ConnectionLost):
                await ServerClient(server.url.replace("wss", "ws"), TOKEN).connect()

        asyncio.run(asyncio.wait_for(go(), 120))
