"""The main window: open projects, browse them in orthogonal views, watch the workers."""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from PyQt5 import QtCore, QtGui, QtWidgets

from backend.compute.threshold import ThresholdSettings
from backend.service.gateway_status import GatewayStatus
from ilastik_desktop._qt.dialogs.export import ExportDialog
from ilastik_desktop._qt.dialogs.serve import ServeDialog
from ilastik_desktop._qt.menus import add_help_menu, add_view_menu, add_view_shortcuts
from ilastik_desktop._qt.object_line import ObjectLine
from ilastik_desktop._qt.opening import ProjectOpening
from ilastik_desktop._qt.panels import scrolled
from ilastik_desktop._qt.panels.lanes import LaneSwitcher
from ilastik_desktop._qt.panels.layers import LayersPanel
from ilastik_desktop._qt.panels.project import ProjectPanel, info_box, legend_text
from ilastik_desktop._qt.panels.threshold import ThresholdPanel
from ilastik_desktop._qt.panels.workers import WorkersPanel, workers_summary
from ilastik_desktop._qt.pending_bar import PendingBar
from ilastik_desktop._qt.training import TrainingBinding
from ilastik_desktop.runtime.document import Document
from ilastik_desktop.runtime.opening import ProjectOpener
from ilastik_desktop.runtime.services import Services
from viewer.bridge import GuiBridge
from viewer.loader import PlaneLoader
from viewer.model import OBJECTS, ViewerModel, default_layers
from viewer.readout import voxel_readout
from viewer.slice_view import SliceView, add_scale_bars

log = logging.getLogger(__name__)
SIDE_WIDTH_KEY = "window/side_width"  # the side panel's width, kept between runs
DEFAULT_SIDE_WIDTH = 500  # every tab's full title and the layers panel fit (360 px hid the Workers tab)


