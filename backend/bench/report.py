"""Benchmark summaries: per category and overall, as ``metrics.json`` and a Markdown table.

Mean Distance averages over pairs (as the protocol does, so a case with three pairs weighs three
times), Image Fidelity over cases. A metric whose weights could not be had appears with its
reason instead of a number.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.bench.dai import GAMMAS
from backend.bench.runner import Scorers, write_json, write_text
from backend.events import DRAG_STAGES, Stage

STAGES = (*(s.value for s in DRAG_STAGES if s != Stage.LOAD), "total")
KEPT_FRACTION = 0.99


def _mean(values: Sequence[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def _group(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in records if r.get("status") == "done"]
    distances = [d for r in done for d in r.get("distances", [])]
    fidelity = [r["image_fidelity"] for r in done if "image_fidelity" in r]
    stages = {
        s: _mean([r["stages"][s] for r in done if r.get("stages") and s in r["stages"]])
        for s in STAGES
    }
    gpu = [r["memory"]["gpu_peak_gb"] for r in done if (r.get("memory") or {}).get("gpu_peak_gb")]
    rss = [
        r["memory"]["process_peak_rss_gb"]
        for r in done
        if (r.get("memory") or {}).get("process_peak_rss_gb")
    ]
    kept = [r["unmasked_kept"] for r in done if r.get("unmasked_kept") is not None]
    dai = {
        str(g): _mean(
            [r["dai"][str(g)] for r in done if (r.get("dai") or {}).get(str(g)) is not None]
        )
        for g in GAMMAS
    }
    return {
        "cases": len(records),
        "done": len(done),
        "failed": sum(1 for r in records if r.get("status") == "failed"),
        "missing": sum(1 for r in records if r.get("status") == "missing"),
        "pairs": sum(r["pairs"] for r in done),
        "mean_distance": _mean(distances),
        "image_fidelity": _mean(fidelity),
        "dai": dai,
        "seconds": {k: v for k, v in stages.items() if v is not None},
        "gpu_peak_gb": max(gpu) if gpu else None,
        "process_peak_rss_gb": max(rss) if rss else None,
        "unmasked_kept_fraction": _mean(kept),
    }


def _kept_verdict(records: Sequence[dict[str, Any]]) -> str:
    """Measured, not assumed: did the outputs keep the source's pixels outside the mask?"""
    kept = [r["unmasked_kept"] for r in records if r.get("unmasked_kept") is not None]
    if not kept:
        return "unknown (no output at the source's size with a partial mask)"
    yes = sum(1 for k in kept if k >= KEPT_FRACTION)
    if yes == len(kept):
        return "yes"
    return "no" if yes == 0 else f"mixed ({yes} of {len(kept)} cases)"


def summarize(
    records: Sequence[dict[str, Any]], scorers: Scorers, meta: dict[str, Any]
) -> dict[str, Any]:
    categories = sorted({r["category"] for r in records})
    settings = [r.get("keep_unmasked_pixels") for r in records if "keep_unmasked_pixels" in r]
    with_dai = [r for r in records if any(v is not None for v in (r.get("dai") or {}).values())]
    done = [r for r in records if r.get("status") == "done"]
    return {
        **meta,
        "metrics": {
            "mean_distance": {
                "available": scorers.dift is not None,
                "model": scorers.dift_model,
                "reason": scorers.dift_reason,
                "protocol": "DIFT t=261, up_ft_index=1, ensemble 8, argmax cosine at image size",
            },
            "image_fidelity": {
                "available": scorers.lpips is not None,
                "reason": scorers.lpips_reason,
                "weights": scorers.lpips_source,
                "protocol": "1 - LPIPS(AlexNet v0.1), [-1, 1], bilinear 224x224",
            },
            "dai": {
                "available": bool(with_dai),
                "reason": ""
                if with_dai
                else "no finished case with point pairs"
                if not done
                else "the finished cases have no point pairs",
                "gammas": list(GAMMAS),
                "protocol": "GoodDrag compute_DAI.py: SSD of [0,1] patches, handle in source vs "
                "target in result, / pairs / (1+2γ)² / pairs, mean over cases",
            },
        },
        "methods": sorted({r["method"] for r in records if r.get("method")}),
        "kept_original_pixels_outside_mask": {
            "measured": _kept_verdict(records),
            "keep_unmasked_pixels_setting": sorted(set(settings), key=str) if settings else None,
        },
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "overall": _group(records),
        "categories": {c: _group([r for r in records if r["category"] == c]) for c in categories},
        "cases": list(records),
    }


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    m = summary["metrics"]
    lines = ["# DragBench results", ""]
    names = (("mean_distance", "Mean Distance"), ("image_fidelity", "Image Fidelity"))
    for key, label in (*names, ("dai", "DAI")):
        if key in m and not m[key]["available"]:
            lines.append(f"- {label}: **unavailable** — {m[key]['reason']}")
    if summary.get("methods"):
        lines.append(f"- Method (from the traces): {', '.join(summary['methods'])}")
    kept = summary["kept_original_pixels_outside_mask"]
    lines.append(f"- Outputs kept the original pixels outside the mask: {kept['measured']}")
    if summary.get("model"):
        lines.append(f"- Model: `{summary['model']}`; device: {summary.get('device', '?')}")
    lines += [
        "",
        "| category | cases | pairs | MD ↓ (px) | IF ↑ | "
        + " | ".join(f"DAI γ={g} ↓" for g in GAMMAS)
        + " | LoRA s | inversion s | drag s | denoise s | total s | GPU peak GB |",
        "|---|---|---|---|---|" + "---|" * len(GAMMAS) + "---|---|---|---|---|---|",
    ]
    rows = [*summary["categories"].items(), ("**overall**", summary["overall"])]
    for name, g in rows:
        sec = g["seconds"]
        cells = [
            name,
            f"{g['done']}/{g['cases']}",
            str(g["pairs"]),
            _fmt(g["mean_distance"], 2),
            _fmt(g["image_fidelity"], 3),
            *(_fmt((g.get("dai") or {}).get(str(gamma)), 4) for gamma in GAMMAS),
            *(_fmt(sec.get(s), 2) for s in STAGES),
            _fmt(g["gpu_peak_gb"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in summary["cases"] if r.get("status") == "failed"]
    if failed:
        lines += ["", "Failed cases:", ""]
        lines += [f"- {r['case']}: {r.get('error', '')}" for r in failed]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(out)
    write_json(out / "metrics.json", summary)
    write_text(out / "metrics.md", markdown(summary))
    return out / "metrics.json", out / "metrics.md"
