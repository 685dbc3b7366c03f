"""One orthogonal slice view: raw image, overlay images and a crosshair, with ilastik's navigation.

Wheel scrolls slices, Ctrl+wheel zooms, dragging pans, a click moves the crosshair, Up/Down and
PageUp/PageDown step slices. With the brush on, the left button paints: the view says where it went down,
each pixel the mouse moved to with it held, and when it came up. The view paints what it is given; it never
computes or reads.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui

# rows, columns, normal: as ilastik lays them out, xz below xy shares its x, yz beside xy shares its y
PLANES = {"xy": ("y", "x", "z"), "xz": ("z", "x", "y"), "yz": ("y", "z", "x")}


class _ViewBox(pg.ViewBox):
    """A ViewBox whose plain wheel steps slices (Ctrl+wheel zooms, as in ilastik)."""

    def __init__(self, view: SliceView):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self._view = view

    def wheelEvent(self, ev, axis=None):  # noqa: N802 - Qt's name
        if ev.modifiers() & QtCore.Qt.ControlModifier:
            super().wheelEvent(ev, axis)
        else:
            self._view.slice_step.emit(1 if ev.delta() > 0 else -1)
            ev.accept()

    def mouseClickEvent(self, ev):  # noqa: N802 - Qt's name
        if ev.button() == QtCore.Qt.LeftButton:
            point = self.mapSceneToView(ev.scenePos())
            self._view.pointed.emit(int(point.y()), int(point.x()))
            ev.accept()
        else:
            super().mouseClickEvent(ev)


def add_scale_bars(views: list[SliceView], pixel_size: tuple[float, str] | None) -> None:
    """Scale bars on the views whose columns run along x, from the file's pixel size (none without one)."""
    for view in views:
        if pixel_size and view.cols_axis == "x":
            view.set_scale_bar(*pixel_size)


