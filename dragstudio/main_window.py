"""The editor window: canvas in the middle, tools on the left, parameters and history on the right.

It owns the document and the undo stack; widgets observe the document and change it only
through commands on the stack. The right-hand panel has an empty ``progress_slot`` where the
engine's progress panel goes, and the canvas shows live handle positions when told to
(:meth:`CanvasView.set_live_handles`): the seams for running edits from the window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QKeySequence,
    QUndoStack,
)
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QFrame,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSpinBox,
    QToolBar,
    QUndoView,
    QVBoxLayout,
    QWidget,
)

from backend import __version__
from backend.document import Change, Document, Notice, load_image
from backend.errors import InvalidRequest
from backend.lora_cache import LoraCache
from dragstudio.canvas import CanvasView, Tool
from dragstudio.canvas.view import percent_text
from dragstudio.commands import ClearPairs, EditMask, InvertMask
from dragstudio.dialogs import ModelChoice, ask_missing_model
from dragstudio.drag_ui import DragUI, show_failure_dialog
from dragstudio.engine_ui import EngineUI, make_host
from dragstudio.generate_ui import GenerateUI
from dragstudio.panels.model_picker import ModelPicker
from dragstudio.panels.parameters import ParametersPanel
from dragstudio.prefs import open_prefs
from dragstudio.project_dialogs import cache_limit_bytes
from dragstudio.project_ui import PROJECT_FILTER, ProjectUI, is_project
from dragstudio.resources import app_icon, icon
from dragstudio.runner import EngineHost, Failure

APP_NAME = "DragStudio"
IMAGE_TYPES = "*.png *.jpg *.jpeg *.webp *.tif *.tiff *.bmp *.gif *.jfif"
OPEN_FILTER = (
    f"Projects and images (*.dragstudio {IMAGE_TYPES});;{PROJECT_FILTER};;Images ({IMAGE_TYPES})"
    ";;All files (*)"
)
BRUSH_STEP = 1.25
"""[ and ] scale the brush by this factor, so a few presses go from fine to broad."""


def _shortcut_text(shortcuts: Sequence[QKeySequence]) -> str:
    return ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in shortcuts)


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None, host: EngineHost | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else QSettings()  # geometry only
        self.prefs = open_prefs(self.settings)
        self.document = Document()
        self.undo_stack = QUndoStack(self)
        self.actions: dict[str, QAction] = {}

        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)

        self.canvas = CanvasView(self.document, self.undo_stack, self)
        self.setCentralWidget(self.canvas)

        self._build_actions()
        self._build_menus()
        self._build_toolbars()
        self._build_docks()
        self._build_status_bar()
        self.lora_cache = LoraCache(limit_bytes=cache_limit_bytes(self.prefs))
        self.drag_ui = DragUI(self, host or make_host(self.prefs, self.lora_cache))
        self.project_ui = ProjectUI(self, self.lora_cache)
        self.generate_ui = GenerateUI(self)
        self.engine_ui = EngineUI(self)

        # A bound slot, not a lambda: Qt drops it when the window dies before its stack.
        self.undo_stack.cleanChanged.connect(self._clean_changed)
        self.canvas.zoomChanged.connect(lambda p: self.zoom_label.setText(percent_text(p)))
        self.canvas.cursorMoved.connect(self._show_cursor)
        self.canvas.toolChanged.connect(self._tool_changed)
        self.canvas.brushRadiusChanged.connect(self._brush_radius_changed)
        self._unsubscribe = self.document.subscribe(self._on_document)
        self._update_title()
        self._update_enabled()
        self._restore_geometry()

    # -- actions -----------------------------------------------------------------------------

    def _action(
        self,
        name: str,
        text: str,
        slot: Callable[[], object] | None = None,
        *,
        shortcuts: Sequence[QKeySequence | QKeySequence.StandardKey | str] = (),
        icon_name: str = "",
        tip: str = "",
        checkable: bool = False,
    ) -> QAction:
        action = QAction(text, self)
        action.setObjectName(name)
        keys = [QKeySequence(s) for s in shortcuts]
        if keys:
            action.setShortcuts(keys)
        if icon_name:
            action.setIcon(icon(icon_name))
        action.setCheckable(checkable)
        tip = tip or text.replace("&", "").rstrip("…")
        action.setToolTip(f"{tip} ({_shortcut_text(keys)})" if keys else tip)
        action.setStatusTip(tip)
        if slot is not None:
            action.triggered.connect(lambda *_: slot())
        self.addAction(action)
        self.actions[name] = action
        return action

    def _build_actions(self) -> None:
        a = self._action
        a(
            "open",
            "&Open…",
            self.open_dialog,
            shortcuts=[QKeySequence.StandardKey.Open],
            icon_name="open",
            tip="Open a photo or a project",
        )
        a("quit", "&Quit", self.close, shortcuts=[QKeySequence.StandardKey.Quit])

        undo = self.undo_stack.createUndoAction(self, "&Undo")
        undo.setShortcuts([QKeySequence(QKeySequence.StandardKey.Undo)])
        redo = self.undo_stack.createRedoAction(self, "&Redo")
        redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        for name, act, tip in (("undo", undo, "Undo"), ("redo", redo, "Redo")):
            act.setObjectName(name)
            act.setIcon(icon(name))
            act.setToolTip(f"{tip} ({_shortcut_text(act.shortcuts())})")
            self.addAction(act)
            self.actions[name] = act

        a(
            "delete_pair",
            "&Delete Selected Pair",
            self.canvas.delete_selected,
            shortcuts=["Delete", "Backspace"],
            icon_name="delete",
            tip="Delete the selected point pair",
        )
        a(
            "clear_points",
            "C&lear All Points",
            self.clear_points,
            shortcuts=["Ctrl+Shift+Delete"],
            icon_name="clear-points",
            tip="Remove every point pair",
        )
        a(
            "clear_mask",
            "Clear &Mask",
            self.clear_mask,
            shortcuts=["Ctrl+Shift+M"],
            icon_name="clear-mask",
            tip="Clear the mask (no region marked editable)",
        )
        a(
            "fill_mask",
            "&Fill Mask",
            self.fill_mask,
            shortcuts=["Ctrl+Shift+F"],
            icon_name="fill",
            tip="Mark the whole image editable",
        )
        a(
            "invert_mask",
            "&Invert Mask",
            self.invert_mask,
            shortcuts=["Ctrl+I"],
            icon_name="invert",
            tip="Swap editable and protected regions",
        )

        a("fit", "&Fit to Window", self.canvas.fit, shortcuts=["Ctrl+0"], icon_name="fit")
        a(
            "actual_size",
            "&Actual Size (100 %)",
            self.canvas.actual_size,
            shortcuts=["Ctrl+1"],
            icon_name="zoom-100",
            tip="Actual size: one image pixel per screen pixel",
        )
        a(
            "zoom_in",
            "Zoom &In",
            lambda: self.canvas.zoom_by(2**0.5),
            shortcuts=[QKeySequence.StandardKey.ZoomIn, "Ctrl+="],
            icon_name="zoom-in",
        )
        a(
            "zoom_out",
            "Zoom &Out",
            lambda: self.canvas.zoom_by(2**-0.5),
            shortcuts=[QKeySequence.StandardKey.ZoomOut],
            icon_name="zoom-out",
        )
        overlay = a(
            "toggle_overlay",
            "Show Mask &Overlay",
            None,
            shortcuts=["M"],
            icon_name="overlay",
            tip="Show or hide the mask overlay",
            checkable=True,
        )
        overlay.setChecked(True)
        overlay.toggled.connect(self.canvas.set_overlay_visible)

        group = QActionGroup(self)
        group.setExclusive(True)
        for tool, key, tip in (
            (Tool.POINT, "P", "Points: click a handle, then its target; drag to move"),
            (Tool.BRUSH, "B", "Mask brush: paint the region that may change"),
            (Tool.ERASER, "E", "Mask eraser: protect a region from change"),
            (Tool.PAN, "H", "Pan: drag the view (or hold Space, or use the middle button)"),
        ):
            act = a(
                f"tool_{tool.value}",
                tool.title,
                lambda t=tool: self.canvas.set_tool(t),
                shortcuts=[key],
                icon_name=f"tool-{tool.value}",
                tip=tip,
                checkable=True,
            )
            group.addAction(act)
        self.actions["tool_point"].setChecked(True)
        a(
            "brush_smaller",
            "S&maller Brush",
            lambda: self._scale_brush(1 / BRUSH_STEP),
            shortcuts=["["],
            tip="Make the brush smaller",
        )
        a(
            "brush_larger",
            "&Larger Brush",
            lambda: self._scale_brush(BRUSH_STEP),
            shortcuts=["]"],
            tip="Make the brush larger",
        )
        a("about", "&About DragStudio", self.about)

    def _build_menus(self) -> None:
        bar = self.menuBar()
        menus: dict[str, list[str]] = {
            "&File": ["open", "-", "quit"],
            "&Edit": ["undo", "redo", "-", "delete_pair", "clear_points", "-",
                      "clear_mask", "fill_mask", "invert_mask"],
            "&View": ["fit", "actual_size", "zoom_in", "zoom_out", "-", "toggle_overlay"],
            "&Tools": ["tool_point", "tool_brush", "tool_eraser", "tool_pan", "-",
                       "brush_smaller", "brush_larger"],
            "&Help": ["about"],
        }  # fmt: skip
        for title, names in menus.items():
            menu = bar.addMenu(title)
            for name in names:
                if name == "-":
                    menu.addSeparator()
                else:
                    menu.addAction(self.actions[name])
            if title == "&View":
                self.view_menu = menu
            if title == "&File":
                self.file_menu = menu

    def _build_toolbars(self) -> None:
        main = QToolBar("Main", self)
        main.setObjectName("mainToolBar")
        main.setMovable(False)
        for name in ["open", "-", "undo", "redo", "-", "fit", "actual_size", "-",
                     "toggle_overlay", "clear_mask", "fill_mask", "invert_mask", "-",
                     "delete_pair", "clear_points"]:  # fmt: skip
            if name == "-":
                main.addSeparator()
            else:
                main.addAction(self.actions[name])
        main.addSeparator()
        main.addWidget(QLabel(" Brush "))
        self.brush_spin = QSpinBox()
        self.brush_spin.setObjectName("brushSize")
        self.brush_spin.setRange(1, 2000)
        self.brush_spin.setSuffix(" px")
        self.brush_spin.setValue(round(self.canvas.brush_radius))
        self.brush_spin.setToolTip("Brush radius in image pixels ([ smaller, ] larger)")
        self.brush_spin.valueChanged.connect(self.canvas.set_brush_radius)
        main.addWidget(self.brush_spin)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, main)

        tools = QToolBar("Tools", self)
        tools.setObjectName("toolsToolBar")
        tools.setMovable(False)
        for tool in Tool:
            tools.addAction(self.actions[f"tool_{tool.value}"])
        self.addToolBar(Qt.ToolBarArea.LeftToolBarArea, tools)

    def _build_docks(self) -> None:
        self.parameters = ParametersPanel(self.document, self.undo_stack)
        self.model_picker = ModelPicker(self.document, self.prefs)
        self.progress_slot = QVBoxLayout()
        """Where the Drag button, the progress panel and the result bar go (see drag_ui)."""
        self.progress_slot.setContentsMargins(0, 0, 0, 0)

        edit = QWidget()
        edit.setObjectName("editPanel")
        layout = QVBoxLayout(edit)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.addWidget(self.parameters)
        layout.addSpacing(6)
        layout.addWidget(QLabel("Model"))
        layout.addWidget(self.model_picker)
        layout.addSpacing(6)
        layout.addLayout(self.progress_slot)
        layout.addStretch(1)
        # Scrolls rather than forcing a tall window once progress and results are shown.
        scroll = QScrollArea()
        scroll.setObjectName("editScroll")
        scroll.setWidget(edit)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.edit_dock = self._dock("Edit", "editDock", scroll)

        self.history_view = QUndoView(self.undo_stack)
        self.history_view.setEmptyLabel("Opened image")
        self.history_view.setObjectName("history")
        self.history_dock = self._dock("History", "historyDock", self.history_view)
        self.splitDockWidget(self.edit_dock, self.history_dock, Qt.Orientation.Vertical)

    def _dock(self, title: str, name: str, widget: QWidget) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
        )
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.view_menu.addAction(dock.toggleViewAction())
        return dock

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.size_label = QLabel("No image")
        self.zoom_label = QLabel("–")
        self.position_label = QLabel("")
        self.tool_label = QLabel(self.canvas.tool.title)
        for label, width in ((self.position_label, 130), (self.size_label, 130),
                             (self.zoom_label, 70), (self.tool_label, 150)):  # fmt: skip
            label.setMinimumWidth(width)
            bar.addPermanentWidget(label)

    # -- document ----------------------------------------------------------------------------

    def open_dialog(self) -> None:
        start = self.prefs.get("last_dir")
        path, _ = QFileDialog.getOpenFileName(self, "Open", start, OPEN_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str | Path) -> bool:
        """Open an image or project; on failure say why and leave the document as it was."""
        if is_project(path):
            return self.project_ui.open_project(path)
        QGuiApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            image = load_image(path)
        except InvalidRequest as exc:
            QGuiApplication.restoreOverrideCursor()
            self.show_error("Cannot open image", str(exc))
            return False
        QGuiApplication.restoreOverrideCursor()
        if not self.undo_stack.isClean() and not self.confirm_discard():
            return False
        self.document.set_image(image, path)
        self.undo_stack.clear()
        self.project_ui.reset()
        self.prefs.update(last_dir=str(Path(path).resolve().parent))
        self.statusBar().showMessage(f"Opened {Path(path).name}", 4000)
        self.canvas.setFocus()
        return True

    def show_error(self, title: str, message: str) -> None:
        QMessageBox.warning(self, title, message)

    def show_failure(self, failure: Failure) -> None:
        """A failed edit: message, suggestion, and the details behind "Show Details…"."""
        show_failure_dialog(self, failure)

    def ask_missing_model(self, spec: str, failure: Failure) -> ModelChoice:
        return ask_missing_model(self, spec, failure)

    def confirm_discard(self) -> bool:
        answer = QMessageBox.question(
            self,
            "Discard changes?",
            "The points, mask and settings you changed will be lost.",
            QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        return answer == QMessageBox.StandardButton.Discard

    def ask_save_changes(self) -> str:
        """Closing with unsaved work: "save", "discard" or "cancel"."""
        answer = QMessageBox.question(
            self,
            "Save changes?",
            "This session has changes that are not saved in a project.",
            QMessageBox.StandardButton.Save
            | QMessageBox.StandardButton.Discard
            | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Save,
        )
        return {
            QMessageBox.StandardButton.Save: "save",
            QMessageBox.StandardButton.Discard: "discard",
        }.get(answer, "cancel")

    def ask_recover(self, path: Path) -> bool:
        answer = QMessageBox.question(
            self,
            "Recover unsaved work?",
            "DragStudio did not close normally last time. Recover the work it saved "
            f"automatically ({path.name})?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.Yes,
        )
        return answer == QMessageBox.StandardButton.Yes

    def clear_points(self) -> None:
        if self.document.pairs:
            self.undo_stack.push(ClearPairs(self.document))

    def _mask_fill(self, value: bool, text: str) -> None:
        if not self.document.has_image:
            return
        edit = self.document.fill_edit(value)
        if edit is not None:
            self.undo_stack.push(EditMask(self.document, edit, text, applied=False))

    def clear_mask(self) -> None:
        self._mask_fill(False, "Clear mask")

    def fill_mask(self) -> None:
        self._mask_fill(True, "Fill mask")

    def invert_mask(self) -> None:
        if self.document.has_image:
            self.undo_stack.push(InvertMask(self.document))

    def _on_document(self, notice: Notice) -> None:
        if notice.change == Change.IMAGE:
            w, h = self.document.size
            self.size_label.setText(f"{w} × {h} px")
            self._update_title()
        if notice.change in (Change.IMAGE, Change.POINTS):
            self._update_enabled()

    def _update_enabled(self) -> None:
        has_image = self.document.has_image
        for name in ("clear_mask", "fill_mask", "invert_mask", "fit", "actual_size",
                     "zoom_in", "zoom_out"):  # fmt: skip
            self.actions[name].setEnabled(has_image)
        self.actions["clear_points"].setEnabled(bool(self.document.pairs))
        self.actions["delete_pair"].setEnabled(bool(self.document.pairs))

    def _clean_changed(self, _clean: bool) -> None:
        self._update_title()

    def _update_title(self) -> None:
        path = self.document.path
        name = path.name if path is not None else ("Untitled" if self.document.has_image else "")
        self.setWindowTitle(f"{name}[*] — {APP_NAME}" if name else APP_NAME)
        self.setWindowModified(not self.undo_stack.isClean())

    # -- status ------------------------------------------------------------------------------

    def _show_cursor(self, p: tuple[float, float] | None) -> None:
        self.position_label.setText("" if p is None else f"x {p[0]:.0f}, y {p[1]:.0f}")

    def _tool_changed(self, tool: Tool) -> None:
        self.actions[f"tool_{tool.value}"].setChecked(True)
        self._brush_radius_changed(self.canvas.brush_radius)

    def _brush_radius_changed(self, radius: float) -> None:
        tool = self.canvas.tool
        extra = f" · {radius:.0f} px" if tool in (Tool.BRUSH, Tool.ERASER) else ""
        self.tool_label.setText(tool.title + extra)
        if self.brush_spin.value() != round(radius):
            self.brush_spin.blockSignals(True)
            self.brush_spin.setValue(round(radius))
            self.brush_spin.blockSignals(False)

    def _scale_brush(self, factor: float) -> None:
        r = self.canvas.brush_radius
        new = r * factor
        # Always move by at least a pixel, so small brushes respond to every press.
        new = max(new, r + 1) if factor > 1 else min(new, r - 1)
        self.canvas.set_brush_radius(new)

    def about(self) -> None:
        QMessageBox.about(
            self,
            f"About {APP_NAME}",
            f"<b>{APP_NAME} {__version__}</b><p>Point-based photo editing after "
            "DragDiffusion (Shi et al., CVPR 2024).</p>",
        )

    # -- window ------------------------------------------------------------------------------

    def _restore_geometry(self) -> None:
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 900)
        if isinstance(state, QByteArray) and not state.isEmpty():
            self.restoreState(state)

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.project_ui.may_close():
            event.ignore()
            return
        self.project_ui.shutdown()
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.sync()
        self._unsubscribe()
        self.drag_ui.shutdown()
        super().closeEvent(event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        files = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.open_path(files[0])
