"""Why Drag cannot run: the reason is shown before the click, including the pair limit."""

from __future__ import annotations

import numpy as np
import pytest

from backend.document import Document, Pair
from backend.errors import InvalidRequest
from backend.limits import MAX_DRAG_PAIRS, MAX_PAIRS
from backend.request import DragRequest, PointPair
from dragstudio.drag_readiness import drag_blocker


def _document(pairs: int) -> Document:
    doc = Document()
    doc.set_image(np.zeros((64, 64, 3), np.uint8))
    for n in range(pairs):
        doc.add_pair(Pair((float(n % 60), 1.0), (float(n % 60), 40.0)))
    return doc


def test_too_many_pairs_is_said_before_drag_is_pressed() -> None:
    assert MAX_DRAG_PAIRS < MAX_PAIRS  # a document may hold more than one drag takes
    assert drag_blocker(_document(MAX_DRAG_PAIRS), drag_running=False, model="a/b") == ""
    reason = drag_blocker(_document(MAX_DRAG_PAIRS + 1), drag_running=False, model="a/b")
    assert f"({MAX_DRAG_PAIRS + 1})" in reason and f"{MAX_DRAG_PAIRS} at most" in reason


def test_a_servers_model_name_is_not_checked_as_a_path_here() -> None:
    """ "sd15" on a server is its allow-listed name; only this computer's engine needs it here."""
    assert "not on disk" in drag_blocker(_document(1), drag_running=False, model="sd15")
    assert drag_blocker(_document(1), drag_running=False, model="sd15", on_server=True) == ""


def test_the_window_and_the_engine_agree_on_the_limit() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    pair = PointPair((1.0, 1.0), (2.0, 2.0))
    DragRequest(image=image, pairs=[pair] * MAX_DRAG_PAIRS).validate()
    with pytest.raises(InvalidRequest, match=f"{MAX_DRAG_PAIRS} at most"):
        DragRequest(image=image, pairs=[pair] * (MAX_DRAG_PAIRS + 1)).validate()
