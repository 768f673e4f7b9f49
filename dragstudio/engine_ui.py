"""Settings → Engine: run edits on this computer or on a DragStudio server, and show which.

The choice and the address are preferences (:mod:`backend.settings`); the token is kept apart,
owner-only, in ``server_token`` beside the preferences file. The window's host (local
:class:`EngineHost` or :class:`RemoteEngineHost`) is swapped when the dialog is accepted and
nothing is running, so the drag controller and the generate panel keep working unchanged
against either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from backend.project import BundledLora
from backend.server.auth import read_private, write_private
from backend.settings import SettingsStore
from dragstudio.remote import RemoteEngineHost, check_connection
from dragstudio.runner import EngineHost, default_engine_factory
from dragstudio.window_services import WindowFrame

LOCAL, SERVER = "local", "server"
TOKEN_FILE = "server_token"


def token_path(prefs: SettingsStore) -> Path:
    return prefs.path.parent / TOKEN_FILE


def engine_choice(prefs: SettingsStore) -> tuple[str, str, str]:
    """``(kind, url, token)`` from the preferences (kind is "local" or "server")."""
    url = prefs.get("server_url")
    kind = SERVER if prefs.get("engine") == SERVER and url else LOCAL
    return kind, url, read_private(token_path(prefs))


def make_host(prefs: SettingsStore, lora_cache: Any) -> EngineHost | RemoteEngineHost:
    kind, url, token = engine_choice(prefs)
    if kind == SERVER:
        return RemoteEngineHost(url, token, lora_cache=lora_cache)
    factory = default_engine_factory(
        prefs.get("device"),
        lora_cache=lora_cache,
        single_file_config=prefs.get("model_config") or None,
        memory=prefs.get("memory"),
    )
    return EngineHost(factory)


class EngineDialog(QDialog):
    """This computer, or a server's address and token, with a connection test."""

    def __init__(self, prefs: SettingsStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Engine")
        self.prefs = prefs
        kind, url, token = engine_choice(prefs)
        self.local = QRadioButton("This computer")
        self.server = QRadioButton("A DragStudio server")
        group = QButtonGroup(self)
        group.addButton(self.local)
        group.addButton(self.server)
        (self.server if kind == SERVER else self.local).setChecked(True)
        self.url = QLineEdit(url)
        self.url.setPlaceholderText("ws://gpu-box:8765  or  wss://studio.example.org")
        self.token = QLineEdit(token)
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("printed by dragstudio-server at its first start")
        self.test_button = QPushButton("Test Connection")
        self.test_button.clicked.connect(self.test)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.result.setObjectName("engineTestResult")
        form = QFormLayout()
        form.addRow("Address:", self.url)
        form.addRow("Token:", self.token)
        form.addRow("", self.test_button)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Run drags and generations on:"))
        layout.addWidget(self.local)
        layout.addWidget(self.server)
        layout.addLayout(form)
        layout.addWidget(self.result)
        layout.addWidget(buttons)
        self.server.toggled.connect(self._enable)
        self._enable()
        self.task: asyncio.Future[Any] | None = None

    def _enable(self) -> None:
        on = self.server.isChecked()
        for widget in (self.url, self.token, self.test_button):
            widget.setEnabled(on)

    def test(self) -> asyncio.Future[Any]:
        """Connect once with what is typed; the outcome goes into the label."""
        self.result.setText("Connecting…")
        self.test_button.setEnabled(False)

        async def run() -> None:
            try:
                text = await check_connection(self.url.text().strip(), self.token.text().strip())
            except Exception as exc:
                text = f"Could not connect: {exc}"
            self.result.setText(text)
            self.test_button.setEnabled(self.server.isChecked())

        loop = asyncio.get_event_loop_policy().get_event_loop()
        self.task = loop.create_task(run())
        return self.task

    def _accept(self) -> None:
        if self.server.isChecked() and not self.url.text().strip():
            self.result.setText("Enter the server's address, or choose This computer.")
            return
        self.prefs.update(
            engine=SERVER if self.server.isChecked() else LOCAL, server_url=self.url.text().strip()
        )
        token = self.token.text().strip()
        if token or token_path(self.prefs).exists():
            try:
                write_private(token_path(self.prefs), token)
            except OSError as exc:
                self.result.setText(f"Could not store the token: {exc}")
                return
        self.accept()


class EngineUI:
    """The Settings → Engine action, the status-bar indicator, and swapping hosts."""

    def __init__(
        self,
        frame: WindowFrame,
        *,
        lora_cache: Any,
        current_host: Callable[[], Any],
        set_host: Callable[[Any], None],
        document_lora: Callable[[], BundledLora | None],
    ) -> None:
        """``current_host``/``set_host`` read and swap the window's host (every part that
        uses it follows); ``document_lora`` is the LoRA a server may be sent for this
        document (the project's)."""
        self.frame = frame
        self.lora_cache = lora_cache
        self.current_host = current_host
        self.set_host = set_host
        self.document_lora = document_lora
        self.indicator = QLabel("")
        self.indicator.setObjectName("engineIndicator")
        self.indicator.setMinimumWidth(160)
        frame.status.addPermanentWidget(self.indicator)
        action = frame.actions.add("engine_settings", "&Engine…", self.open_dialog,
                                   tip="Run on this computer or on a server")  # fmt: skip
        self.menu = self._settings_menu()
        self.menu.addAction(action)
        self.attach(current_host())

    def _settings_menu(self) -> QMenu:
        bar = self.frame.window.menuBar()
        for act in bar.actions():
            menu = act.menu()
            if menu is not None and menu.objectName() == "settingsMenu":
                return menu
        menu = QMenu("&Settings", self.frame.window)
        menu.setObjectName("settingsMenu")
        bar.insertMenu(bar.actions()[-1], menu)  # before Help
        return menu

    def attach(self, host: Any) -> None:
        """Show ``host``'s state in the indicator and let it upload the project's LoRA."""
        if isinstance(host, RemoteEngineHost):
            host.status_listener = self._show_status
            host.lora_provider = self.document_lora
            self._show_status(*host.status)
        else:
            self.indicator.setText("Engine: this computer")
            self.indicator.setToolTip("Drags run on this computer's engine")

    def _show_status(self, state: str, text: str) -> None:
        mark = {"connected": "●", "offline": "○", "error": "✕"}.get(state, "○")
        self.indicator.setText(f"Engine: server {mark} {state}")
        self.indicator.setToolTip(text)

    def open_dialog(self) -> None:
        dialog = EngineDialog(self.frame.prefs, self.frame.window)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.apply()

    def apply(self) -> bool:
        """Switch to the engine the settings name; False (and a message) while a job runs."""
        old = self.current_host()
        if old.busy:
            QMessageBox.information(self.frame.window, "Engine", "The new engine is used once "
                                    "the current job ends; choose it again then.")  # fmt: skip
            return False
        host = make_host(self.frame.prefs, self.lora_cache)
        self.set_host(host)
        with contextlib.suppress(Exception):
            old.shutdown()
        self.attach(host)
        return True
