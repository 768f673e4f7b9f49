"""Build DragStudio as a one-folder desktop app in ``dist/DragStudio/`` with PyInstaller.

One command per step, so a release is the same on every machine::

    python packaging/build.py              # icons, PyInstaller, Linux desktop files (minutes)
    python packaging/build.py --check      # the built app: --version, then --self-test
    python packaging/build.py --icons DIR  # only render the icons (PNG 16..512, .ico, .icns)
    python packaging/build.py --install ~/.local   # Linux: install the built app for one user

The build itself is: render ``resources/dragstudio.svg`` to PNG icons with Qt (plus ``.ico``
for Windows and ``.icns`` for macOS, written by Pillow), run ``packaging/dragstudio.spec``, then
lay the freedesktop files (``.desktop`` entry, AppStream metainfo, MIME type, hicolor icons)
under ``dist/DragStudio/share/`` so ``--install`` or a distro package can copy them as they
are. Timings and sizes are in ``docs/packaging.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
LINUX = PACKAGING / "linux"
SPEC = PACKAGING / "dragstudio.spec"
SVG = ROOT / "resources" / "dragstudio.svg"
DIST = ROOT / "dist"
WORK = ROOT / "build" / "pyinstaller"
ICON_DIR = ROOT / "build" / "icons"
NAME = "DragStudio"
APP = DIST / NAME
EXE = APP / (f"{NAME}.exe" if sys.platform == "win32" else NAME)
APP_ID = "io.github.dragstudio.DragStudio"
# The freedesktop icon theme sizes; 16..256 also go into the Windows .ico.
ICON_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
# Files from packaging/linux/ and where they go under a prefix's share/.
LINUX_FILES = {
    "dragstudio.desktop": "applications/dragstudio.desktop",
    f"{APP_ID}.metainfo.xml": f"metainfo/{APP_ID}.metainfo.xml",
    "dragstudio-mime.xml": "mime/packages/dragstudio.xml",
}


def version() -> str:
    """The version the app prints (``backend.__version__``), read without importing the engine."""
    for line in (ROOT / "backend" / "__init__.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("no __version__ in backend/__init__.py")


def render_icons(
    out_dir: Path, svg: Path = SVG, sizes: tuple[int, ...] = ICON_SIZES
) -> dict[int, Path]:
    """Render the SVG to ``dragstudio-<n>.png`` at each size with Qt's own SVG renderer.

    Qt draws the icon the same way at runtime, so the PNGs match what the window shows; no
    Inkscape or rsvg is needed on the build machine.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([sys.argv[0]])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise RuntimeError(f"{svg} is not a valid SVG")
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[int, Path] = {}
    for size in sizes:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        path = out_dir / f"dragstudio-{size}.png"
        if not image.save(str(path), "PNG"):
            raise RuntimeError(f"could not write {path}")
        pngs[size] = path
    return pngs


def write_platform_icons(pngs: dict[int, Path], out_dir: Path) -> tuple[Path, Path]:
    """``dragstudio.ico`` (Windows, 16..256) and ``dragstudio.icns`` (macOS, 16..1024), via Pillow.

    The .icns wants a 1024 px image for 512@2x, rendered here rather than upscaled.
    """
    from PIL import Image

    ico, icns = out_dir / "dragstudio.ico", out_dir / "dragstudio.icns"
    with Image.open(pngs[max(pngs)]) as big:
        big.save(ico, format="ICO", sizes=[(s, s) for s in ICO_SIZES if s <= max(pngs)])
    huge = render_icons(out_dir, sizes=(1024,))[1024]
    with Image.open(huge) as image:
        image.save(icns, format="ICNS")
    huge.unlink()
    return ico, icns


def make_icons(out_dir: Path) -> dict[int, Path]:
    """All icons a build needs, in ``out_dir``: the theme PNGs (returned), .ico and .icns."""
    pngs = render_icons(out_dir)
    write_platform_icons(pngs, out_dir)
    return pngs


def stage_share(share: Path, pngs: dict[int, Path]) -> None:
    """Lay out the freedesktop files as ``<prefix>/share`` wants them."""
    for src, dest in LINUX_FILES.items():
        target = share / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(LINUX / src, target)
    for size, png in pngs.items():
        target = share / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "dragstudio.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, target)
    scalable = share / "icons" / "hicolor" / "scalable" / "apps" / "dragstudio.svg"
    scalable.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(SVG, scalable)


