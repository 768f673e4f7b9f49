"""The editor window: canvas in the middle, tools on the left, parameters and history on the right.

It owns the document and the undo stack; widgets observe the document and change it only
through commands on the stack. The right-hand panel has an empty ``progress_slot`` where the
engine's progress panel goes, and the canvas shows live handle positions when told to
(:meth:`CanvasView.set_live_handles`): the seams for running edits from the window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QRect, QSettings, Qt, QTimer
from PySide6.QtGui import (
    QActionGroup,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QKeySequence,
    QShowEvent,
    QUndoStack,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolBar,
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
from dragstudio.document_switch import DocumentSwitch
from dragstudio.drag_ui import DragUI, show_failure_dialog
from dragstudio.engine_ui import EngineUI, make_host
from dragstudio.file_controller import PROJECT_FILTER, FileController, is_project
from dragstudio.generate_ui import GenerateUI
from dragstudio.help_ui import HelpUI, docs_path
from dragstudio.panels.history import HistoryView
from dragstudio.panels.memory import MemoryCombo
from dragstudio.panels.model_picker import ModelPicker
from dragstudio.panels.parameters import ParametersPanel
from dragstudio.prefs import open_prefs
from dragstudio.project_dialogs import cache_limit_bytes
from dragstudio.resources import app_icon, icon
from dragstudio.runner import EngineHost, Failure
from dragstudio.window_services import ActionRegistry, DockArea, WindowFrame, shortcut_text

APP_NAME = "DragStudio"
IMAGE_TYPES = "*.png *.jpg *.jpeg *.webp *.tif *.tiff *.bmp *.gif *.jfif"
OPEN_FILTER = (
    f"Projects and images (*.dragstudio {IMAGE_TYPES});;{PROJECT_FILTER};;Images ({IMAGE_TYPES})"
    ";;All files (*)"
)
EDIT_SCROLL_MIN = 72
"""The settings above the Drag button keep at least this much room (a row or two)."""
EDIT_DOCK_SHARE = 0.62
"""At first, the Edit dock takes about this share of the right-hand column (History the rest)."""
EDIT_SCROLL_WANTED = 200
"""...and get up to this much (prompt, Advanced, model) when the Edit dock is fitted."""
DEFAULT_SIZE = (1400, 900)
SCREEN_SHARE = 0.92
"""The first window takes at most this share of the available screen in each direction."""
BRUSH_STEP = 1.25
"""[ and ] scale the brush by this factor, so a few presses go from fine to broad."""


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None, host: EngineHost | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else QSettings()  # geometry only
        self.prefs = open_prefs(self.settings)
        self.document = Document()
        self.undo_stack = QUndoStack(self)
        self.actions = ActionRegistry(self)

        self._shown_once = False
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)

        self.canvas = CanvasView(self.document, self.undo_stack, self)
        self.setCentralWidget(self.canvas)

        self._build_actions()
        self._build_menus()
        self.dock_area = DockArea(self, self.view_menu)
        self.docks = self.dock_area.docks
        self._build_toolbars()
        self._build_docks()
        self._build_status_bar()
        self.lora_cache = LoraCache(limit_bytes=cache_limit_bytes(self.prefs))
        # The window parts get what they need, never the window as a MainWindow.
        frame = WindowFrame(
            window=self,
            actions=self.actions,
            docks=self.dock_area,
            status=self.statusBar(),
            file_menu=self.file_menu,
            help_menu=self.help_menu,
            prefs=self.prefs,
        )
        self.switch = DocumentSwitch(self.document, self.undo_stack, self.statusBar(), self.canvas)
        self.drag_ui = DragUI(
            frame,
            self,
            host or make_host(self.prefs, self.lora_cache),
            document=self.document,
            undo_stack=self.undo_stack,
            canvas=self.canvas,
            model_picker=self.model_picker,
            progress_slot=self.progress_slot,
            switch=self.switch,
            other_job=self._other_job,
        )
        self.drag_ui.host.memory = self.memory_combo.plan
        self.memory_combo.planChanged.connect(self._memory_plan_changed)
        self.file_controller = FileController(
            frame,
            self,
            document=self.document,
            undo_stack=self.undo_stack,
            switch=self.switch,
            cache=self.lora_cache,
            controller=self.drag_ui.controller,
            progress_status=self.drag_ui.progress.status,
            refresh_title=self._update_title,
        )
        self.generate_ui = GenerateUI(
            frame,
            self,
            self.drag_ui.controller,
            document=self.document,
            undo_stack=self.undo_stack,
            progress=self.drag_ui.progress,
            switch=self.switch,
            running_changed=self.drag_ui.update_enabled,
        )
        self.engine_ui = EngineUI(
            frame,
            lora_cache=self.lora_cache,
            current_host=lambda: self.drag_ui.host,
            set_host=self._set_host,
            document_lora=lambda: self.file_controller.bundled,
        )
        self.help_ui = HelpUI(frame, self)
        self.switch.on_opened(lambda _keep: self._update_enabled())
        self.switch.on_opened(lambda _keep: self._update_title())

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

    def _build_actions(self) -> None:
        a = self.actions.add
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
            act.setToolTip(f"{tip} ({shortcut_text(act.shortcuts())})")
            self.actions.register(name, act)

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
            "Show Mask O&verlay",
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
        for tool, text, key, tip in (
            (Tool.POINT, "&Points", "P", "Points: click a handle, then its target; drag to move"),
            (Tool.BRUSH, "Mask &Brush", "B", "Mask brush: paint the region that may change"),
            (Tool.ERASER, "Mask &Eraser", "E", "Mask eraser: protect a region from change"),
            (Tool.PAN, "P&an", "H", "Pan: drag the view (or hold Space, or use the middle button)"),
        ):
            act = a(
                f"tool_{tool.value}",
                text,
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
            if title == "&Help":
                self.help_menu = menu

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
        # The VAE's default is the model's own: "Reset to defaults" goes back to it too.
        self.parameters.reset_button.clicked.connect(lambda: self.model_picker.choose_vae(""))
        self.progress_slot = QVBoxLayout()
        """Where the Drag button, the progress panel and the result bar go (see drag_ui)."""
        self.progress_slot.setContentsMargins(0, 0, 0, 0)

        self.edit_panel = edit = QWidget()
        edit.setObjectName("editPanel")
        layout = QVBoxLayout(edit)
        layout.setContentsMargins(10, 8, 10, 4)
        layout.addWidget(self.parameters)
        layout.addSpacing(6)
        layout.addWidget(QLabel("Model"))
        layout.addWidget(self.model_picker)
        self.memory_combo = MemoryCombo(self.prefs)
        layout.addWidget(QLabel("GPU memory"))
        layout.addWidget(self.memory_combo)
        layout.addStretch(1)
        # The settings scroll; the Drag button, progress and preview below them never do, so
        # opening Advanced cannot push them out of view.
        scroll = QScrollArea()
        scroll.setObjectName("editScroll")
        scroll.setWidget(edit)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumHeight(EDIT_SCROLL_MIN)
        # Ignored: its (tall) size hint must not count, or the outer scroll below would scroll
        # the Drag part away to make room for settings that scroll anyway.
        scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Ignored)
        run = QWidget()
        run.setObjectName("runPanel")
        self.run_panel = run
        run_layout = QVBoxLayout(run)
        run_layout.setContentsMargins(10, 6, 10, 8)
        run_layout.addLayout(self.progress_slot)
        container = QWidget()
        container.setObjectName("editDockContents")
        outer = QVBoxLayout(container)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addWidget(scroll, 1)
        outer.addWidget(run, 0)
        # Only a window too small for the panel (a tiny or 2x-scaled screen) scrolls all of it;
        # otherwise the settings above absorb the squeeze and the Drag part stays whole.
        self.edit_dock_scroll = QScrollArea()
        self.edit_dock_scroll.setObjectName("editDockScroll")
        self.edit_dock_scroll.setWidget(container)
        self.edit_dock_scroll.setWidgetResizable(True)
        self.edit_dock_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.edit_dock_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.edit_dock = self.dock_area.add("Edit", "editDock", self.edit_dock_scroll)

        self.history_view = HistoryView(self.undo_stack)
        self.history_dock = self.dock_area.add("History", "historyDock", self.history_view)
        self.splitDockWidget(self.edit_dock, self.history_dock, Qt.Orientation.Vertical)
        self.dock_area.tab_with = self.history_dock  # Results and Generate go beside History

    def _memory_plan_changed(self, plan: str) -> None:
        self.drag_ui.host.memory = plan  # the next edit switches plans on the engine thread

    def _set_host(self, host: Any) -> None:
        """Settings → Engine chose another engine: drags and generations go to it."""
        host.memory = self.memory_combo.plan  # the GPU memory choice goes with every engine
        # Its controller (which runs generations too) and the background preparer follow.
        self.drag_ui.host = host

    def _other_job(self) -> str:
        """What holds the engine when no drag does, in words for the Drag button's reason."""
        generate = getattr(self, "generate_ui", None)  # built after the Drag part
        return "generation" if generate is not None and generate.running else "job"

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
            return self.file_controller.open_project(path)
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

        def load(document: Document) -> None:
            document.set_image(image, path)
            document.set_prompt("")  # the prompt describes a photo; this is another one

        self.switch.replace(load, message=f"Opened {Path(path).name}")
        self.file_controller.remember_recent(Path(path))
        self.prefs.update(last_dir=str(Path(path).resolve().parent))
        return True

    def show_error(self, title: str, message: str) -> None:
        QMessageBox.warning(self, title, message)

    def show_failure(self, failure: Failure) -> None:
        """A failed edit: message, suggestion, and the details behind "Show Details…"."""
        show_failure_dialog(self, failure)

    async def ask_missing_model(self, spec: str, failure: Failure) -> ModelChoice:
        return await ask_missing_model(self, spec, failure)

    def confirm_discard(self) -> bool:
        """Unsaved work before something replaces it: save it, drop it, or stay (False)."""
        answer = QMessageBox.question(
            self,
            "Save changes?",
            "The points, mask, settings and accepted results of this image are not saved in "
            "a project. Save them first?",
            QMessageBox.StandardButton.Save
            | QMessageBox.StandardButton.Discard
            | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Save,
        )
        if answer == QMessageBox.StandardButton.Save:
            return self.file_controller.save(wait=True)
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
            "DragDiffusion (Shi et al., CVPR 2024).</p>"
            f"<p>User guide: {docs_path()}<br>Keyboard shortcuts: Help ▸ Keyboard Shortcuts "
            "(F1).</p><p>Licensed under the Apache License 2.0.</p>",
        )

    # -- window ------------------------------------------------------------------------------

    def _restore_geometry(self) -> None:
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        restored = isinstance(geometry, QByteArray) and not geometry.isEmpty()
        if restored:
            self.restoreGeometry(geometry)
        self._restored_state = isinstance(state, QByteArray) and not state.isEmpty()
        if self._restored_state:
            self.restoreState(state)
        self.fit_to_screen(default=not restored)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            # After the first layout, which gives History as much height as Edit.
            QTimer.singleShot(0, self._first_fit)

    def _first_fit(self) -> None:
        """A saved layout is the user's; only the first ever gets the default share."""
        self.fit_edit_dock(share=0.0 if self._restored_state else EDIT_DOCK_SHARE)

    def fit_to_screen(self, *, default: bool = False, area: QRect | None = None) -> None:
        """Keep the window inside the available screen area (a saved size from a larger
        screen, or the default on a small or scaled one, would hang off its edges)."""
        if area is None:
            screen = self.screen() or QGuiApplication.primaryScreen()
            if screen is None:
                return
            area = screen.availableGeometry()
        if self.isMaximized() or self.isFullScreen():
            return
        frame = self.frameGeometry().size() - self.geometry().size()
        max_w = max(320, int(area.width() * SCREEN_SHARE) - frame.width())
        max_h = max(240, int(area.height() * SCREEN_SHARE) - frame.height())
        want_w, want_h = DEFAULT_SIZE if default else (self.width(), self.height())
        width, height = min(want_w, max_w), min(want_h, max_h)
        if default or (width, height) != (self.width(), self.height()):
            self.resize(width, height)
        geometry = self.frameGeometry()
        if default or not area.contains(geometry):
            geometry.moveCenter(area.center())
            left = max(area.left(), min(geometry.left(), area.right() - geometry.width()))
            top = max(area.top(), min(geometry.top(), area.bottom() - geometry.height()))
            self.move(left, top)

    def ensure_run_panel_visible(self) -> None:
        """A job started: the Edit dock (Drag/Cancel, progress, preview) must be on screen.

        The dock gets the height its contents need (room for the preview included) when it has
        less, taken from the docks below it; the run panel is then scrolled into view in case
        the window itself is too small for it."""
        if not self.edit_dock.isVisible():
            self.edit_dock.show()
        self.edit_dock.raise_()
        self.fit_edit_dock(preview=True)
        self.edit_dock_scroll.ensureWidgetVisible(self.run_panel, 0, 0)
        if self.drag_ui.progress.preview.isVisible():
            self.edit_dock_scroll.ensureWidgetVisible(self.drag_ui.progress.preview, 0, 0)

    def edit_dock_height_needed(self, *, preview: bool = False) -> int:
        """Dock height that shows the whole run panel (and the live preview while dragging)."""
        from dragstudio.panels.progress import PREVIEW_HEIGHT

        extra = (
            PREVIEW_HEIGHT + 6 if preview and not self.drag_ui.progress.preview.isVisible() else 0
        )
        title = self.edit_dock.height() - self.edit_dock_scroll.height()
        wanted = min(EDIT_SCROLL_WANTED, self.edit_panel.sizeHint().height())
        settings_height = max(EDIT_SCROLL_MIN, wanted)
        return settings_height + self.run_panel.sizeHint().height() + extra + max(title, 0)

    def fit_edit_dock(self, *, preview: bool = False, share: float = 0.0) -> None:
        """Grow the Edit dock to what it needs, or to ``share`` of the column if that is more."""
        if self.edit_dock.isFloating():
            return
        need = self.edit_dock_height_needed(preview=preview)
        column = self.edit_dock.height() + self.history_dock.height()
        need = max(need, int(column * share))
        have = self.edit_dock.height()
        if have >= need:
            return
        # Resizing one dock alone spreads the change over its neighbours unpredictably; give
        # the dock below (History, or whichever is tabbed in front) exactly what Edit gives up.
        below = [
            d
            for d in self.docks
            if d is not self.edit_dock
            and d.isVisible()
            and not d.isFloating()
            and self.dockWidgetArea(d) == self.dockWidgetArea(self.edit_dock)
            and d.y() > self.edit_dock.y()
        ]
        if below:
            other = below[0]
            rest = max(other.minimumSizeHint().height(), other.height() - (need - have))
            self.resizeDocks([self.edit_dock, other], [need, rest], Qt.Orientation.Vertical)
        else:
            self.resizeDocks([self.edit_dock], [need], Qt.Orientation.Vertical)

    def ask_quit_during_job(self, what: str) -> bool:
        """Quitting while a job runs: True to cancel it and quit."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle(f"Stop the {what} and quit?")
        box.setText(f"A {what} is running.")
        box.setInformativeText("Quitting stops it; the open image stays as it was.")
        stop = box.addButton(
            f"Stop {what.capitalize()} and Quit", QMessageBox.ButtonRole.AcceptRole
        )
        keep = box.addButton("Keep Working", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(keep)
        box.exec()  # closeEvent is plain Qt code, not a coroutine: a modal loop is fine here
        return box.clickedButton() is stop

    def running_job(self) -> str:
        """What runs on the engine now, in words ("" when nothing does)."""
        if self.drag_ui.controller.busy:
            return "drag"
        if self.generate_ui.running:
            return "generation"
        return "job" if self.drag_ui.host.busy else ""

    def closeEvent(self, event: QCloseEvent) -> None:
        job = self.running_job()
        if job and not self.ask_quit_during_job(job):
            event.ignore()
            return
        if not self.file_controller.may_close():  # "Save changes?" may still say Cancel
            event.ignore()
            return
        if job:
            self.drag_ui.cancel()
            self.generate_ui.shutdown()
        self.file_controller.shutdown()
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
