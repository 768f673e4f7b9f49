"""A real server on 127.0.0.1 (random free port, tiny model, few steps) and its clients: the
CLI, the remote engine host the GUI uses, and hostile or careless connections."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.events import Stage, StageFinished, StageStarted, StepProgress
from backend.imagefile import png_bytes
from backend.lora_cache import LoraCache
from backend.request import PointPair
from backend.server import protocol
from backend.server.client import (
    ConnectionLost,
    JobFailed,
    RemoteError,
    ServerRefused,
    remote_edit,
)
from backend.server.codec import request_to_json, sha256, upload_parts
from dragstudio.remote import RemoteEngineHost
from tests.server_helpers import TOKEN, ThreadServer, connected, run, tiny_request

pytest.importorskip("websockets")

STAGE_ORDER = (Stage.LOAD, Stage.LORA, Stage.INVERSION, Stage.DRAG, Stage.DENOISE)


def test_a_wrong_token_and_another_protocol_version_are_refused(server: ThreadServer) -> None:
    from websockets.asyncio.client import connect

    with pytest.raises(ServerRefused, match="token"):
        run(connected(server.url, "not-the-token"))
    with pytest.raises(ServerRefused, match="token"):
        run(connected(server.url, ""))

    async def old_client() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(server.url, additional_headers=headers, proxy=None) as ws:
            await ws.send(protocol.pack({"type": "hello", "protocol": 99, "client": "old"}))
            header, _ = protocol.unpack(await ws.recv())
            return header

    reply = run(old_client())
    assert reply["type"] == "error" and reply["code"] == protocol.VERSION
    assert server.server.sessions == set()


def test_malformed_and_refused_messages_get_clear_errors_and_the_session_lives_on(
    server: ThreadServer, photo: np.ndarray
) -> None:
    async def go() -> None:
        client = await connected(server.url)
        waiting: list[RemoteError] = []
        for header, payload in (
            ({"type": "upload", "kind": "image", "sha256": "0" * 64}, b"not a png"),
            ({"type": "upload", "kind": "image", "sha256": sha256(b"x" * 9)}, b"x" * 9),
            ({"type": "upload", "kind": "../../etc", "sha256": sha256(b"x")}, b"x"),
            ({"type": "upload", "kind": "image", "sha256": sha256(b"x"), "path": "/"}, b"x"),
            ({"type": "fetch", "kind": "result", "ref": "1" * 64}, None),
            ({"type": "cancel", "job": 12345}, None),
            ({"type": "launch_missiles"}, None),
        ):
            with pytest.raises(RemoteError) as e:
                await client.call(header, payload)
            waiting.append(e.value)
        codes = [e.code for e in waiting]
        assert codes == ["invalid", "invalid", "invalid", "bad_message", "not_found",
                         "not_found", "bad_message"]  # fmt: skip
        request = tiny_request(photo)
        parts = upload_parts(request)
        body = request_to_json(request, {r: sha256(d) for r, (_, d) in parts.items()})
        with pytest.raises(RemoteError) as e:
            await client.call({"type": "edit", "request": body})  # nothing uploaded yet
        assert e.value.code == protocol.MISSING_BLOB
        with pytest.raises(RemoteError) as e:
            await client.call({"type": "edit", "request": {**body, "model": "/etc/passwd"}})
        assert e.value.code == protocol.MODEL_NOT_ALLOWED and "tiny" in str(e.value)
        with pytest.raises(RemoteError) as e:
            await client.call({"type": "edit", "request": {**body, "vae": "/etc"}})
        assert e.value.code == protocol.MODEL_NOT_ALLOWED and "own VAE" in str(e.value)
        await client._ws.send("{not json")  # a raw malformed frame: an error, not a hang-up
        await client.call({"type": "ping"})
        assert client.connected
        await client.close()

    run(go())


def test_oversized_uploads_are_refused_and_giant_frames_end_the_connection(
    tiny_model_dir: Path, tmp_path: Path, photo: np.ndarray
) -> None:
    small = dict(max_image_bytes=50_000, max_latents_bytes=50_000, max_lora_bytes=50_000)
    with ThreadServer(tiny_model_dir, tmp_path, max_pixels=200 * 200, **small) as s:

        async def go() -> None:
            client = await connected(s.url)
            assert client.limits.max_image_bytes == 50_000  # the welcome tells the limits
            png = png_bytes(np.zeros((256, 256, 3), np.uint8))  # small file, too many pixels
            with pytest.raises(RemoteError, match="pixels"):
                await client.upload("image", png)
            noise = np.random.default_rng(1).integers(0, 255, (190, 190, 3), dtype=np.uint8)
            with pytest.raises(RemoteError, match="bytes") as e:
                await client.upload("image", png_bytes(noise))  # ~108 kB > 50 kB
            assert e.value.code == protocol.TOO_LARGE
            with pytest.raises(InvalidRequest, match="refused the image"):
                await remote_edit(client, tiny_request(photo))
            with pytest.raises(ConnectionLost, match="Lost the connection"):
                await client.call({"type": "upload", "kind": "image", "sha256": "0" * 64},
                                  b"\0" * 3_000_000)  # fmt: skip
            await asyncio.sleep(0.2)
            assert not client.connected
            await client.close()

        run(go())


def test_cli_edit_through_the_server_equals_the_local_engine(
    server: ThreadServer, photo: np.ndarray, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from backend.cli import main

    Image.fromarray(photo).save(tmp_path / "photo.png")
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[60:200, 60:200] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ["edit", "--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"),
              "--pair", "100,120,130,120", "--prompt", "a test", "--lora-steps", "2",
              "--lora-resolution", "64", "--drag-steps", "3", "--ddim-steps", "6",
              "--working-width", "128", "--seed", "7", "--quiet"]  # fmt: skip
    local = tmp_path / "local.png"
    remote = tmp_path / "remote.png"
    assert main([*common, "--model", str(tiny_model_dir), "--device", "cpu", "--no-lora-cache",
                 "--out", str(local)]) == 0  # fmt: skip
    remote_args = ["--model", "tiny", "--server", server.url, "--token", TOKEN]
    assert (
        main([*common, *remote_args, "--out", str(remote), "--trace", str(tmp_path / "t.json")])
        == 0
    )
    a, b = np.asarray(Image.open(local)), np.asarray(Image.open(remote))
    assert a.shape == b.shape == photo.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(b, photo)
    assert '"model": "tiny"' in (tmp_path / "t.json").read_text()  # no server path leaks
    assert main([*common, *remote_args[:2], "--server", server.url, "--token", "wrong",
                 "--out", str(remote)]) == 1  # fmt: skip


def test_the_gui_host_against_the_server_events_previews_cancel_in_each_stage_and_lora_reuse(
    server: ThreadServer, photo: np.ndarray, tmp_path: Path
) -> None:
    cache = LoraCache(tmp_path / "local-lora")
    host = RemoteEngineHost(server.url, TOKEN, lora_cache=cache)
    request = tiny_request(photo, params={"preview_every": 1})

    async def go() -> None:
        assert (await host.load_model("tiny")).ok and host.loaded_model == "tiny"
        refused = await host.load_model("some/other-model")
        assert refused.failure is not None and "does not offer" in refused.failure.message
        events: list[Any] = []
        first = await host.run_edit(request, lambda _job, e: events.append(e))
        assert first.ok, first.failure
        starts = [e.stage for e in events if isinstance(e, StageStarted)]
        assert starts == list(STAGE_ORDER)
        drag_steps = [e for e in events if isinstance(e, StepProgress) and e.stage == Stage.DRAG]
        assert len(drag_steps) >= 1 and all(e.handles for e in drag_steps)
        assert all(e.preview is not None and e.preview.shape == (128, 128, 3) for e in drag_steps)
        assert isinstance(events[-1], StageFinished) and events[-1].stage == Stage.DENOISE
        assert first.value.image.shape == photo.shape
        key = first.value.trace.lora.key
        assert cache.read_bytes(key) is not None  # kept here too, to send back on re-drags
        assert first.value.lora_file == cache.read_bytes(key)  # and handed over for projects

        for n, stage in enumerate(STAGE_ORDER):
            # A fresh LoRA seed: every stage does real work again.
            fresh = replace(request, lora=replace(request.lora, seed=100 + n))
            seen: list[Any] = []

            def cancel_at(_job: int, e: Any, stage: Stage = stage, seen: list[Any] = seen) -> None:
                seen.append(e)
                if isinstance(e, StageStarted) and e.stage == stage:
                    host.cancel()

            outcome = await host.run_edit(fresh, cancel_at)
            assert outcome.failure is not None and outcome.failure.cancelled, stage
            assert not any(isinstance(e, StageFinished) and e.stage == stage for e in seen)
            client = await host.connect()
            for _ in range(200):  # the server stops the job at its next step
                if not await client.jobs():
                    break
                await asyncio.sleep(0.1)
            assert await client.jobs() == [], stage

        again = await host.run_edit(request)
        assert again.ok and again.value.trace.lora.cached is True
        assert again.value.trace.lora.key == key

    run(go())


def test_a_client_sees_and_cancels_only_its_own_jobs_and_cancels_queued_ones(
    server: ThreadServer, photo: np.ndarray
) -> None:
    async def go() -> None:
        alice, bob = await connected(server.url), await connected(server.url)
        far = (PointPair((40.0, 128.0), (250.0, 128.0)),)  # many steps before it arrives
        slow = tiny_request(photo, params={"drag_steps": 40}, pairs=far, mask=None)
        started: list[int] = []
        alice_job = asyncio.ensure_future(
            remote_edit(alice, slow, started=lambda j: started.append(j.id))
        )
        while not started:
            await asyncio.sleep(0.05)
        with pytest.raises(RemoteError) as e:
            await bob.cancel(started[0])
        assert e.value.code == protocol.NOT_FOUND
        assert await bob.jobs() == []
        assert [j["job"] for j in await alice.jobs()] == started

        # Bob's own job waits behind Alice's: cancelling it while queued ends it at once.
        queued: list[int] = []
        bob_job = asyncio.ensure_future(
            remote_edit(bob, tiny_request(photo), started=lambda j: queued.append(j.id))
        )
        while not queued:
            await asyncio.sleep(0.05)
        assert (await bob.jobs())[0]["state"] == "queued"
        await bob.cancel(queued[0])
        with pytest.raises(Exception) as cancelled:
            await bob_job
        assert type(cancelled.value).__name__ == "Cancelled"
        result = await alice_job  # untouched by Bob
        assert result.image.shape == photo.shape
        with pytest.raises(RemoteError) as e:
            await bob.fetch("result", sha256(png_bytes(result.image)))
        assert e.value.code == protocol.NOT_FOUND

        # And a running job is cancelled by its owner.
        running: list[int] = []
        job = asyncio.ensure_future(
            remote_edit(alice, slow, started=lambda j: running.append(j.id))
        )
        while not running:
            await asyncio.sleep(0.05)
        while (await alice.jobs())[0]["state"] != "running":
            await asyncio.sleep(0.05)
        await alice.cancel(running[0])
        with pytest.raises(Exception) as cancelled:
            await job
        assert type(cancelled.value).__name__ == "Cancelled"
        await alice.close()
        await bob.close()

    run(go())


def test_job_failures_travel_as_their_kind(server: ThreadServer, photo: np.ndarray) -> None:
    async def go() -> None:
        client = await connected(server.url)
        job = await client.submit({"type": "generate", "model": "tiny", "generation": {
            "prompt": "x", "negative_prompt": "", "seed": 0, "width": 64, "height": 64,
            "guidance_scale": 1.0, "steps": 2}})  # fmt: skip
        done = await job.wait(None, 10**6)
        assert done["type"] == "done" and "latents" in done
        with pytest.raises(RemoteError, match="multiple of 8"):
            await client.submit({"type": "generate", "model": "tiny", "generation": {
                "prompt": "x", "negative_prompt": "", "seed": 0, "width": 65, "height": 64,
                "guidance_scale": 1.0, "steps": 2}})  # fmt: skip
        await client.close()

    run(go())
    assert JobFailed("invalid", "x").kind == "invalid"
