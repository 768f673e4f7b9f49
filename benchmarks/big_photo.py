"""Peak memory of the steps that touch a big photo's full-resolution pixels (48 MP by default).

The engine edits at its working size (512 wide); everything else — opening the file, the
document and its mask, the request, compositing the result back at the photo's own size,
export, project save — handles every pixel of the photo. This measures each of those steps on
a synthetic photo with the tiny random model, one process:

    MALLOC_MMAP_THRESHOLD_=65536 nice -n 19 python benchmarks/big_photo.py --size 8000x6000

A step's peak is the process's peak resident memory during it (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) above the resident memory before it, given in GB and as a multiple
of the photo's own bytes (W × H × 3). ``MALLOC_MMAP_THRESHOLD_`` makes glibc return freed
buffers at once, so one step's peak is not hidden in memory an earlier step kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.document import Document, Pair
from backend.engine import Engine
from backend.export import entry_record, export_image
from backend.imaging import restore_resolution
from backend.memory import GIB
from backend.project import Project, save_project
from backend.request import DragParams, LoraParams
from backend.session import history_entry
from backend.tiny import build_tiny_pipeline


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(
    name: str, step: Callable[[], Any], photo_bytes: int, rows: list[dict[str, Any]]
) -> Any:
    """Run ``step``; record its peak RSS above the RSS before it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = step()
    peak = (_status_kb("VmHWM") - before) * 1024
    row = {
        "step": name,
        "peak_above_gb": round(peak / GIB, 3),
        "x_photo": round(peak / photo_bytes, 2),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    rows.append(row)
    print(f"# {row}", file=sys.stderr, flush=True)
    return out


def synthetic_photo(width: int, height: int) -> np.ndarray:
    """Smooth colour fields, built a few rows at a time (the photo itself is the only copy)."""
    out = np.empty((height, width, 3), np.uint8)
    x = np.arange(width, dtype=np.float32)
    for y0 in range(0, height, 256):
        y = np.arange(y0, min(height, y0 + 256), dtype=np.float32)[:, None]
        out[y0 : y0 + len(y), :, 0] = 128 + 100 * np.sin(x / 97) * np.cos(y / 131)
        out[y0 : y0 + len(y), :, 1] = 128 + 90 * np.cos(x / 71 + y / 113)
        out[y0 : y0 + len(y), :, 2] = 128 + 80 * np.sin((x + y) / 211)
    return out


def run(width: int, height: int, folder: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    nbytes = width * height * 3
    photo = synthetic_photo(width, height)
    path = folder / "photo.jpg"
    Image.fromarray(photo).save(path, quality=90)
    del photo
    engine = Engine("cpu")
    engine.adopt_pipeline(build_tiny_pipeline(seed=0), "tiny")
    doc = Document()
    measure("open photo (JPEG decode, document)", lambda: doc.open(path), nbytes, rows)

    def paint() -> None:
        # An editable region of most of the photo: the worst case for compositing.
        doc.mask[height // 8 : height * 7 // 8, width // 8 : width * 7 // 8] = True
        doc.add_pair(Pair((width * 0.4, height * 0.5), (width * 0.55, height * 0.5)))

    measure("mask (3/4 of each side) and points", paint, nbytes, rows)
    params = replace(DragParams(), drag_steps=1, inference_steps=4, keep_unmasked_pixels=True)
    doc.set_params(params, replace(LoraParams(), steps=0))
    doc.set_model("tiny")
    request = measure("request (copies photo and mask)", doc.to_request, nbytes, rows)
    result = measure("edit, tiny model, 512 wide", lambda: engine.edit(request), nbytes, rows)
    working = result.working_image
    measure(
        "resize the 512-wide result to the photo's size",
        lambda: restore_resolution(working, request.image_size),
        nbytes,
        rows,
    )
    measure(
        "compose (resize + original outside the mask)",
        lambda: Engine._compose(request, working),
        nbytes,
        rows,
    )
    doc.accept_result(history_entry(request, request.image, result.image, result.trace))
    record = entry_record(doc.history[-1])
    image = result.image
    for fmt in ("jpg", "png"):
        measure(
            f"export {fmt.upper()}",
            lambda fmt=fmt: export_image(image, folder / f"out.{fmt}", record),
            nbytes,
            rows,
        )
    measure(
        "project save (photo, mask, one result)",
        lambda: save_project(Project.from_document(doc), folder / "p.dragstudio"),
        nbytes,
        rows,
    )
    return {
        "size": [width, height],
        "photo_gb": round(nbytes / GIB, 3),
        "edit_working_size": list(result.trace.working_size),
        "steps": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="8000x6000", help="W×H of the synthetic photo")
    p.add_argument("--json", type=Path, help="write the measurement here")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().replace("×", "x").split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        out = run(width, height, Path(tmp))
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
