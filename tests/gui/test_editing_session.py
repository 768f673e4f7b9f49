"""Drive the real main window like a user: open, place points, paint, undo and redo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gui_helpers import click, drag

from backend.document import Pair

TOL = 0.75
"""Image-pixel tolerance of a click: one logical pixel at the fitted zoom, rounded."""


def near(a: tuple[float, float] | None, b: tuple[float, float]) -> bool:
    return a is not None and abs(a[0] - b[0]) <= TOL and abs(a[1] - b[1]) <= TOL


def snapshot(doc) -> tuple[tuple[Pair, ...], np.ndarray]:
    return doc.pairs, doc.mask.copy()


def same(doc, snap: tuple[tuple[Pair, ...], np.ndarray]) -> bool:
    return doc.pairs == snap[0] and np.array_equal(doc.mask, snap[1])


def test_full_session_with_undo_and_redo(window, sample_image: Path) -> None:
    doc, canvas, stack = window.document, window.canvas, window.undo_stack
    assert window.open_path(sample_image)
    assert doc.size == (512, 512) or doc.has_image
    assert stack.count() == 0 and not window.isWindowModified()
    to_view = canvas.image_to_view

    states = [snapshot(doc)]
    # Two pairs: handle, target, handle, target.
    for p in [(100.0, 120.0), (160.0, 140.0), (300.0, 300.0), (320.0, 250.0)]:
        click(canvas, to_view(p))
        states.append(snapshot(doc))
    assert len(doc.pairs) == 2
    assert near(doc.pairs[0].handle, (100, 120)) and near(doc.pairs[0].target, (160, 140))
    assert near(doc.pairs[1].handle, (300, 300)) and near(doc.pairs[1].target, (320, 250))
    assert window.isWindowModified() and "[*]" in window.windowTitle()

    # Drag the first target somewhere else.
    start = to_view(doc.pairs[0].target)
    end = to_view((200.0, 180.0))
    drag(canvas, [start, (start + end) / 2, end])
    assert near(doc.pairs[0].target, (200, 180))
    assert near(doc.pairs[0].handle, (100, 120))
    states.append(snapshot(doc))

    # One brush stroke, one eraser stroke through it.
    canvas.set_tool(canvas.tool.BRUSH)
    canvas.set_brush_radius(20)
    drag(canvas, [to_view((200.0, 400.0)), to_view((260.0, 400.0)), to_view((320.0, 400.0))])
    assert doc.mask[400, 200:321].all() and doc.mask[390, 260] and not doc.mask[430, 260]
    painted = int(doc.mask.sum())
    assert 120 * 40 < painted < 160 * 42
    states.append(snapshot(doc))
    canvas.set_tool(canvas.tool.ERASER)
    canvas.set_brush_radius(8)
    drag(canvas, [to_view((260.0, 370.0)), to_view((260.0, 430.0))])
    assert not doc.mask[400, 260] and doc.mask[400, 200]
    assert int(doc.mask.sum()) < painted
    states.append(snapshot(doc))

    # Each gesture is exactly one undo step, in order.
    assert stack.count() == len(states) - 1 == 7
    for i in range(len(states) - 1, 0, -1):
        assert same(doc, states[i])
        stack.undo()
        assert same(doc, states[i - 1]), f"undo of step {i} did not restore the document"
    assert not window.isWindowModified()
    for i in range(1, len(states)):
        stack.redo()
        assert same(doc, states[i]), f"redo of step {i} did not restore the document"

    # The request carries both pairs and the mask as painted.
    req = doc.to_request()
    assert len(req.pairs) == 2 and req.mask is not None and req.mask.dtype == bool
    assert np.array_equal(req.mask, doc.mask)


def test_mask_undo_stores_bounding_box_not_whole_mask(window, sample_image: Path) -> None:
    window.open_path(sample_image)
    canvas = window.canvas
    canvas.set_tool(canvas.tool.BRUSH)
    canvas.set_brush_radius(5)
    drag(canvas, [canvas.image_to_view((50.0, 50.0)), canvas.image_to_view((70.0, 52.0))])
    command = window.undo_stack.command(0)
    edit = command.edit
    x0, y0, x1, y1 = edit.rect
    assert (x1 - x0, y1 - y0) == edit.before.shape[::-1]
    assert edit.before.size < window.document.mask.size / 50


def test_dangling_handle_is_shown_but_not_sent(window, sample_image: Path) -> None:
    window.open_path(sample_image)
    canvas, doc = window.canvas, window.document
    for p in [(10.0, 10.0), (40.0, 40.0), (200.0, 200.0)]:
        click(canvas, canvas.image_to_view(p))
    assert doc.dangling == 1 and not doc.pairs[1].complete
    assert len(doc.to_request().pairs) == 1
    # Drawn as a hollow ring: the red fill of a complete handle is absent at its centre.
    img = canvas.grab().toImage()
    ratio = img.devicePixelRatio()
    c = canvas.image_to_view((200.0, 200.0))
    centre = img.pixelColor(int(c.x() * ratio), int(c.y() * ratio))
    h = canvas.image_to_view((10.0, 10.0))
    filled = img.pixelColor(int(h.x() * ratio), int(h.y() * ratio))
    assert filled.red() > 200 and filled.green() < 110
    assert not (centre.red() > 200 and centre.green() < 110)


def test_delete_and_clear_points(window, sample_image: Path) -> None:
    window.open_path(sample_image)
    canvas, doc, stack = window.canvas, window.document, window.undo_stack
    for p in [(10.0, 10.0), (40.0, 40.0), (100.0, 100.0), (140.0, 100.0)]:
        click(canvas, canvas.image_to_view(p))
    click(canvas, canvas.image_to_view((10.0, 10.0)))  # selects pair 1 without adding
    assert canvas.selected == 0 and len(doc.pairs) == 2
    window.actions["delete_pair"].trigger()
    assert len(doc.pairs) == 1 and near(doc.pairs[0].handle, (100, 100))
    stack.undo()
    assert len(doc.pairs) == 2 and near(doc.pairs[0].handle, (10, 10))
    window.actions["clear_points"].trigger()
    assert doc.pairs == ()
    stack.undo()
    assert len(doc.pairs) == 2


def test_mask_clear_fill_invert_are_undoable(window, sample_image: Path) -> None:
    window.open_path(sample_image)
    doc, stack = window.document, window.undo_stack
    window.actions["fill_mask"].trigger()
    assert doc.mask.all()
    window.actions["invert_mask"].trigger()
    assert not doc.mask.any()
    window.actions["invert_mask"].trigger()
    window.actions["clear_mask"].trigger()
    assert not doc.mask.any()
    expected = [True, False, True, False]  # undoing clear, invert, invert, fill
    for all_set in expected:
        stack.undo()
        assert doc.mask.all() if all_set else not doc.mask.any()
    assert stack.index() == 0


def test_overlay_dims_outside_the_mask(window, sample_image: Path) -> None:
    window.open_path(sample_image)
    canvas, doc = window.canvas, window.document
    probe = canvas.image_to_view((400.0, 50.0))

    def brightness() -> int:
        img = canvas.grab().toImage()
        r = img.devicePixelRatio()
        return img.pixelColor(int(probe.x() * r), int(probe.y() * r)).lightness()

    plain = brightness()
    doc.mask[300:350, 300:350] = True
    doc.set_mask(doc.mask)
    dimmed = brightness()
    assert dimmed < plain - 20
    window.actions["toggle_overlay"].trigger()
    assert abs(brightness() - plain) <= 2


def test_corrupt_file_leaves_document_untouched(window, sample_image: Path, tmp_path) -> None:
    window.open_path(sample_image)
    canvas, doc = window.canvas, window.document
    click(canvas, canvas.image_to_view((30.0, 30.0)))
    click(canvas, canvas.image_to_view((60.0, 30.0)))
    before_image = doc.image.copy()
    before = snapshot(doc)
    count, title = window.undo_stack.count(), window.windowTitle()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    assert not window.open_path(bad)
    assert len(window.errors) == 1 and "broken.jpg" in window.errors[0][1]
    assert same(doc, before) and np.array_equal(doc.image, before_image)
    assert doc.path == sample_image
    assert window.undo_stack.count() == count and window.windowTitle() == title


def test_opening_another_image_resets_history(window, sample_image: Path, tmp_path) -> None:
    from PIL import Image

    window.open_path(sample_image)
    click(window.canvas, window.canvas.image_to_view((30.0, 30.0)))
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(other)
    assert window.open_path(other)
    assert window.document.size == (64, 48) and window.document.pairs == ()
    assert window.undo_stack.count() == 0
    assert window.windowTitle().startswith("other.png")
    assert window.size_label.text() == "64 × 48 px"


@pytest.mark.parametrize("declined", [True, False])
def test_unsaved_changes_are_confirmed(window, sample_image: Path, declined: bool) -> None:
    window.open_path(sample_image)
    click(window.canvas, window.canvas.image_to_view((30.0, 30.0)))
    asked = []
    window.confirm_discard = lambda: asked.append(1) or not declined
    assert window.open_path(sample_image) is (not declined)
    assert asked == [1]
    assert (len(window.document.pairs) == 1) is declined
