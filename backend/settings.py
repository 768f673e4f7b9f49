"""The user's preferences: one typed, versioned file with one registry of keys.

Every preference is a field of :class:`Settings` with a :class:`Key` in its metadata (what it is
for, what values it accepts): that is the registry, and the only place a preference is named.
The file is JSON in the platform's user config folder (``$DRAGSTUDIO_CONFIG_DIR`` overrides it),
written atomically. It carries a schema ``version``; :data:`MIGRATIONS` lifts older files step
by step, version 0 being the raw ``QSettings`` keys DragStudio used before this module. A file
that cannot be read (corrupt, wrong types) never stops the app: the readable keys are kept, the
rest fall back to their defaults, and :attr:`SettingsStore.warnings` says what was dropped.
(Window geometry stays in ``QSettings``: it is Qt's own opaque data.)

Torch- and Qt-free: the GUI reads it on its thread, the CLI may too.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from backend.atomicio import write_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FILE_NAME = "settings.json"
MAX_RECENT = 8
MAX_FILE_BYTES = 1 << 20
DEVICES = ("auto", "cpu", "cuda", "mps")
ENGINES = ("local", "server")
MEMORY_PLANS = ("auto", "high", "8gb", "6gb")


@dataclass(frozen=True)
class Key:
    """What a preference is for and what it accepts (``choices`` or ``lo``..``hi``)."""

    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    max_items: int = 0


def _key(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"key": Key(help, **kw)})


@dataclass(frozen=True)
class Settings:
    """All preferences, with their defaults. Replace, don't mutate: ``store.update(...)``."""

    last_dir: str = _key("", "Folder of the last photo or project opened or saved.")
    export_dir: str = _key("", "Folder of the last export (falls back to last_dir).")
    export_quality: int = _key(92, "JPEG/WebP export quality.", lo=1, hi=100)
    recent_projects: tuple[str, ...] = _key(
        (), "Recently used projects, newest first.", max_items=MAX_RECENT
    )
    model: str = _key("", "The model the next edit uses (empty: the default model).")
    recent_models: tuple[str, ...] = _key(
        (), "Recently used models, newest first.", max_items=MAX_RECENT
    )
    vae: str = _key("", "The VAE the next edit uses instead of the model's own (empty: its own).")
    keep_photo_lora: bool = _key(True, "Dragging a result again keeps the photo's LoRA.")
    drag_quality: str = _key(
        "final",
        "Preview (small working width, fewer DDIM steps) or Final (as set) for the next drag.",
        choices=("preview", "final"),
    )
    lora_cache_limit_gb: float = _key(4.0, "Size limit of the LoRA cache, in GiB.", lo=0.1, hi=1000)
    device: str = _key("auto", "Where the engine runs.", choices=DEVICES)
    memory: str = _key(
        "auto",
        "GPU memory plan (backend/memory.py): auto picks from the free memory; high, 8gb, 6gb.",
        choices=MEMORY_PLANS,
    )
    prepare_in_background: bool = _key(
        True,
        "Train the LoRA and invert the photo while points are placed, so Drag starts at once "
        "(turn off on battery).",
    )
    model_config: str = _key(
        "",
        "For a single-file (.safetensors) model: diffusers folder or hub id of its base model, "
        "whose configs and tokenizer it uses (empty: Stable Diffusion 1.5).",
    )
    engine: str = _key(
        "local", "Where drags run: this computer, or a DragStudio server.", choices=ENGINES
    )
    server_url: str = _key(
        "", "The DragStudio server's address (ws:// or wss://); its token is kept apart, "
        "owner-only, in server_token beside this file."
    )  # fmt: skip


REGISTRY: dict[str, Key] = {f.name: f.metadata["key"] for f in fields(Settings)}
"""Every preference by name."""


def _default(name: str) -> Any:
    return Settings.__dataclass_fields__[name].default


