"""The display range's histogram: the raw values of the xy view, with the range as a region to drag."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore

BINS = 128


class RangeHistogram(pg.PlotWidget):
    """Shows a histogram (log counts) and the display range; ``dragged(low, high)`` when the user moves it."""

    dragged = QtCore.pyqtSignal(float, float)

    def __init__(self, parent=None):
        super().__init__(parent, background=None)
        self.setFixedHeight(90)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self.getPlotItem().hideAxis("left")
        self.curve = self.plot([0, 1], [0], stepMode="center", fillLevel=0, brush=(150, 150, 150, 160),
                               pen=pg.mkPen(120, 120, 120))
        self.region = pg.LinearRegionItem((0, 1), brush=(80, 140, 255, 50))
        self.region.sigRegionChangeFinished.connect(lambda: self.dragged.emit(*map(float, self.region.getRegion())))
        self.addItem(self.region)

    def set_values(self, values: np.ndarray | None) -> None:
        """Show the histogram of ``values`` (nothing for None)."""
        if values is None or values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        counts, edges = np.histogram(values, BINS, (low, high if high > low else low + 1.0))
        self.curve.setData(edges, np.log1p(counts))
        self.setXRange(min(edges[0], self.region.getRegion()[0]), max(edges[-1], self.region.getRegion()[1]))

    def set_range(self, low: float, high: float) -> None:
        """Show the display range (without emitting ``dragged``)."""
        self.region.blockSignals(True)
        self.region.setRegion((low, high))
        self.region.blockSignals(False)
