"""The tracked handles actually travel to their targets, even on random weights.

The issue's reference: the authors' code brings one handle from 116 px away to within about
18 px of its target (as tracked) at 512². On DragBench's first animals case (114 px, a dog's
head to the left) DragStudio does the same kind of thing on the tiny random model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.bench.dragbench import load_case
from backend.document import load_image
from backend.request import DragParams, DragRequest, LoraParams
from backend.result import Trace

CASE = "animals/JH_2023-09-14-1820-16"


def _request(dev_data, model: str, params: DragParams, lora: LoraParams) -> DragRequest:
    case = load_case(dev_data / CASE)
    return DragRequest(
        image=load_image(case.image_path),
        pairs=case.pairs,
        mask=case.mask,
        prompt=case.prompt,
        params=params,
        lora=lora,
        model=model,
    )


def _distances(trace: Trace) -> list[float]:
    target = trace.targets[0]
    return [math.dist(it.handles[0], target) for it in trace.iterations]


def test_handle_reaches_its_target_at_working_width_256(engine, tiny_model_dir, dev_data) -> None:
    req = _request(
        dev_data, str(tiny_model_dir), DragParams(working_width=256), LoraParams(steps=0)
    )
    trace = engine.edit(req).trace
    start = math.dist(req.pairs[0].handle, req.pairs[0].target)
    assert start > 110
    assert trace.reached is True
    assert trace.final_distances[0] <= 12.0  # 2 feature pixels at this size are 8 px
    # It got there by moving, not by a lucky jump: the distance shrinks over the iterations.
    d = _distances(trace)
    assert d[0] > 100 and np.mean(d[-5:]) < 0.5 * d[0]


@pytest.mark.slow
def test_handle_travels_at_512_with_the_paper_defaults(dev_data, tmp_path) -> None:
    from backend.engine import Engine
    from backend.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny-seed1", seed=1)
    req = _request(dev_data, str(model), DragParams(), LoraParams(steps=0))
    trace = Engine("cpu").edit(req).trace
    assert trace.working_size == (512, 512) and trace.drag_iterations > 40
    start = math.dist(req.pairs[0].handle, req.pairs[0].target)
    # Measured: 114 px → 43 px after 80 iterations on this model.
    assert trace.final_distances[0] < 0.55 * start