def check_value(name: str, value: Any) -> Any:
    """``value`` as the type ``name`` needs; ``ValueError`` saying why it does not fit."""
    if name not in REGISTRY:
        raise ValueError(f"unknown setting {name!r}")
    key, default = REGISTRY[name], _default(name)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}"[:200])
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}"[:200])
        if isinstance(default, int) and not isinstance(value, int):
            raise ValueError(f"{name}: expected a whole number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if key.lo is not None and key.hi is not None and not key.lo <= value <= key.hi:
            raise ValueError(f"{name}: must be between {key.lo:g} and {key.hi:g}")
        return type(default)(value)
    if isinstance(default, str):
        if not isinstance(value, str) or len(value) > 4096:
            raise ValueError(f"{name}: expected text, got {type(value).__name__}")
        if key.choices and value not in key.choices:
            raise ValueError(f"{name}: expected one of {', '.join(key.choices)}, got {value!r}")
        return value
    ok = isinstance(value, (list, tuple))
    if not ok or not all(isinstance(v, str) and len(v) <= 4096 for v in value):
        raise ValueError(f"{name}: expected a list of text")
    return tuple(dict.fromkeys(value))[: key.max_items]  # no duplicates, newest first


# ---------------------------------------------------------------------------------------------
# Migrations: version n's dictionary -> version n + 1's


def _from_qsettings(old: dict[str, Any]) -> dict[str, Any]:
    """Version 0: the raw QSettings keys (values may be strings: INI files keep no types)."""

    def text_list(v: Any) -> Any:
        return [v] if isinstance(v, str) and v else v

    def boolean(v: Any) -> Any:
        return {"true": True, "false": False}.get(v, v) if isinstance(v, str) else v

    def number(kind: type) -> Callable[[Any], Any]:
        def convert(v: Any) -> Any:
            try:
                return kind(v) if isinstance(v, str) else v
            except ValueError:
                return v

        return convert

    table: dict[str, tuple[str, Callable[[Any], Any]]] = {
        "paths/last_dir": ("last_dir", str),
        "paths/export_dir": ("export_dir", str),
        "export/quality": ("export_quality", number(int)),
        "recent/projects": ("recent_projects", text_list),
        "model/current": ("model", str),
        "model/recent": ("recent_models", text_list),
        "drag/keep_photo_lora": ("keep_photo_lora", boolean),
        "lora_cache/limit_gb": ("lora_cache_limit_gb", number(float)),
    }
    new: dict[str, Any] = {}
    for old_key, (name, convert) in table.items():
        if old.get(old_key) is not None:
            new[name] = convert(old[old_key])
    return new


LEGACY_QSETTINGS_KEYS = (
    "paths/last_dir", "paths/export_dir", "export/quality", "recent/projects", "model/current",
    "model/recent", "drag/keep_photo_lora", "lora_cache/limit_gb",
)  # fmt: skip
"""The keys version 0 read from QSettings (the GUI hands their values to :func:`migrate`)."""

MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _from_qsettings}
"""``MIGRATIONS[n]`` turns version ``n`` data into version ``n + 1`` data."""


def migrate(data: dict[str, Any], version: int) -> dict[str, Any]:
    """Lift ``data`` of schema ``version`` to :data:`SCHEMA_VERSION`."""
    for v in range(version, SCHEMA_VERSION):
        data = MIGRATIONS[v](data)
    return data


def from_dict(data: dict[str, Any]) -> tuple[Settings, list[str]]:
    """Settings from current-version data: bad or unknown keys dropped, each with a warning."""
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for name, value in data.items():
        if name == "version":
            continue
        try:
            values[name] = check_value(name, value)
        except ValueError as exc:
            warnings.append(f"ignored setting: {exc}")
    return Settings(**values), warnings


def to_dict(settings: Settings) -> dict[str, Any]:
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    return {"version": SCHEMA_VERSION, **data}


def config_dir() -> Path:
    """The platform's user config folder, or ``$DRAGSTUDIO_CONFIG_DIR`` (tests, portable)."""
    override = os.environ.get("DRAGSTUDIO_CONFIG_DIR")
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("DragStudio", appauthor=False))


class SettingsStore:
    """The settings file: read once, written (atomically) on every :meth:`update`."""

    def __init__(self, path: Path | None = None, *, legacy: dict[str, Any] | None = None) -> None:
        """``legacy``: version-0 values (old QSettings keys), used only when no file exists."""
        self.path = path if path is not None else config_dir() / FILE_NAME
        self.warnings: list[str] = []
        self.settings = self._read(legacy)

    def _read(self, legacy: dict[str, Any] | None) -> Settings:
        if not self.path.exists():
            if not legacy:
                return Settings()
            settings, self.warnings = from_dict(migrate(dict(legacy), 0))
            self._write(settings)
            return settings
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError("the file is too large")
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            version = data.get("version", SCHEMA_VERSION)
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise ValueError(f"bad version {version!r}"[:80])
        except (OSError, ValueError, RecursionError) as exc:
            self._warn(f"cannot read {self.path} ({exc}); using the defaults")
            return Settings()
        if version > SCHEMA_VERSION:  # a newer DragStudio wrote it: read what we know
            self._warn(f"{self.path.name} is from a newer DragStudio; unknown keys are ignored")
            data = {k: v for k, v in data.items() if k in REGISTRY}
        settings, problems = from_dict(migrate(data, min(version, SCHEMA_VERSION)))
        for problem in problems:
            self._warn(f"{self.path.name}: {problem}")
        return settings

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)

    def _write(self, settings: Settings) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(to_dict(settings), indent=1) + "\n")
        except OSError as exc:  # a read-only config folder loses preferences, not work
            self._warn(f"cannot save settings to {self.path}: {exc.strerror or exc}")

    def get(self, name: str) -> Any:
        return getattr(self.settings, name)

    def update(self, **changes: Any) -> Settings:
        """Set and save preferences; ``ValueError`` (nothing changed) if one does not fit."""
        checked = {name: check_value(name, value) for name, value in changes.items()}
        self.settings = replace(self.settings, **checked)
        self._write(self.settings)
        return self.settings

    def push_recent(self, name: str, item: str) -> list[str]:
        """Put ``item`` first in the list preference ``name`` (deduplicated, bounded)."""
        items = [item, *(i for i in self.get(name) if i != item)]
        self.update(**{name: items})
        return list(self.get(name))
