"""The server process dies mid-drag: the app's drag ends with a clear message, the document is
untouched, and after a restart (same port, same token file) the same drag goes through."""

from __future__ import annotations

import asyncio
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from backend.document import Document, Pair
from backend.events import Stage, StepProgress
from dragstudio.drag_controller import DragController
from dragstudio.remote import RemoteEngineHost
from tests.server_helpers import ProcessServer, tiny_request

pytest.importorskip("websockets")


def test_a_server_restart_mid_drag_loses_nothing_and_a_resubmit_works(
    qapp, tiny_model_dir: Path, tmp_path: Path, photo: np.ndarray
) -> None:
    server = ProcessServer(tiny_model_dir, tmp_path)
    url = server.start()
    try:
        token = server.token
        assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
        assert (tmp_path / "token").read_text().strip() == token
        request = tiny_request(photo, model="tiny", params={"drag_steps": 20})
        doc = Document()
        doc.set_image(photo)
        assert request.mask is not None
        doc.set_mask(request.mask)
        doc.set_pairs([Pair((100.0, 120.0), (160.0, 120.0))])
        doc.set_prompt(request.prompt)
        doc.set_params(request.params, replace(request.lora, steps=1))
        doc.set_model("tiny")
        before = doc.image.copy()
        host = RemoteEngineHost(url, token)
        controller = DragController(doc, host)
        failures: list[object] = []
        controller.failed.connect(failures.append)
        killed: list[int] = []

        def kill_mid_drag(event: StepProgress) -> None:
            if event.stage == Stage.DRAG and not killed:
                server.kill()
                killed.append(event.step)

        controller.stepProgress.connect(kill_mid_drag)
        outcome = asyncio.run(asyncio.wait_for(controller.drag(), 600))
        assert killed, "the drag never reached the drag stage"
        assert outcome is not None and outcome.failure is not None
        assert "Lost the connection to the server" in outcome.failure.message
        assert "unchanged" in outcome.failure.suggestion
        assert failures and failures[0] is outcome.failure
        assert controller.pending is None and not controller.busy
        assert doc.history == [] and np.array_equal(doc.image, before)
        assert host.status[0] == "offline"

        assert server.start() == url  # same port; the token file is reused, not reprinted
        assert "".join(server.output).count("A new access token") == 1
        controller.stepProgress.disconnect(kill_mid_drag)
        outcome = asyncio.run(asyncio.wait_for(controller.drag(), 600))
        assert outcome is not None and outcome.ok, outcome and outcome.failure
        assert controller.pending is not None
        assert controller.pending.image.shape == photo.shape
        assert host.status[0] == "connected"
        assert doc.history == []  # a pending result waits for Accept, as with the local engine
    finally:
        server.stop()
