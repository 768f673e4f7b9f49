"""The undo history list, with undone steps greyed so the current state is plain to see.

Row 0 is the opened image; row ``n`` is the state after the n-th command, so the rows after the
stack's index are the steps that were undone (and that any new edit will drop).
"""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex
from PySide6.QtGui import QColor, QPalette, QUndoStack
from PySide6.QtWidgets import QStyledItemDelegate, QStyleOptionViewItem, QUndoView, QWidget

UNDONE_COLOR = "#6b717c"


class _UndoneGrey(QStyledItemDelegate):
    def __init__(self, stack: QUndoStack, parent: QWidget) -> None:
        super().__init__(parent)
        self._stack = stack

    def initStyleOption(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        super().initStyleOption(option, index)
        if is_undone(self._stack, index.row()):
            grey = QColor(UNDONE_COLOR)
            option.palette.setColor(QPalette.ColorRole.Text, grey)  # type: ignore[attr-defined]
            option.palette.setColor(QPalette.ColorRole.WindowText, grey)  # type: ignore[attr-defined]
            option.font.setItalic(True)  # type: ignore[attr-defined]


def is_undone(stack: QUndoStack, row: int) -> bool:
    return row > stack.index()


class HistoryView(QUndoView):
    def __init__(self, stack: QUndoStack) -> None:
        super().__init__(stack)
        self.setObjectName("history")
        self.setEmptyLabel("Opened image")
        self.setItemDelegate(_UndoneGrey(stack, self))
        stack.indexChanged.connect(self._repaint)  # bound: Qt drops it if the view dies first

    def _repaint(self, _index: int) -> None:
        self.viewport().update()

    def undone_rows(self) -> list[int]:
        stack = self.stack()
        return [row for row in range(stack.count() + 1) if is_undone(stack, row)]

    def row_text_color(self, row: int) -> QColor:
        """The colour a row's text is drawn in (what the greying looks like, for tests)."""
        option = QStyleOptionViewItem()
        option.initFrom(self)
        self.itemDelegate().initStyleOption(option, self.model().index(row, 0))  # type: ignore[attr-defined]
        return option.palette.color(QPalette.ColorRole.Text)  # type: ignore[attr-defined]
