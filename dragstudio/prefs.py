"""The window's preferences: :class:`backend.settings.SettingsStore` next to Qt's own settings.

``QSettings`` keeps only the window geometry (Qt's opaque bytes). Everything else is a typed key
of :mod:`backend.settings`. On first start the old ``QSettings`` keys are migrated (schema
version 0) so nobody loses their recent files or export folder.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from backend.settings import FILE_NAME, LEGACY_QSETTINGS_KEYS, SettingsStore, config_dir


def prefs_path(settings: QSettings) -> Path:
    """Beside an explicit INI settings file (tests, self-test, portable use), else the user
    config folder."""
    if settings.format() == QSettings.Format.IniFormat and settings.fileName():
        ini = Path(settings.fileName())
        return ini.with_name(f"{ini.stem}.json")
    return config_dir() / FILE_NAME


def open_prefs(settings: QSettings) -> SettingsStore:
    """The preferences for a window using ``settings``, migrating its old keys once."""
    legacy = {k: settings.value(k) for k in LEGACY_QSETTINGS_KEYS if settings.contains(k)}
    return SettingsStore(prefs_path(settings), legacy=legacy)
