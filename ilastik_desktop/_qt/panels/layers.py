"""The layers panel: visibility and opacity (with its value) per layer, live update, and the raw data's
display: channel, colour map, display range (low never above high) over the histogram of the raw data
shown, automatic and original range."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PyQt5 import QtCore, QtWidgets

from backend.service.rendering import percentile_range
from ilastik_desktop._qt.panels.histogram import RangeHistogram
from ilastik_desktop._qt.panels.project import narrow
from viewer.model import CLASSES_CHANGED, COLORMAPS, ORDER_CHANGED, RAW, ViewerModel


class LayersPanel(QtWidgets.QWidget):
    """Edits the model's layers and raw display; ``raw_plane()`` gives the raw values the xy view shows."""

    def __init__(self, model: ViewerModel, raw_plane: Callable[[], np.ndarray | None],
                 original: tuple[float, float], parent=None):
        super().__init__(parent)
        self.model, self.raw_plane, self.original = model, raw_plane, original
        grid = QtWidgets.QGridLayout(self)
        grid.setContentsMargins(4, 4, 4, 4)
        self.rows: QtWidgets.QWidget | None = None
        self._fill_rows(grid)
        row = 1
        self.live = QtWidgets.QCheckBox("Live update", checked=model.live)
        self.live.setToolTip("compute overlays as you browse (like ilastik's Live Update)")
        self.live.toggled.connect(model.set_live)
        grid.addWidget(self.live, row, 0, 1, 3)
        self.channel = QtWidgets.QSpinBox(minimum=0, maximum=max(model.channels - 1, 0))
        self.channel.valueChanged.connect(model.set_channel)
        self.channel.setEnabled(model.channels > 1)
        self.colormap = QtWidgets.QComboBox()
        self.colormap.addItems(COLORMAPS)
        self.colormap.currentTextChanged.connect(model.set_colormap)
        for offset, (label, widget) in enumerate((("Raw channel", self.channel), ("Raw colours", self.colormap))):
            grid.addWidget(QtWidgets.QLabel(label), row + 1 + offset, 0)
            grid.addWidget(widget, row + 1 + offset, 1, 1, 2)
        grid.addWidget(QtWidgets.QLabel("Display range"), row + 3, 0)
        limits, buttons = self._range_rows()  # two rows: in one, Reset was cut off in a 360 px side panel
        grid.addLayout(limits, row + 3, 1, 1, 2)
        grid.addLayout(buttons, row + 4, 1, 1, 2)
        self.histogram = RangeHistogram()
        self.histogram.set_range(*model.contrast)
        self.histogram.dragged.connect(lambda low, high: self.set_range((low, high)))
        grid.addWidget(self.histogram, row + 5, 0, 1, 3)
        grid.setRowStretch(row + 6, 1)
        narrow(self)
        model.layers_changed.connect(self._sync)

    def _fill_rows(self, grid: QtWidgets.QGridLayout) -> None:
        """One row per layer, in drawing order (the last is drawn on top)."""
        if self.rows is not None:
            grid.removeWidget(self.rows)
            self.rows.deleteLater()
        self.rows = QtWidgets.QWidget()
        rows = QtWidgets.QGridLayout(self.rows)
        rows.setContentsMargins(0, 0, 0, 0)
        self.checks: dict[str, QtWidgets.QCheckBox] = {}
        self.sliders: dict[str, QtWidgets.QSlider] = {}
        self.opacities: dict[str, QtWidgets.QLabel] = {}
        for row, layer in enumerate(self.model.layers):
            self._layer_row(rows, row, layer)
        grid.addWidget(self.rows, 0, 0, 1, 3)

    def _layer_row(self, grid: QtWidgets.QGridLayout, row: int, layer) -> None:
        check = QtWidgets.QCheckBox(layer.name, checked=layer.visible)
        check.toggled.connect(lambda on, n=layer.name: self.model.set_layer(n, visible=on))
        slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, minimum=0, maximum=100, value=round(layer.opacity * 100))
        slider.setToolTip("opacity")
        value = QtWidgets.QLabel(f"{slider.value()} %", minimumWidth=40)
        slider.valueChanged.connect(lambda v, n=layer.name: self.model.set_layer(n, opacity=v / 100))
        slider.valueChanged.connect(lambda v, label=value: label.setText(f"{v} %"))
        for column, widget in enumerate((check, slider, value)):
            grid.addWidget(widget, row, column)
        if layer.kind != RAW:  # the raw data stays at the bottom
            for column, (text, delta, tip) in enumerate((("\u25b2", -1, "draw below the layer listed above"),
                                                         ("\u25bc", 1, "draw above the layer listed below")), 3):
                button = QtWidgets.QToolButton(text=text, toolTip=tip, autoRaise=True)
                button.clicked.connect(lambda _checked, n=layer.name, d=delta: self.model.move_layer(n, d))
                grid.addWidget(button, row, column)
        self.checks[layer.name], self.sliders[layer.name], self.opacities[layer.name] = check, slider, value

    def _range_rows(self) -> tuple[QtWidgets.QHBoxLayout, QtWidgets.QHBoxLayout]:
        low, high = self.model.contrast
        self.low = QtWidgets.QDoubleSpinBox(decimals=1, minimum=-1e9, maximum=high, value=low)
        self.high = QtWidgets.QDoubleSpinBox(decimals=1, minimum=low, maximum=1e9, value=high)
        self.low.valueChanged.connect(lambda v: (self.high.setMinimum(v), self._apply_range()))
        self.high.valueChanged.connect(lambda v: (self.low.setMaximum(v), self._apply_range()))
        self.auto = QtWidgets.QPushButton("Auto", toolTip="0.1 to 99.9 percentiles of the raw data in the xy view")
        self.auto.clicked.connect(self.auto_range)
        self.reset = QtWidgets.QPushButton("Reset", toolTip="the range the project opened with")
        self.reset.clicked.connect(lambda: self.set_range(self.original))
        limits, buttons = QtWidgets.QHBoxLayout(), QtWidgets.QHBoxLayout()
        for layout, widgets in ((limits, (self.low, self.high)), (buttons, (self.auto, self.reset))):
            for widget in widgets:
                layout.addWidget(widget)
        return limits, buttons

    def auto_range(self) -> None:
        """Fit the display range to the raw data the xy view shows (0.1 to 99.9 percentiles)."""
        values = self.raw_plane()
        if values is not None:
            self.set_range(percentile_range(values))

    def refresh_histogram(self) -> None:
        """Show the histogram of the raw data the xy view shows now."""
        self.histogram.set_values(self.raw_plane())

    def _apply_range(self) -> None:
        self.model.set_contrast(self.low.value(), self.high.value())
        self.histogram.set_range(*self.model.contrast)

    def set_range(self, limits: tuple[float, float] | None) -> None:
        """Show and apply a display range (nothing happens for None: no raw data on screen yet)."""
        if limits is None:
            return
        low, high = limits
        for box in (self.low, self.high):
            box.blockSignals(True)
        self.low.setRange(-1e9, 1e9)
        self.high.setRange(-1e9, 1e9)
        self.low.setValue(low)
        self.high.setValue(max(high, low))
        self.low.setMaximum(self.high.value())
        self.high.setMinimum(self.low.value())
        for box in (self.low, self.high):
            box.blockSignals(False)
        self._apply_range()

    def _sync(self, name: str) -> None:
        """Show a layer's state changed elsewhere (keyboard shortcuts), or the layers in their new order."""
        if name in (ORDER_CHANGED, CLASSES_CHANGED):
            self._fill_rows(self.layout())
        elif name in self.checks:
            layer = self.model.layer(name)
            self.checks[name].blockSignals(True)
            self.checks[name].setChecked(layer.visible)
            self.checks[name].blockSignals(False)
