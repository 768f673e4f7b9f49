"""Packaging files parse and agree with each other; icons render. The frozen build is opt-in.

The cheap tests catch what breaks a desktop install silently (a typo in the .desktop entry, a
MIME type the entry and the MIME XML spell differently, a release the metainfo forgot); the
build itself takes minutes, so it runs by hand: ``python packaging/build.py`` then
``python packaging/build.py --check``, or ``DRAGSTUDIO_TEST_FROZEN=1 pytest -m slow
tests/test_packaging.py`` to check an existing build from pytest.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from backend import __version__

ROOT = Path(__file__).resolve().parent.parent
LINUX = ROOT / "packaging" / "linux"
APP_ID = "io.github.dragstudio.DragStudio"
MIME = "{http://www.freedesktop.org/standards/shared-mime-info}"


@pytest.fixture(scope="module")
def build() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dragstudio_build", ROOT / "packaging" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(LINUX / "dragstudio.desktop", encoding="utf-8")
    return parser["Desktop Entry"]


def test_spec_is_python_and_bundles_the_resources() -> None:
    source = (ROOT / "packaging" / "dragstudio.spec").read_text(encoding="utf-8")
    ast.parse(source)
    assert '"resources"), "resources")' in source  # where dragstudio.resources looks in a bundle
    assert "name=NAME" in source and 'NAME = "DragStudio"' in source


def test_version_matches_the_engine(build: ModuleType) -> None:
    assert build.version() == __version__


def test_desktop_entry() -> None:
    entry = desktop_entry()
    assert entry["Type"] == "Application" and entry["Name"] == "DragStudio"
    assert entry["Icon"] == "dragstudio" and entry["Exec"].split()[0] == "dragstudio"
    mimes = [m for m in entry["MimeType"].split(";") if m]
    assert mimes == ["application/x-dragstudio", "image/png", "image/jpeg"]
    # Qt maps windows to the entry by this name; a mismatch loses the taskbar icon on Wayland.
    assert 'setDesktopFileName("dragstudio")' in (ROOT / "dragstudio" / "app.py").read_text()


def test_mime_type_matches_the_desktop_entry() -> None:
    root = ET.parse(LINUX / "dragstudio-mime.xml").getroot()
    (mime_type,) = root.findall(f"{MIME}mime-type")
    assert mime_type.get("type") in desktop_entry()["MimeType"].split(";")
    assert [g.get("pattern") for g in mime_type.findall(f"{MIME}glob")] == ["*.dragstudio"]
    assert mime_type.find(f"{MIME}sub-class-of").get("type") == "application/zip"  # type: ignore[union-attr]


def test_metainfo() -> None:
    root = ET.parse(LINUX / f"{APP_ID}.metainfo.xml").getroot()
    assert root.get("type") == "desktop-application"
    assert root.findtext("id") == APP_ID
    assert root.findtext("launchable") == "dragstudio.desktop"
    assert root.find("releases/release").get("version") == __version__  # type: ignore[union-attr]
    assert root.findtext("provides/mediatype") == "application/x-dragstudio"


@pytest.mark.skipif(not shutil.which("appstreamcli"), reason="appstreamcli not installed")
def test_metainfo_validates() -> None:
    path = LINUX / f"{APP_ID}.metainfo.xml"
    done = subprocess.run(
        ["appstreamcli", "validate", "--no-net", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not shutil.which("desktop-file-validate"), reason="desktop-file-utils absent")
def test_desktop_entry_validates() -> None:
    path = LINUX / "dragstudio.desktop"
    done = subprocess.run(["desktop-file-validate", str(path)], capture_output=True, text=True)
    assert "error" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_icons_render_at_every_size(build: ModuleType, qapp: object, tmp_path: Path) -> None:
    from PIL import Image

    pngs = build.make_icons(tmp_path)
    assert sorted(pngs) == sorted(build.ICON_SIZES)
    for size, path in pngs.items():
        with Image.open(path) as image:
            assert image.size == (size, size) and image.mode == "RGBA"
            alpha = image.getchannel("A")
            assert alpha.getextrema()[1] == 255  # something drawn, not a blank square
    with Image.open(tmp_path / "dragstudio.ico") as ico:
        assert (256, 256) in ico.info["sizes"] and (16, 16) in ico.info["sizes"]
    assert (tmp_path / "dragstudio.icns").read_bytes()[:4] == b"icns"


def test_share_layout(build: ModuleType, qapp: object, tmp_path: Path) -> None:
    pngs = build.render_icons(tmp_path / "icons", sizes=(16, 48))
    build.stage_share(tmp_path / "share", pngs)
    share = tmp_path / "share"
    assert (share / "applications" / "dragstudio.desktop").is_file()
    assert (share / "metainfo" / f"{APP_ID}.metainfo.xml").is_file()
    assert (share / "mime" / "packages" / "dragstudio.xml").is_file()
    assert (share / "icons" / "hicolor" / "48x48" / "apps" / "dragstudio.png").is_file()
    assert (share / "icons" / "hicolor" / "scalable" / "apps" / "dragstudio.svg").is_file()


def test_resources_found_inside_a_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dragstudio.resources import resources_dir

    assert (resources_dir() / "style.qss").is_file()
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert resources_dir() == tmp_path / "resources"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DRAGSTUDIO_TEST_FROZEN") != "1",
    reason="set DRAGSTUDIO_TEST_FROZEN=1 after `python packaging/build.py` to test the build",
)
def test_frozen_app(build: ModuleType) -> None:
    """The built app prints its version and passes its own self-test (about a minute)."""
    assert build.EXE.exists(), "run `python packaging/build.py` first"
    assert build.check(timeout=900) == 0
