"""Preferences: one typed, versioned file; migrations; a corrupt file never stops the app."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from backend.settings import (
    LEGACY_QSETTINGS_KEYS,
    MIGRATIONS,
    REGISTRY,
    SCHEMA_VERSION,
    Settings,
    SettingsStore,
    check_value,
    config_dir,
)


def test_every_setting_is_registered_with_a_help_text() -> None:
    assert set(REGISTRY) == {f.name for f in fields(Settings)}
    assert all(len(key.help) > 10 for key in REGISTRY.values())
    assert set(MIGRATIONS) == set(range(SCHEMA_VERSION))  # a step from every older version


def test_a_fresh_store_has_the_defaults_and_writes_versioned_json(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "cfg" / "settings.json")
    assert store.settings == Settings() and not store.path.exists()
    store.update(last_dir="/photos", export_quality=80, device="cpu")
    data = json.loads(store.path.read_text())
    assert data["version"] == SCHEMA_VERSION and data["export_quality"] == 80
    again = SettingsStore(store.path)
    assert again.get("last_dir") == "/photos" and again.get("device") == "cpu"
    assert again.warnings == []


def test_bad_values_are_refused_and_change_nothing(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "s.json")
    for name, value in [("export_quality", 0), ("export_quality", 10**400), ("device", "tpu"),
                        ("keep_photo_lora", "yes"), ("lora_cache_limit_gb", float("nan")),
                        ("recent_models", [1]), ("nonsense", 1)]:  # fmt: skip
        with pytest.raises(ValueError):
            store.update(**{name: value})
    assert store.settings == Settings() and not store.path.exists()


def test_recent_lists_are_deduplicated_and_bounded(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "s.json")
    for n in range(12):
        store.push_recent("recent_projects", f"/p/{n % 10}.dragstudio")
    items = store.get("recent_projects")
    assert items[0] == "/p/1.dragstudio" and len(items) == 8 and len(set(items)) == 8
    assert check_value("recent_models", ["a", "b", "a"]) == ("a", "b")


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b"\xff\xfe", b'{"version": "two"}', b"[" * 100_000, b""],
)
def test_a_corrupt_file_gives_defaults_and_a_warning(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(content)
    store = SettingsStore(path)
    assert store.settings == Settings()
    assert len(store.warnings) == 1 and "using the defaults" in store.warnings[0]
    store.update(export_quality=50)  # and the next change repairs it
    assert SettingsStore(path).get("export_quality") == 50


def test_wrong_keys_are_dropped_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    bad = {"version": SCHEMA_VERSION, "export_quality": "high", "last_dir": "/ok", "x": 1}
    path.write_text(json.dumps(bad))
    store = SettingsStore(path)
    assert store.get("last_dir") == "/ok" and store.get("export_quality") == 92
    assert len(store.warnings) == 2 and any("export_quality" in w for w in store.warnings)


def test_a_newer_file_keeps_what_this_version_knows(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": SCHEMA_VERSION + 5, "last_dir": "/x", "future": 1}))
    store = SettingsStore(path)
    assert store.get("last_dir") == "/x" and "newer" in store.warnings[0]


def test_the_old_qsettings_keys_migrate_once(tmp_path: Path) -> None:
    # INI files keep no types: QSettings hands back strings, and a one-item list as a string.
    legacy = {"paths/last_dir": "/home/me/photos", "export/quality": "75",
              "recent/projects": "/a.dragstudio", "model/recent": ["m1", "m2"],
              "model/current": "m1", "drag/keep_photo_lora": "false",
              "lora_cache/limit_gb": "0.5", "paths/export_dir": "/out"}  # fmt: skip
    assert set(legacy) == set(LEGACY_QSETTINGS_KEYS)
    path = tmp_path / "s.json"
    store = SettingsStore(path, legacy=legacy)
    s = store.settings
    assert (s.last_dir, s.export_dir, s.export_quality) == ("/home/me/photos", "/out", 75)
    assert s.recent_projects == ("/a.dragstudio",) and s.recent_models == ("m1", "m2")
    assert (s.model, s.keep_photo_lora, s.lora_cache_limit_gb) == ("m1", False, 0.5)
    assert path.exists()  # written: the legacy keys are not read again
    assert SettingsStore(path, legacy={"paths/last_dir": "/elsewhere"}).settings == s


def test_a_bad_legacy_value_is_dropped_not_fatal(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "s.json", legacy={"export/quality": "lots"})
    assert store.get("export_quality") == 92 and "export_quality" in store.warnings[0]


def test_an_unwritable_folder_loses_preferences_not_the_session(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = SettingsStore(blocker / "s.json")
    store.update(last_dir="/x")
    assert store.get("last_dir") == "/x" and "cannot save" in store.warnings[-1]


def test_the_config_folder_can_be_overridden(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRAGSTUDIO_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path
    assert SettingsStore().path == tmp_path / "settings.json"


def test_settings_need_neither_torch_nor_qt() -> None:
    code = (
        "import sys, backend.settings, backend.params\n"
        "bad = [m for m in ('torch', 'PySide6', 'diffusers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