def nice_length(target: float) -> float:
    """1, 2 or 5 times a power of ten, the largest not above ``target`` (for scale bars)."""
    power = 10.0 ** np.floor(np.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


class SliceView(pg.GraphicsView):
    """Shows one plane (``xy``, ``xz`` or ``yz``) of the volume."""

    slice_step = QtCore.pyqtSignal(int)
    pointed = QtCore.pyqtSignal(int, int)  # row, column in image coordinates
    hovered = QtCore.pyqtSignal(int, int)  # row, column under the mouse; (-1, -1) when off the image
    # painting: the left button went down on (row, column), moved on with it held, came up (the stroke ends)
    brush_pressed = QtCore.pyqtSignal(int, int)
    brush_moved = QtCore.pyqtSignal(int, int)
    brush_released = QtCore.pyqtSignal()
    stroked = QtCore.pyqtSignal(object)  # the (row, column) points of a whole stroke at once (scripts, benchmarks)
    range_changed = QtCore.pyqtSignal()

    def __init__(self, plane: str, shape: tuple[int, int], parent=None):
        super().__init__(parent, background="#202124")
        self.plane, self.shape = plane, shape
        self.setMinimumSize(160, 160)  # never crushed by the side panel
        self.scale_bar: pg.ScaleBar | None = None
        self.painting = False  # left drags paint labels instead of panning
        self.brushing = False  # the left button is down on a stroke
        self.rows_axis, self.cols_axis, self.normal_axis = PLANES[plane]
        self.box = _ViewBox(self)
        self.setCentralItem(self.box)
        self.raw = pg.ImageItem(axisOrder="row-major")
        self.box.addItem(self.raw)
        self.overlays: dict[str, pg.ImageItem] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self._dirty: set[str] = set()
        self._flush_timer = QtCore.QTimer(self, singleShot=True, interval=0)
        self._flush_timer.timeout.connect(self.flush)
        pen = pg.mkPen((90, 200, 255, 160), width=1)
        self.h_line = pg.InfiniteLine(angle=0, pen=pen, movable=False)
        self.v_line = pg.InfiniteLine(angle=90, pen=pen, movable=False)
        for line in (self.h_line, self.v_line):
            line.setZValue(1000)
            self.box.addItem(line)
        self.title = pg.TextItem(plane, color=(200, 200, 200), anchor=(0, 0))
        self.title.setParentItem(self.box)
        self.box.setRange(xRange=(0, shape[1]), yRange=(0, shape[0]), padding=0.02)
        self._mouse_at = None  # scene position of the mouse over this view, None when it left
        self.box.sigRangeChanged.connect(lambda *_: self.range_changed.emit())
        self.box.sigRangeChanged.connect(lambda *_: self._mouse_at is not None and self._mouse_moved(self._mouse_at))
        self.scene().sigMouseMoved.connect(self._mouse_moved)
        self.setFocusPolicy(QtCore.Qt.StrongFocus)

    def keyPressEvent(self, ev: QtGui.QKeyEvent) -> None:  # noqa: N802 - Qt's name
        steps = {QtCore.Qt.Key_Up: 1, QtCore.Qt.Key_Down: -1, QtCore.Qt.Key_PageUp: 10, QtCore.Qt.Key_PageDown: -10}
        if ev.key() in steps:
            self.slice_step.emit(steps[ev.key()])
        else:
            super().keyPressEvent(ev)

    def mousePressEvent(self, ev: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if self.painting and ev.button() == QtCore.Qt.LeftButton:  # the stroke starts here, not after a drag
            self.brushing = True
            self.brush_pressed.emit(*self._pixel(ev.pos()))
            ev.accept()
        else:
            super().mousePressEvent(ev)

    def mouseMoveEvent(self, ev: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if self.brushing:
            self.brush_moved.emit(*self._pixel(ev.pos()))
        super().mouseMoveEvent(ev)  # hovering goes on (the scene saw no press: it neither pans nor drags)

    def mouseReleaseEvent(self, ev: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if self.brushing and ev.button() == QtCore.Qt.LeftButton:
            self.brushing = False
            self.brush_moved.emit(*self._pixel(ev.pos()))
            self.brush_released.emit()
            ev.accept()
        else:
            super().mouseReleaseEvent(ev)

    def _pixel(self, pos: QtCore.QPoint) -> tuple[int, int]:
        """The image's (row, column) under a point of the widget (outside the image too)."""
        point = self.box.mapSceneToView(self.mapToScene(pos))
        return int(np.floor(point.y())), int(np.floor(point.x()))

    def leaveEvent(self, ev) -> None:  # noqa: N802 - Qt's name
        self._mouse_at = None
        self.hovered.emit(-1, -1)
        super().leaveEvent(ev)

    def _mouse_moved(self, scene_pos) -> None:
        """Say which pixel is under the mouse (again after a pan or zoom moved the image under it)."""
        self._mouse_at = scene_pos
        point = self.box.mapSceneToView(scene_pos)
        row, col = int(np.floor(point.y())), int(np.floor(point.x()))
        inside = 0 <= row < self.shape[0] and 0 <= col < self.shape[1]
        self.hovered.emit(row if inside else -1, col if inside else -1)

    def set_scale_bar(self, pixel_size: float, unit: str) -> None:
        """A scale bar in the lower right corner: a round length about a fifth of the image's width."""
        length = nice_length(self.shape[1] * pixel_size / 5)
        self.scale_bar = pg.ScaleBar(size=length / pixel_size, suffix="")
        self.scale_bar.setParentItem(self.box)
        self.scale_bar.anchor((1, 1), (1, 1), offset=(-20, -20))
        self.scale_bar.text.setText(f"{length:g} {unit}")

    def fit(self) -> None:
        """Show the whole image, as when the project opened."""
        self.box.setRange(xRange=(0, self.shape[1]), yRange=(0, self.shape[0]), padding=0.02)

    def visible_rect(self) -> tuple[int, int, int, int]:
        """The image rows and columns currently on screen: (row0, row1, col0, col1), clipped."""
        (x0, x1), (y0, y1) = self.box.viewRange()
        rows, cols = self.shape
        r0, r1 = max(0, int(np.floor(y0))), min(rows, int(np.ceil(y1)))
        c0, c1 = max(0, int(np.floor(x0))), min(cols, int(np.ceil(x1)))
        return (r0, max(r1, r0 + 1), c0, max(c1, c0 + 1)) if r0 < rows and c0 < cols else (0, rows, 0, cols)

    def set_crosshair(self, row: int, col: int) -> None:
        """Put the crosshair on a voxel's centre."""
        self.h_line.setValue(row + 0.5)
        self.v_line.setValue(col + 0.5)

    def set_raw(self, plane: np.ndarray, levels: tuple[float, float]) -> None:
        """The raw plane ``(rows, cols)``."""
        self.raw.setImage(plane, levels=levels, autoLevels=False)

    def set_raw_style(self, visible: bool, opacity: float) -> None:
        """Show, hide or fade the raw plane (the Raw layer's checkbox and opacity)."""
        self.raw.setVisible(visible)
        self.raw.setOpacity(opacity)

    def set_colormap(self, name: str) -> None:
        """The raw plane's colour map: ``grey`` or one of pyqtgraph's (viridis, magma, ...)."""
        self.raw.setLookupTable(None if name == "grey" else pg.colormap.get(name).getLookupTable(nPts=256))

    def set_levels(self, levels: tuple[float, float]) -> None:
        """Change the raw display range."""
        self.raw.setLevels(levels)

    def overlay(self, name: str, order: int) -> np.ndarray:
        """The RGBA buffer of overlay ``name`` (created transparent); paint into it, then :meth:`refresh`."""
        if name not in self.overlays:
            item = pg.ImageItem(axisOrder="row-major")
            item.setZValue(10 + order)
            self.box.addItem(item)
            self.overlays[name] = item
            self.buffers[name] = np.zeros(self.shape + (4,), np.uint8)
        return self.buffers[name]

    def set_order(self, name: str, order: int) -> None:
        """Draw overlay ``name`` above those of lower ``order`` (and below the labels)."""
        if name in self.overlays:
            self.overlays[name].setZValue(10 + order)

    def remove_overlay(self, name: str) -> None:
        """Take overlay ``name`` off the view (a layer that no longer exists)."""
        item = self.overlays.pop(name, None)
        if item is not None:
            self.box.removeItem(item)
            del self.buffers[name]
            self._dirty.discard(name)

    def clear_overlay(self, name: str) -> None:
        """Make an overlay fully transparent."""
        if name in self.buffers:
            self.buffers[name][...] = 0
            self.refresh(name)

    def refresh(self, name: str) -> None:
        """Show the current content of an overlay's buffer at the next turn of the event loop.

        Blocks arriving together are thus uploaded as one image instead of one each.
        """
        self._dirty.add(name)
        self._flush_timer.start()

    def flush(self) -> None:
        """Show the overlays changed since the last flush now."""
        dirty, self._dirty = self._dirty, set()
        for name in dirty:
            self.overlays[name].setImage(self.buffers[name], autoLevels=False, levels=(0, 255))

    def show_overlay(self, name: str, visible: bool) -> None:
        """Show or hide an overlay."""
        if name in self.overlays:
            self.overlays[name].setVisible(visible)
