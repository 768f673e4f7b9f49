"""The server's access token: made once, stored owner-only, compared in constant time."""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from backend.errors import DragStudioError


def default_token_file() -> Path:
    override = os.environ.get("DRAGSTUDIO_DATA_DIR")
    if override:
        return Path(override) / "server" / "token"
    from platformdirs import user_config_dir

    return Path(user_config_dir("DragStudio", appauthor=False)) / "server" / "token"


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """``(token, created)``. A new token is written with mode 0600 (never readable by others);
    an existing file that others can read is refused rather than trusted."""
    path = Path(path)
    if path.exists():
        mode = path.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DragStudioError(
                f"{path} is readable by other users; run `chmod 600 {path}` or delete it to "
                "make a new token"
            )
        token = path.read_text().strip()
        if len(token) < 16:
            raise DragStudioError(f"{path} holds no usable token; delete it to make a new one")
        return token, False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def token_matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def bearer(header: str | None) -> str:
    """The token in an ``Authorization: Bearer …`` header ('' when absent or malformed)."""
    if not header or not header.startswith("Bearer "):
        return ""
    return header[len("Bearer ") :].strip()


def write_private(path: Path, text: str) -> None:
    """Write a secret (a client's copy of a server token) readable by its owner only, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_private(path: Path) -> str:
    """A secret written by :func:`write_private` ('' when there is none or it cannot be read)."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""
