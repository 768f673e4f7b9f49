"""The resumable benchmark loop: edit every case, then score every finished one.

Each case's folder in the results gets ``dragged_image.png`` and then ``trace.json``, both written
atomically; the trace is written last and is the mark of a finished case, so an interrupted case
(image but no trace, or nothing) is redone and a finished one is skipped. A results folder belongs
to one set of settings: resuming with others is refused rather than mixing them in one table.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from backend.atomicio import write_atomic
from backend.bench.formats import EDITED_NAME, Case
from backend.errors import Cancelled, DragStudioError, InvalidRequest
from backend.methods import PAPER, GoodDragParams
from backend.request import DragParams, DragRequest, LoraParams, PointPair, params_to_dict
from backend.speed_presets import PAPER_SPEED

TRACE_NAME = "trace.json"
FAILED_NAME = "failed.json"
RUN_NAME = "bench.json"

Log = Callable[[str], None]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the whole new one."""
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class BenchConfig:
    """What the edits depend on; a results folder holds edits made with one config only."""

    model: str
    params: DragParams
    lora: LoraParams
    device: str = "auto"
    method: str = PAPER
    gooddrag: GoodDragParams = field(default_factory=GoodDragParams)
    speed: str = PAPER_SPEED

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "params": params_to_dict(self.params),
            "lora": params_to_dict(self.lora),
        }
        if self.method != PAPER:  # paper results folders keep the settings they always had
            out["method"] = self.method
            out["gooddrag"] = params_to_dict(self.gooddrag)
        if self.speed != PAPER_SPEED:  # likewise paper-speed folders
            out["speed"] = self.speed
        return out


def _clamped(pairs: tuple[PointPair, ...], size: tuple[int, int]) -> tuple[PointPair, ...]:
    """Points nudged inside the image: annotations on the last pixel's far edge (x = W) exist."""
    from backend.document import clamp_point

    return tuple(PointPair(clamp_point(p.handle, size), clamp_point(p.target, size)) for p in pairs)


def is_finished(case_dir: Path) -> bool:
    return (case_dir / EDITED_NAME).is_file() and read_json(case_dir / TRACE_NAME) is not None


def _check_run(out: Path, config: BenchConfig, data: Path) -> None:
    settings = config.settings()
    previous = read_json(out / RUN_NAME)
    if previous is not None and previous.get("settings") != settings:
        raise InvalidRequest(
            f"{out} holds results made with other settings ({out / RUN_NAME}); use another --out "
            "or the same settings to resume"
        )
    if previous is None:
        write_json(out / RUN_NAME, {"settings": settings, "data": str(data)})


def run_edits(
    cases: Sequence[Case],
    data: Path,
    out: Path,
    config: BenchConfig,
    log: Log = lambda _m: None,
    engine: Any = None,
) -> dict[str, int]:
    """Edit every unfinished case into ``out``; return counts of edited, skipped and failed.

    A case that fails (a mask of the wrong size, an engine error) gets ``failed.json`` with the
    reason and the loop goes on; it is tried again on the next run.
    """
    from backend.document import load_image
    from backend.engine import Engine, save_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_run(out, config, data)
    counts = {"edited": 0, "skipped": 0, "failed": 0}
    for n, case in enumerate(cases, 1):
        case_dir = out / case.relpath
        if is_finished(case_dir):
            counts["skipped"] += 1
            continue
        case_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (case_dir / TRACE_NAME).unlink()
        if engine is None:
            engine = Engine(config.device, lora_cache=None)
        start = time.perf_counter()
        try:
            image = load_image(case.image_path)
            size = (image.shape[1], image.shape[0])
            pairs = _clamped(case.pairs, size)
            request = DragRequest(
                image=image,
                pairs=pairs,
                mask=case.mask,
                prompt=case.prompt,
                params=config.params,
                lora=config.lora,
                model=config.model,
                method=config.method,
                gooddrag=config.gooddrag,
                speed=config.speed,
            )
            result = engine.edit(request)
        except Cancelled:
            raise
        except Exception as exc:  # one bad case must not end a 205-case run
            engine.release_memory()
            counts["failed"] += 1
            write_json(case_dir / FAILED_NAME, {"error": f"{type(exc).__name__}: {exc}"})
            log(f"[{n}/{len(cases)}] {case.relpath}: FAILED: {exc}")
            continue
        save_image(result.image, case_dir / EDITED_NAME)
        trace = result.trace.to_dict()
        trace["case"] = case.relpath
        trace["clamped_points"] = pairs != case.pairs
        trace["bench_settings"] = config.settings()
        with contextlib.suppress(FileNotFoundError):
            (case_dir / FAILED_NAME).unlink()
        write_json(case_dir / TRACE_NAME, trace)  # last: marks the case finished
        counts["edited"] += 1
        log(
            f"[{n}/{len(cases)}] {case.relpath}: {time.perf_counter() - start:.1f} s, handles end "
            + ", ".join(f"{d:.1f}" for d in trace["final_distances"])
            + " px from targets"
        )
    return counts