def folder_size(path: Path) -> int:
    """Bytes on disk of the files under ``path`` (links not followed)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build(clean: bool) -> int:
    """Icons, PyInstaller, desktop files; prints and records the time and size."""
    start = time.perf_counter()
    pngs = make_icons(ICON_DIR)
    env = dict(os.environ, DRAGSTUDIO_ICON_DIR=str(ICON_DIR), DRAGSTUDIO_VERSION=version())
    cmd = [sys.executable, "-m", "PyInstaller", str(SPEC), "--noconfirm", "--log-level=WARN"]
    cmd += ["--distpath", str(DIST), "--workpath", str(WORK)]
    if clean:
        cmd.append("--clean")
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        print(f"PyInstaller failed with status {done.returncode}", file=sys.stderr)
        return done.returncode
    if sys.platform.startswith("linux"):
        stage_share(APP / "share", pngs)
    seconds = time.perf_counter() - start
    size = folder_size(APP)
    report = {
        "seconds": round(seconds, 1),
        "bytes": size,
        "files": sum(p.is_file() for p in APP.rglob("*")),
    }
    (ROOT / "build" / "packaging-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"built {APP} in {seconds / 60:.1f} min: {size / 2**20:.0f} MiB, {report['files']} files")
    return 0


def check(timeout: float) -> int:
    """Run the frozen app: ``--version`` must print the version, ``--self-test`` must pass."""
    if not EXE.exists():
        print(f"{EXE} does not exist: run `python packaging/build.py` first", file=sys.stderr)
        return 2
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    expected = f"{NAME} {version()}"
    out = subprocess.run(
        [str(EXE), "--version"], capture_output=True, text=True, env=env, timeout=120
    )
    ok_version = out.returncode == 0 and out.stdout.strip() == expected
    print(
        f"{'ok  ' if ok_version else 'FAIL'} --version: {out.stdout.strip()!r} (want {expected!r})"
    )
    if not ok_version:
        print(out.stderr[-4000:], file=sys.stderr)
    start = time.perf_counter()
    test = subprocess.run([str(EXE), "--self-test"], env=env, timeout=timeout, check=False)
    seconds = time.perf_counter() - start
    ok_test = test.returncode == 0
    print(
        f"{'ok  ' if ok_test else 'FAIL'} --self-test: status {test.returncode} in {seconds:.0f} s"
    )
    return 0 if ok_version and ok_test else 1


def install(prefix: Path) -> int:
    """Copy the built app to ``<prefix>/lib/dragstudio`` and register it with the desktop."""
    if not sys.platform.startswith("linux"):
        print(
            "--install is for Linux; see docs/packaging.md for Windows and macOS", file=sys.stderr
        )
        return 2
    if not (APP / "share").is_dir():
        print(f"{APP} is not built: run `python packaging/build.py` first", file=sys.stderr)
        return 2
    lib, bin_dir, share = prefix / "lib" / "dragstudio", prefix / "bin", prefix / "share"
    if lib.exists():
        shutil.rmtree(lib)
    shutil.copytree(APP, lib, symlinks=True, ignore=shutil.ignore_patterns("share"))
    shutil.copytree(APP / "share", share, dirs_exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "dragstudio"
    link.unlink(missing_ok=True)
    link.symlink_to(lib / NAME)
    for tool, arg in (
        ("update-mime-database", share / "mime"),
        ("update-desktop-database", share / "applications"),
        ("gtk-update-icon-cache", share / "icons" / "hicolor"),
    ):
        if shutil.which(tool):
            subprocess.run([tool, str(arg)], check=False, capture_output=True)
    print(f"installed to {lib}; `dragstudio` in {bin_dir} (make sure it is on PATH)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="test the built app and exit")
    group.add_argument("--icons", type=Path, metavar="DIR", help="only render the icons to DIR")
    group.add_argument("--install", type=Path, metavar="PREFIX", help="install the built app")
    parser.add_argument("--clean", action="store_true", help="empty PyInstaller's cache first")
    parser.add_argument("--timeout", type=float, default=900, help="self-test limit, seconds")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.timeout)
    if args.icons:
        pngs = make_icons(args.icons)
        print(f"wrote {len(pngs)} PNGs, dragstudio.ico and dragstudio.icns to {args.icons}")
        return 0
    if args.install:
        return install(args.install.expanduser())
    return build(args.clean)


if __name__ == "__main__":
    raise SystemExit(main())
