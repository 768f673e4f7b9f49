"""Mutation fuzzer for project files: seeds (valid projects and known attacks) mutated at the
byte, zip-member, PNG-chunk and manifest level, each read by :func:`read_project`.

A case passes when the reader returns a project or raises :class:`ProjectError` with a one-line
message; anything else is an uncaught exception. The CI test runs 2,000 cases; the long run is

    nice -n 19 python -m tests.fuzz_projects --cases 20000

which prints the counts (uncaught exceptions, cases over 10 s, slowest case, peak memory).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend import project as bp
from backend.generation import Generation
from backend.project import Project, ProjectError, project_from_generation, read_project
from tests.project_helpers import sample_project

HANG_S = 10.0


# ---------------------------------------------------------------------------------------------
# Seeds


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            kind = zipfile.ZIP_DEFLATED if name == bp.MANIFEST else zipfile.ZIP_STORED
            zf.writestr(name, data, compress_type=kind)
    return buf.getvalue()


def _members(project: Project) -> dict[str, bytes]:
    return {name: data for name, data, _ in bp._members(project, 1)}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of zeros: a few hundred kilobytes that decode to gigabytes."""
    raw = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    body = b"".join(raw.compress(row) for _ in range(height)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )


POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 32\n{ } loop\n"
"""The 69-byte kind of file that made Ghostscript spin when Pillow guessed the format."""


def _with_manifest(members: dict[str, bytes], change: Any) -> dict[str, bytes]:
    manifest = json.loads(members[bp.MANIFEST])
    change(manifest)
    return {**members, bp.MANIFEST: json.dumps(manifest).encode()}


def _generated() -> Project:
    rng = np.random.default_rng(5)
    g = Generation(prompt="a red ball", negative_prompt="", seed=3, width=64, height=72,
                   guidance_scale=4.5, steps=3,
                   trajectory=rng.standard_normal((4, 4, 9, 8)).astype(np.float32))  # fmt: skip
    image = rng.integers(0, 256, (72, 64, 3), np.uint8)
    return project_from_generation(image, g, "tiny")


@functools.cache
def corpus() -> dict[str, bytes]:
    """Valid projects and one file per known attack (issue 13), as zip bytes."""
    full = _members(sample_project())
    plain = _members(sample_project(with_lora=False))
    lora_name = bp.LORA
    lying = bytearray(full[lora_name])
    lying[lying.find(b"[4,8]") : lying.find(b"[4,8]") + 5] = b"[8,8]"
    seeds = {
        "full": full,
        "plain": plain,
        "generated": _members(_generated()),
        "postscript image": {**plain, bp.IMAGE: POSTSCRIPT},
        "postscript result": {**plain, "results/0001.png": POSTSCRIPT},
        "bomb image": _with_manifest(
            {**plain, bp.IMAGE: bomb_png(16000, 11000)},
            lambda m: m["image"].update(width=16000, height=11000),
        ),
        "bomb history": _with_manifest(
            {
                **plain,
                **{f"results/{n:04d}.png": bomb_png(5000, 5000) for n in (1, 2)},
                bp.IMAGE: bomb_png(4000, 4000),
            },
            lambda m: m["image"].update(width=5000, height=5000),
        ),
        "lone surrogate": _with_manifest(plain, lambda m: m.update(prompt="\ud800")),
        "surrogate in history": _with_manifest(
            plain, lambda m: m["history"][0].update(prompt="a\udfffb")
        ),
        "huge integer": _with_manifest(plain, lambda m: m["params"].update(drag_steps=10**400)),
        "huge float point": _with_manifest(
            plain, lambda m: m["pairs"][0].update(handle=[10**400, 1])
        ),
        "lying lora": {**full, lora_name: bytes(lying)},
        "tall strip": _with_manifest(
            {**plain, bp.IMAGE: _png(np.zeros((9999, 17, 3), np.uint8))},
            lambda m: m["image"].update(width=17, height=9999),
        ),
    }
    return {name: _zip(members) for name, members in seeds.items()}


# ---------------------------------------------------------------------------------------------
# Mutations


def _mutate_bytes(rng: random.Random, blob: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        if not blob:
            return
        i = rng.randrange(len(blob))
        op = rng.random()
        if op < 0.6:
            blob[i] = rng.randrange(256)
        elif op < 0.8:
            blob[i : i + rng.randint(1, 64)] = b""
        else:
            blob[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))


INTERESTING: list[Any] = [
    None, True, 0, -1, 1, 2**31, 2**63, 10**400, -(10**400), 1e308, -1e-308, "", "x" * 5000,
    "\ud800", "\U0001f600", [], {}, [[[[]]]], [0] * 3, {"a": 1}, "../../etc/passwd",
]  # fmt: skip