class MainWindow(ProjectOpening, QtWidgets.QMainWindow):
    """One window showing one project lane at a time (the lane switcher shows another)."""

    opened = QtCore.pyqtSignal(object)  # the Document, once it is on screen
    failed = QtCore.pyqtSignal(str)

    def __init__(self, services: Services, settings: QtCore.QSettings | None = None, interactive: bool = True):
        super().__init__()
        self.services, self.interactive = services, interactive
        self.settings = settings or QtCore.QSettings("ilastik-desktop", "ilastik-desktop")
        self.bridge = GuiBridge(self)
        self.opener = ProjectOpener(services, self.settings, self.bridge.post)
        self.bind_opener()
        # status polls ask Redis, which may hang while it is down: never on the thread that opens projects
        self.status_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="window-status")
        self._status_poll = None
        self.document: Document | None = None
        self.loader: PlaneLoader | None = None
        self.model: ViewerModel | None = None
        self.views: list[SliceView] = []
        self._pointer: tuple[SliceView, int, int] | None = None  # the view and pixel under the mouse
        self.export_dialog: ExportDialog | None = None
        self.training: TrainingBinding | None = None
        self.setWindowTitle("ilastik-desktop")
        self.setAcceptDrops(True)
        self.serve_dialog = ServeDialog(services, self.bridge, self)
        self._build_menu()
        self._build_status()
        self.setCentralWidget(self._placeholder())
        self.tabs = QtWidgets.QTabWidget(usesScrollButtons=False, elideMode=QtCore.Qt.ElideRight)  # every tab
        # stays reachable in a narrow panel: the titles shorten, no tab hides behind scroll arrows
        self.workers_panel = WorkersPanel(services, self.bridge)
        # the workers panel's one scroll area for the window's life: a second area over the same panel made
        # both resize it to their own size, back and forth, until the stack overflowed (SIGSEGV)
        self.workers_area = scrolled(self.workers_panel)
        self.tabs.addTab(self.workers_area, "Workers")
        self.side = QtWidgets.QDockWidget("Project", self)
        self.side.setObjectName("side")
        self.side.setFeatures(QtWidgets.QDockWidget.DockWidgetMovable | QtWidgets.QDockWidget.DockWidgetClosable)
        self.side.setWidget(self.tabs)
        self.addDockWidget(QtCore.Qt.LeftDockWidgetArea, self.side)
        self.side_width = self._remembered_side_width()  # kept when another project opens, and between runs
        self.resizeDocks([self.side], [self.side_width], QtCore.Qt.Horizontal)
        self.lane_switcher = LaneSwitcher(self)
        self.addToolBar(self.lane_switcher)
        add_view_menu(self)
        add_help_menu(self)
        add_view_shortcuts(self)
        self.status_timer = QtCore.QTimer(self, interval=round(services.config.window.status_poll_s * 1000))
        self.status_timer.timeout.connect(self._poll_status)
        self.status_timer.start()

    # -- building -------------------------------------------------------------------------------------
    def _build_status(self) -> None:
        self.cursor_label, self.object_line = QtWidgets.QLabel(), ObjectLine(self.bridge)
        self.statusBar().addWidget(self.cursor_label)
        self.statusBar().addWidget(self.object_line)
        self.workers_label, self.cache_label = QtWidgets.QLabel("workers: -"), QtWidgets.QLabel("cache: -")
        self.pending = PendingBar()
        self.web_label = QtWidgets.QLabel(visible=False)
        self.serve_dialog.serving.connect(self._show_serving)
        for widget in (self.web_label, self.workers_label, self.cache_label, self.pending):
            self.statusBar().addPermanentWidget(widget)

    @staticmethod
    def _placeholder() -> QtWidgets.QWidget:
        label = QtWidgets.QLabel("Open an ilastik project (File > Open, or drop a .ilp file here)")
        label.setAlignment(QtCore.Qt.AlignCenter)
        label.setStyleSheet("color: #888; font-size: 15px;")
        return label

    def _show(self, document: Document) -> None:
        """Show ``document``: a project opened, or another lane of the project shown (its training kept)."""
        switching = self.training is not None and document is self.training.controller.document
        threshold = self.threshold_panel.settings() if switching else document.threshold
        tab = self.tabs.currentIndex() if switching else None  # the user stays in the tab they were in
        if self.document is not None:
            self._remember_side_width()
        if switching:
            self._leave_document()
        else:
            self.close_document()
        self.document = document
        source = document.source
        layers = ([dataclasses.replace(layer) for layer in self.model.layers] if switching  # as the user set them
                  else default_layers(document.project.label_names, document.project.label_colors))
        self.model = ViewerModel(source.spatial_shape, source.channels, layers, document.display_range)
        self.setCentralWidget(self._viewer_area())
        self.loader = PlaneLoader(self.model, document.gateway, self.views, self.bridge, threshold, self,
                                  refresh_delay_s=self.services.config.window.refresh_delay_s)
        self.loader.progress.connect(self.pending.show_visible)
        shown_ms = round(1000 * self.services.config.window.problem_message_s)
        self.loader.failed.connect(lambda text: self.statusBar().showMessage(text, shown_ms))
        self.object_line.bind(document.gateway)
        self.loader.progress.connect(lambda _count: self._refresh_readout())  # values arrived or changed
        self._fill_tabs(document, threshold)
        if tab is not None:
            self.tabs.setCurrentIndex(tab)
        self._keep_side_width()
        self.model.position_changed.connect(lambda _axis: self._sync_crosshair())
        self.model.position_changed.connect(lambda _axis: self._refresh_readout())
        self._sync_crosshair()
        self.setWindowTitle(f"{os.path.basename(document.project.path)} - ilastik-desktop")
        nickname = document.project.lanes[document.lane].nickname
        self.statusBar().showMessage(f"showing lane {document.lane}: {nickname}" if switching
                                     else f"opened {document.project.path}", 3000)
        self.export_action.setEnabled(True)
        self.serve_action.setEnabled(True)
        self.save_action.setEnabled(True)
        self.save_as_action.setEnabled(True)
        self.add_images_action.setEnabled(True)
        self.serve_dialog.set_document(document, self.threshold_panel.settings())
        self.change_raw_action.setEnabled(True)
        self.forget_raw_action.setEnabled(self.opener.remembered(document.project.path) is not None)
        self.loader.refresh()
        self.opened.emit(document)

    def _remembered_side_width(self) -> int:
        try:
            return int(self.settings.value(SIDE_WIDTH_KEY, DEFAULT_SIDE_WIDTH))
        except (TypeError, ValueError):  # not a number: a settings file edited by hand
            return DEFAULT_SIDE_WIDTH

    def _remember_side_width(self) -> None:
        """Keep the width the user gave the side panel (the last one shown while it is collapsed)."""
        if self.side.isVisible():
            self.side_width = self.side.width()
        self.settings.setValue(SIDE_WIDTH_KEY, self.side_width)

    def _keep_side_width(self) -> None:
        """Give the side panel back its width once the new views are laid out (they would take it otherwise)."""
        width = self.side_width  # applied after the layout that the new central widget triggers
        QtCore.QTimer.singleShot(0, lambda: self.resizeDocks([self.side], [width], QtCore.Qt.Horizontal))

    def _viewer_area(self) -> QtWidgets.QWidget:
        t, z, y, x = self.model.shape
        planes = {"xy": (y, x), "yz": (y, z), "xz": (z, x)} if self.model.volumetric else {"xy": (y, x)}
        self.views = [SliceView(plane, shape) for plane, shape in planes.items()]
        area = QtWidgets.QWidget()
        grid = QtWidgets.QGridLayout(area)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        for i in (0, 1) if self.model.volumetric else ():  # the views share the space equally
            grid.setColumnStretch(i, 1)
            grid.setRowStretch(i, 1)
        if self.model.volumetric:  # panning or zooming one moves the other along the shared axis
            self.views[1].box.setYLink(self.views[0].box)
            self.views[2].box.setXLink(self.views[0].box)
        add_scale_bars(self.views, self.document.source.pixel_size)
        for view, cell in zip(self.views, [(0, 0), (0, 1), (1, 0)]):
            grid.addWidget(view, *cell)
            axis = view.normal_axis if self.model.volumetric or t == 1 else "t"  # 2D+t: the wheel steps time
            view.slice_step.connect(lambda d, a=axis: self.loader.step(a, d))
            view.pointed.connect(lambda r, c, v=view: self._point(v, r, c))
            view.hovered.connect(lambda r, c, v=view: self._hover(v, r, c))
        self.position_label = QtWidgets.QLabel()
        self.position_label.setAlignment(QtCore.Qt.AlignCenter)
        if self.model.volumetric:
            project = self.document.project
            self.legend = QtWidgets.QLabel(legend_text(project.label_names, project.label_colors))
            grid.addWidget(info_box(self.position_label, self.legend), 1, 1)
        if t > 1:
            self.time_slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, minimum=0, maximum=t - 1)
            time_label = QtWidgets.QLabel(f"time 0 / {t - 1}")
            self.time_slider.valueChanged.connect(lambda v: self.model.move("t", v))
            self.time_slider.valueChanged.connect(lambda v: time_label.setText(f"time {v} / {t - 1}"))
            self.time_slider.setTickPosition(QtWidgets.QSlider.TicksBelow)
            self.model.position_changed.connect(lambda axis: axis == "t" and self.time_slider.setValue(
                self.model.position[0]))  # the wheel and Alt+arrows move it too
            row = QtWidgets.QHBoxLayout()
            row.addWidget(time_label)
            row.addWidget(self.time_slider)
            grid.addLayout(row, 2, 0, 1, 2)
        return area

    def _fill_tabs(self, document: Document, threshold: ThresholdSettings) -> None:
        self._clear_tabs()
        project = ProjectPanel()
        project.show_document(document)
        loader = self.loader  # the panel's, even while another project replaces it
        self.layers_panel = LayersPanel(self.model, lambda: loader.raw_plane("xy"), document.display_range)
        loader.settled.connect(self.layers_panel.refresh_histogram)
        self._threshold_panel(threshold)
        if self.training is None:
            self.training = TrainingBinding(self, document, self)
            self.lane_switcher.bind(self.training.controller)
        else:
            self.training.show_lane(document)
            self.lane_switcher.refresh()
        for widget, title in ((project, "Project"), (self.training.panel, "Training"), (self.layers_panel, "Layers"),
                              (self.threshold_panel, "Thresholding")):
            self.tabs.addTab(scrolled(widget), title)
        self.tabs.addTab(self.workers_area, "Workers")

    def _clear_tabs(self) -> None:
        """Take every tab off and delete the previous project's panels with their scroll areas; the workers
        tab's area is kept, and the Training tab's panel when another lane is shown (QTabWidget.clear() deletes
        nothing: two live scroll areas over one panel resized it in turn without end)."""
        kept = self.training.panel if self.training is not None else None  # another lane: the same Training tab
        while self.tabs.count():
            area = self.tabs.widget(0)
            self.tabs.removeTab(0)
            if area is self.workers_area:
                continue
            panel = area.takeWidget()  # no scroll area left filtering a panel that is shown again elsewhere
            if panel is not None and panel is not kept:
                panel.deleteLater()
            area.deleteLater()

    def _threshold_panel(self, threshold: ThresholdSettings) -> None:
        self.threshold_panel = ThresholdPanel(threshold, self.document.project.label_names, self.model.volumetric,
                                              self.services.config.window.threshold_pause_s)
        self.threshold_panel.changed.connect(self.loader.set_threshold)
        self.threshold_panel.changed.connect(lambda _settings: self._show_objects())
        self.threshold_panel.changed.connect(self.serve_dialog.set_threshold)
        self.threshold_panel.changed.connect(lambda _settings: self._thresholds_edited())

    def _show_objects(self) -> None:
        """Turn the Objects layer on once the thresholds change (it starts off), as ilastik 1.4 shows its
        objects, and say so."""
        if not self.model.layer(OBJECTS).visible:
            self.model.set_layer(OBJECTS, visible=True)
            live = "" if self.model.live else "; Live update is off: turn it on (Layers tab) to compute them"
            self.statusBar().showMessage(f"Objects layer turned on to show the thresholded objects{live}", 8000)

    def _thresholds_edited(self) -> None:
        if self.training is not None:  # they are saved with the project: quitting now asks to save them
            self.training.controller.dirty = True

    def show_classes(self) -> None:
        """Show the document's classes as they are now (added, renamed, recoloured or deleted); the layers
        panel follows the model by itself."""
        project = self.document.project
        self.model.set_classes(project.label_names, project.label_colors)
        if self.model.volumetric:
            self.legend.setText(legend_text(project.label_names, project.label_colors))
        old = self.threshold_panel.settings()
        last = len(project.label_names) - 1
        settings = dataclasses.replace(old, channel=min(old.channel, last), core_channel=min(old.core_channel, last))
        index = next(i for i in range(self.tabs.count()) if self.tabs.tabText(i) == "Thresholding")
        old_tab = self.tabs.widget(index)
        self._threshold_panel(settings)
        self.tabs.removeTab(index)
        self.tabs.insertTab(index, scrolled(self.threshold_panel), "Thresholding")
        old_tab.deleteLater()
        if settings != old:
            self.loader.set_threshold(settings)
            self.serve_dialog.set_threshold(settings)
        self._refresh_readout()

    def open_export(self) -> ExportDialog:
        """Show the export dialog for the open project, with the thresholding panel's settings."""
        dialog = self.export_dialog = ExportDialog(self.document, self.threshold_panel.settings(), self.bridge, self,
                                                   self.export_dialog)  # its source and format chosen again
        dialog.show()
        return dialog

    def open_serve(self) -> ServeDialog:
        """Show the dialog that serves the open project over HTTP."""
        self.serve_dialog.show()
        self.serve_dialog.raise_()
        return self.serve_dialog

    def _show_serving(self, url: str) -> None:
        self.web_label.setText(f"serving {url}")
        self.web_label.setVisible(bool(url))

    def _point(self, view: SliceView, row: int, col: int) -> None:
        self.model.move(view.rows_axis, row)
        self.model.move(view.cols_axis, col)

    def _hover(self, view: SliceView, row: int, col: int) -> None:
        """Show the voxel under the mouse with its raw value and the results painted there."""
        self._pointer = (view, row, col) if row >= 0 else None
        self._refresh_readout()

    def _refresh_readout(self) -> None:
        """The readout of the voxel under the mouse, for the current slice, time and painted values."""
        self.object_line.point(self.model, self.loader, self._pointer)
        if self._pointer is None or self.loader is None:
            self.cursor_label.clear()
            return
        view, row, col = self._pointer
        self.cursor_label.setText(voxel_readout(self.model, self.loader, view, row, col,
                                                self.document.project.label_names, object_ids=False))

    def _sync_crosshair(self) -> None:
        position = dict(zip("tzyx", self.model.position))
        for view in self.views:
            view.set_crosshair(position[view.rows_axis], position[view.cols_axis])
        self.position_label.setText("t {t}   z {z}   y {y}   x {x}".format(**position))

    # -- status ---------------------------------------------------------------------------------------
    def _poll_status(self) -> None:
        self.workers_panel.show_status(self.services.executor.status())
        polling = self._status_poll
        if self.document is not None and (polling is None or polling.done()):  # never queue polls up
            gateway = self.document.gateway
            self._status_poll = self.status_io.submit(lambda: self.bridge.post(self._show_status, gateway.status()))

    def _show_status(self, status: GatewayStatus) -> None:
        looked_up = status.hits + status.misses
        rate = f"{100 * status.hits / looked_up:.0f} %" if looked_up else "-"
        memory = status.cache_memory_mb
        self.workers_label.setText(workers_summary(status.executor, self.services.compiling_kernels))
        self.pending.show_all(status.blocks_in_progress)
        self.cache_label.setText(f"cache hits {rate}, {memory if memory is not None else '-'} MB")

    def close_document(self) -> None:
        """Stop showing the current project and release its gateways."""
        self._leave_document()
        if self.training is not None:
            self.training.close()
            self.training = None
            self.lane_switcher.bind(None)
        if self.document is not None:
            self.document.close()
            self.document = None

    def _leave_document(self) -> None:
        """Stop showing the current lane (its document stays open, and served if it was)."""
        if self.loader is not None:
            self.loader.close()
            self.loader = None
        self.pending.reset()
        self._pointer = None
        self.object_line.unbind()
        self.cursor_label.clear()  # never the previous project's classes

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt's name
        if self.training is not None and not self.training.may_discard(self.interactive, "quitting", self.close):
            event.ignore()
            return
        exporting = self.export_dialog is not None and self.export_dialog.running()
        if exporting and self.interactive and QtWidgets.QMessageBox.question(
                self, "ilastik-desktop", "An export is running. Quit and discard it?") != QtWidgets.QMessageBox.Yes:
            event.ignore()
            return
        batch = getattr(self, "batch_dialog", None)
        batching = batch is not None and batch.running()
        if batching and self.interactive and QtWidgets.QMessageBox.question(
                self, "ilastik-desktop", "A batch is running. Quit and cancel it?") != QtWidgets.QMessageBox.Yes:
            event.ignore()
            return
        if exporting:
            self.export_dialog.close()  # cancels it and removes its partial output
        if batching and not batch.finish():
            log.warning("the batch did not stop within %.0f s; the partial output of the file being written may "
                        "remain", self.services.config.window.batch_stop_s)
        self._remember_side_width()
        self.status_timer.stop()
        self.workers_panel.shutdown()
        self.opener.close()
        self.status_io.shutdown(wait=True, cancel_futures=True)
        self.serve_dialog.shutdown()
        self.close_document()
        super().closeEvent(event)