@dataclass
class Scorers:
    """The metric networks, or why each is unavailable."""

    lpips: Any = None
    lpips_reason: str = ""
    dift: Any = None
    dift_reason: str = ""
    dift_model: str = ""
    lpips_source: str = ""


def load_scorers(
    dift_model: str | None,
    lpips_weights: Path | None,
    device: torch.device,
    *,
    dift_seed: int = 0,
) -> Scorers:
    """Load both metric networks; a missing one is recorded with the reason, not guessed."""
    from backend.bench.dift import DEFAULT_DIFT_MODEL, DiftFeaturizer
    from backend.bench.lpips import WeightsUnavailable, load_lpips
    from backend.models import free_memory

    free_memory(device)  # the editing model is gone by now; give its memory back for SD 2.1
    s = Scorers(dift_model=dift_model or DEFAULT_DIFT_MODEL)
    try:
        s.lpips = load_lpips(lpips_weights, device)
        s.lpips_source = str(lpips_weights) if lpips_weights else "default locations"
    except WeightsUnavailable as exc:
        s.lpips_reason = str(exc)
    try:
        s.dift = DiftFeaturizer.load(s.dift_model, device, seed=dift_seed)
    except (DragStudioError, OSError, ValueError) as exc:
        s.dift_reason = f"DIFT model {s.dift_model} unavailable: {exc}"
    return s


def score_case(case: Case, edited_path: Path, scorers: Scorers) -> dict[str, Any]:
    """Metrics of one edited image against its case (None where a metric is unavailable)."""
    from backend.bench.dai import dai_all
    from backend.bench.metrics import drag_distances, image_fidelity, unmasked_kept
    from backend.document import load_image

    source = load_image(case.image_path)
    edited = load_image(edited_path)
    rec: dict[str, Any] = {
        "unmasked_kept": unmasked_kept(source, edited, case.mask),
        "edited_size": [edited.shape[1], edited.shape[0]],
        "dai": dai_all(source, edited, case.pairs),
    }
    if scorers.lpips is not None:
        rec["image_fidelity"] = image_fidelity(scorers.lpips, source, edited)
    if scorers.dift is not None:
        res = drag_distances(scorers.dift, source, edited, case.pairs, case.prompt)
        rec["final_handles"] = [list(p) for p in res.final_handles]
        rec["distances"] = res.distances
    return rec


def score(
    cases: Sequence[Case], results: Path, scorers: Scorers, log: Log = lambda _m: None
) -> list[dict[str, Any]]:
    """One record per case: its metrics, stage seconds and memory from its trace if any."""
    records = []
    for n, case in enumerate(cases, 1):
        case_dir = Path(results) / case.relpath
        rec: dict[str, Any] = {
            "case": case.relpath,
            "category": case.category,
            "pairs": len(case.pairs),
            "zero_length_pairs": sum(1 for p in case.pairs if p.length == 0),
        }
        edited = case_dir / EDITED_NAME
        if not edited.is_file():
            failed = read_json(case_dir / FAILED_NAME)
            rec["status"] = "failed" if failed else "missing"
            if failed:
                rec["error"] = failed.get("error", "")
            records.append(rec)
            continue
        rec["status"] = "done"
        rec.update(score_case(case, edited, scorers))
        trace = read_json(case_dir / TRACE_NAME)
        if isinstance(trace, dict):
            rec["stages"] = trace.get("stages")
            rec["memory"] = trace.get("memory")
            rec["keep_unmasked_pixels"] = (trace.get("params") or {}).get("keep_unmasked_pixels")
            rec["method"] = trace.get("method")
        bits = []
        if "distances" in rec:
            bits.append("distances " + ", ".join(f"{d:.1f}" for d in rec["distances"]))
        if "image_fidelity" in rec:
            bits.append(f"IF {rec['image_fidelity']:.3f}")
        log(f"[{n}/{len(cases)}] {case.relpath}: " + ("; ".join(bits) or "no metric available"))
        records.append(rec)
    return records


def bench_params(
    base: DragParams | None = None, *, keep_pixels: bool = False, **overrides: Any
) -> DragParams:
    """Benchmark defaults: the paper's, but without pasting original pixels (authors' protocol)."""
    params = replace(base or DragParams(), keep_unmasked_pixels=keep_pixels)
    return replace(params, **{k: v for k, v in overrides.items() if v is not None})