def _mutate_json(rng: random.Random, value: Any, depth: int = 0) -> Any:
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        out = dict(value)
        if rng.random() < 0.15:
            del out[key]
        else:
            out[key] = _mutate_json(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        op = rng.random()
        if op < 0.15:
            del out_list[i]
        elif op < 0.3:
            out_list.extend(out_list[i:] * rng.randint(1, 3))
        else:
            out_list[i] = _mutate_json(rng, out_list[i], depth + 1)
        return out_list
    return rng.choice(INTERESTING)


def _mutate_png(rng: random.Random, data: bytes) -> bytes:
    """Change IHDR (size, depth, colour type) with a correct CRC, so the decoder believes it."""
    if not data.startswith(b"\x89PNG") or len(data) < 33:
        return data
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    choice = rng.random()
    if choice < 0.4:
        w, h = rng.choice([(w * 1000, h), (w, h * 1000), (65535, 65535), (0, h), (2**31 - 1, 1)])
    elif choice < 0.7:
        depth = rng.choice([1, 2, 4, 8, 16, 7])
    else:
        colour = rng.choice([0, 2, 3, 4, 6, 5])
    body = struct.pack(">IIBB", w, h, depth, colour) + data[26:29]
    return data[:8] + _chunk(b"IHDR", body) + data[33:]


def mutate(rng: random.Random, seed: bytes) -> bytes:
    """One mutated file from ``seed``: at the byte, member, PNG or manifest level."""
    level = rng.random()
    if level < 0.35:
        blob = bytearray(seed)
        if rng.random() < 0.2:
            blob = blob[: rng.randrange(len(blob) + 1)]
        _mutate_bytes(rng, blob)
        return bytes(blob)
    try:
        with zipfile.ZipFile(io.BytesIO(seed)) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
    except Exception:
        return seed
    names = list(members)
    if level < 0.6 and bp.MANIFEST in members:
        try:
            manifest = json.loads(members[bp.MANIFEST])
        except ValueError:
            return seed
        for _ in range(rng.randint(1, 3)):
            manifest = _mutate_json(rng, manifest)
        text = json.dumps(manifest, ensure_ascii=rng.random() < 0.5)
        members[bp.MANIFEST] = text.encode("utf-8", "surrogatepass")
    elif level < 0.8:
        pngs = [n for n in names if n.endswith(".png")]
        if pngs:
            name = rng.choice(pngs)
            members[name] = _mutate_png(rng, members[name])
    else:
        name = rng.choice(names)
        op = rng.random()
        if op < 0.3:
            del members[name]
        elif op < 0.6:
            blob = bytearray(members[name])
            _mutate_bytes(rng, blob)
            members[name] = bytes(blob)
        elif op < 0.8:
            other = rng.choice(names)
            members[name] = members[other]
        else:
            members[rng.choice(["results/0007.png", "lora/adapter.safetensors", "mask.png"])] = (
                members[name]
            )
    return _zip(members)


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class Stats:
    cases: int = 0
    opened: int = 0
    refused: int = 0
    uncaught: list[str] = field(default_factory=list)
    hangs: int = 0
    slowest_s: float = 0.0
    peak_rss_mb: float = 0.0

    def line(self) -> str:
        return (
            f"{self.cases} cases: {self.opened} opened, {self.refused} refused, "
            f"{len(self.uncaught)} uncaught exceptions, {self.hangs} over {HANG_S:g} s "
            f"(slowest {self.slowest_s:.2f} s), peak memory {self.peak_rss_mb:.0f} MB"
        )


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to this program image;
    ``ru_maxrss`` would include a forking parent's (pytest's) peak, which survives exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def check_one(data: bytes, folder: Path) -> str:
    """``"opened"`` or ``"refused"``; raises on anything the reader should not do."""
    path = folder / "case.dragstudio"
    path.write_bytes(data)
    try:
        read_project(path)
    except ProjectError as exc:
        message = str(exc)
        if not message or "\n" in message:
            raise AssertionError(f"a refusal without a one-line reason: {message!r}") from None
        return "refused"
    return "opened"


def run(cases: int, seed: int = 0, folder: Path | None = None, log: Any = None) -> Stats:
    rng = random.Random(seed)
    seeds = corpus()
    names = sorted(seeds)
    stats = Stats()
    with tempfile.TemporaryDirectory() as tmp:
        work = folder or Path(tmp)
        for n in range(cases):
            # The seeds themselves first, then mutations of random seeds.
            data = seeds[names[n]] if n < len(names) else mutate(rng, seeds[rng.choice(names)])
            start = time.perf_counter()
            try:
                outcome = check_one(data, work)
            except Exception:
                stats.uncaught.append(traceback.format_exc(limit=4))
                outcome = "uncaught"
            seconds = time.perf_counter() - start
            stats.cases += 1
            stats.opened += outcome == "opened"
            stats.refused += outcome == "refused"
            stats.hangs += seconds > HANG_S
            stats.slowest_s = max(stats.slowest_s, seconds)
            if log is not None and (n + 1) % 1000 == 0:
                stats.peak_rss_mb = _peak_rss_mb()
                print(stats.line(), file=log, flush=True)
    stats.peak_rss_mb = _peak_rss_mb()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz the project reader.")
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.time()
    stats = run(args.cases, args.seed, log=sys.stdout)
    print(stats.line() + f"; {time.time() - start:.0f} s in all", flush=True)
    for text in stats.uncaught[:5]:
        print(text, file=sys.stderr)
    ok = not stats.uncaught and not stats.hangs and stats.peak_rss_mb < 1024
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
