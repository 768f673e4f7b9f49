"""Settings → Engine: this computer or a server, the connection test, the indicator, and the
window's host swapped so drags and generations go to the chosen engine."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dragstudio.engine_ui import EngineDialog, token_path
from dragstudio.remote import RemoteEngineHost
from dragstudio.runner import EngineHost
from tests.server_helpers import TOKEN, ThreadServer

pytest.importorskip("websockets")


def test_choosing_a_server_tests_the_connection_and_swaps_the_host(
    window, loop, tiny_model_dir: Path, tmp_path: Path
) -> None:
    ui = window.engine_ui
    assert ui.indicator.text() == "Engine: this computer"
    assert isinstance(window.drag_ui.host, EngineHost)
    assert window.actions["engine_settings"] in ui.menu.actions()
    assert ui.menu.title() == "&Settings"
    with ThreadServer(tiny_model_dir, tmp_path) as server:
        dialog = EngineDialog(window.prefs, window)
        assert not dialog.url.isEnabled()  # "This computer" is chosen
        dialog.server.setChecked(True)
        assert dialog.url.isEnabled() and dialog.token.isEnabled()
        dialog.url.setText(server.url.removesuffix("/v1"))
        dialog.token.setText("wrong")
        loop.run_until_complete(dialog.test())
        assert "Could not connect" in dialog.result.text() and "token" in dialog.result.text()
        dialog.token.setText(TOKEN)
        loop.run_until_complete(dialog.test())
        assert dialog.result.text().startswith("Connected") and "tiny" in dialog.result.text()
        dialog._accept()
        assert window.prefs.get("engine") == "server"
        assert window.prefs.get("server_url") == server.url.removesuffix("/v1")
        assert stat.S_IMODE(token_path(window.prefs).stat().st_mode) == 0o600
        assert TOKEN not in window.prefs.path.read_text()  # the token is not a preference

        assert ui.apply()
        host = window.drag_ui.host
        assert isinstance(host, RemoteEngineHost)
        assert window.drag_ui.controller.host is host and window.generate_ui.host is host
        assert host.memory == window.memory_combo.plan  # the GPU memory choice goes along
        assert "○" in ui.indicator.text()  # not connected until the first job
        outcome = loop.run_until_complete(host.load_model("tiny"))
        assert outcome.ok
        assert "● connected" in ui.indicator.text()
        host.shutdown()

    dialog = EngineDialog(window.prefs, window)
    assert dialog.server.isChecked() and dialog.token.text() == TOKEN
    dialog.local.setChecked(True)
    dialog._accept()
    assert ui.apply() and isinstance(window.drag_ui.host, EngineHost)
    assert window.drag_ui.host.memory == window.memory_combo.plan
    assert ui.indicator.text() == "Engine: this computer"
