"""The Qt-free document: points, mask strokes, observers and the request it builds."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from backend.document import Change, Document, Notice, Pair, pairs_from_points
from backend.errors import InvalidRequest
from backend.request import DEFAULT_MODEL, DragParams, LoraParams


@pytest.fixture
def doc() -> Document:
    d = Document()
    d.set_image(np.zeros((60, 80, 3), np.uint8), "x.png")
    return d


def test_new_image_resets_points_and_mask(doc: Document) -> None:
    doc.add_pair(Pair((1, 2), (3, 4)))
    doc.fill_mask(True)
    doc.set_prompt("a cat")
    doc.set_image(np.ones((10, 20, 3), np.uint8))
    assert doc.size == (20, 10)
    assert doc.pairs == ()
    assert doc.mask is not None and doc.mask.shape == (10, 20) and not doc.mask.any()
    assert doc.prompt == "a cat"


def test_set_image_rejects_non_rgb() -> None:
    with pytest.raises(InvalidRequest):
        Document().set_image(np.zeros((4, 4), np.uint8))


def test_to_request_sends_only_complete_pairs(doc: Document) -> None:
    doc.add_pair(Pair((10.5, 20.25), (30.0, 40.0)))
    doc.add_pair(Pair((5.0, 5.0)))  # dangling
    assert doc.dangling == 1
    req = doc.to_request()
    assert [(p.handle, p.target) for p in req.pairs] == [((10.5, 20.25), (30.0, 40.0))]
    assert req.mask is not None and req.mask.dtype == bool and req.mask.shape == (60, 80)
    assert req.model == DEFAULT_MODEL
    req.validate()


def test_to_request_copies_state(doc: Document) -> None:
    doc.add_pair(Pair((1, 1), (2, 2)))
    req = doc.to_request()
    doc.fill_mask(True)
    assert req.mask is not None and not req.mask.any()


def test_to_request_without_image() -> None:
    with pytest.raises(InvalidRequest, match="no image"):
        Document().to_request()


def test_points_are_clamped_into_the_image(doc: Document) -> None:
    doc.add_pair(Pair((-5, 100), (200, -1)))
    assert doc.pairs[0] == Pair((0.0, 59.0), (79.0, 0.0))


def test_move_remove_insert(doc: Document) -> None:
    doc.add_pair(Pair((1, 1), (2, 2)))
    doc.add_pair(Pair((3, 3), (4, 4)))
    doc.move_point(1, "target", (7.5, 8.5))
    assert doc.pairs[1].target == (7.5, 8.5)
    removed = doc.remove_pair(0)
    assert removed == Pair((1.0, 1.0), (2.0, 2.0))
    doc.insert_pair(0, removed)
    assert doc.pairs[0] == removed and len(doc.pairs) == 2
    with pytest.raises(ValueError):
        doc.move_point(0, "elbow", (0, 0))


def test_observers_hear_each_change_and_can_unsubscribe(doc: Document) -> None:
    heard: list[Notice] = []
    stop = doc.subscribe(heard.append)
    doc.add_pair(Pair((1, 1)))
    doc.set_prompt("p")
    doc.set_prompt("p")  # no change, no notice
    doc.set_params(DragParams(drag_steps=3))
    doc.set_model("some/model")
    doc.invert_mask()
    assert [n.change for n in heard] == [
        Change.POINTS,
        Change.PROMPT,
        Change.PARAMS,
        Change.MODEL,
        Change.MASK,
    ]
    stop()
    doc.add_pair(Pair((2, 2)))
    assert len(heard) == 5


def test_stroke_paints_a_round_dab_of_the_given_radius(doc: Document) -> None:
    stroke = doc.begin_stroke(True, 5)
    stroke.add((40.0, 30.0))
    edit = stroke.finish()
    assert doc.mask is not None
    ys, xs = np.nonzero(doc.mask)
    d2 = (xs - 40) ** 2 + (ys - 30) ** 2
    assert d2.max() <= 25
    assert 70 < doc.mask.sum() < 90  # about π·5²
    assert edit is not None
    x0, y0, x1, y1 = edit.rect
    assert (x0, y0) == (35, 25) and (x1, y1) == (46, 36)
    assert doc.mask[30, 35] and doc.mask[30, 45] and not doc.mask[30, 46]


def test_stroke_is_one_edit_storing_its_bounding_box_only(doc: Document) -> None:
    doc.mask[0:5, 0:5] = True  # type: ignore[index]
    before = doc.mask.copy()  # type: ignore[union-attr]
    notices: list[Notice] = []
    doc.subscribe(notices.append)
    stroke = doc.begin_stroke(True, 2)
    for x in range(10, 40, 3):
        stroke.add((float(x), 20.0))
    edit = stroke.finish()
    assert edit is not None
    assert all(n.change == Change.MASK and n.rect is not None for n in notices)
    x0, y0, x1, y1 = edit.rect
    assert edit.before.shape == (y1 - y0, x1 - x0)
    assert edit.nbytes < before.nbytes / 4
    after = doc.mask.copy()  # type: ignore[union-attr]
    assert after[20, 8:40].all() and not after[20, 40]
    doc.apply_mask_edit(edit, undo=True)
    assert np.array_equal(doc.mask, before)
    doc.apply_mask_edit(edit)
    assert np.array_equal(doc.mask, after)


def test_eraser_stroke_overlapping_itself_restores_exactly(doc: Document) -> None:
    doc.fill_mask(True)
    doc.mask[::7, ::3] = False  # type: ignore[index]
    before = doc.mask.copy()  # type: ignore[union-attr]
    stroke = doc.begin_stroke(False, 4)
    for p in [(10, 10), (30, 12), (12, 14), (50, 40), (10, 10)]:
        stroke.add((float(p[0]), float(p[1])))
    edit = stroke.finish()
    assert edit is not None
    assert not doc.mask[10, 10]  # type: ignore[index]
    doc.apply_mask_edit(edit, undo=True)
    assert np.array_equal(doc.mask, before)


def test_stroke_that_changes_nothing_is_no_edit(doc: Document) -> None:
    stroke = doc.begin_stroke(False, 3)  # erasing an empty mask
    stroke.add((5.0, 5.0))
    stroke.add((9.0, 5.0))
    assert stroke.finish() is None
    outside = doc.begin_stroke(True, 3)
    outside.add((-50.0, -50.0))
    assert outside.finish() is None


def test_fill_edit_spans_only_changed_pixels(doc: Document) -> None:
    assert doc.mask is not None
    doc.mask[10:20, 30:35] = True
    edit = doc.fill_edit(False)
    assert edit is not None and edit.rect == (30, 10, 35, 20)
    doc.apply_mask_edit(edit)
    assert not doc.mask.any()
    assert doc.fill_edit(False) is None
    doc.apply_mask_edit(edit, undo=True)
    assert doc.mask.sum() == 50


def test_fill_invert_set_mask(doc: Document) -> None:
    doc.fill_mask(True)
    assert doc.mask is not None and doc.mask.all()
    doc.invert_mask()
    assert not doc.mask.any()
    m = np.zeros((60, 80), np.uint8)
    m[3, 4] = 1
    doc.set_mask(m)
    assert doc.mask.dtype == bool and doc.mask.sum() == 1
    with pytest.raises(InvalidRequest, match="mask"):
        doc.set_mask(np.zeros((3, 3), bool))


def test_params_round_trip_through_request(doc: Document) -> None:
    doc.set_params(DragParams(drag_steps=12, lam=0.5), LoraParams(steps=0))
    doc.set_prompt("a photo")
    doc.set_model("/models/x.safetensors")
    doc.add_pair(Pair((1, 2), (3, 4)))
    doc.fill_mask(True)
    req = doc.to_request()
    other = Document()
    other.load_request(req, "y.png")
    assert other.params.drag_steps == 12 and other.params.lam == 0.5
    assert other.lora.steps == 0
    assert other.prompt == "a photo" and other.model == "/models/x.safetensors"
    assert other.pairs == doc.pairs
    assert other.mask is not None and other.mask.all()


def test_pairs_from_points() -> None:
    pairs = pairs_from_points([(1, 2), (3, 4), (5, 6)])
    assert pairs == [Pair((1.0, 2.0), (3.0, 4.0)), Pair((5.0, 6.0), None)]


def test_document_module_imports_neither_qt_nor_torch() -> None:
    code = (
        "import sys, backend.document; "
        "bad = [m for m in ('torch', 'diffusers', 'PySide6') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
