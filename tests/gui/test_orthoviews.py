"""Orthoviews laid out as in ilastik: xz below xy sharing x, yz beside xy sharing y; Fit views resets them."""

import os

import numpy as np
import pytest

from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(300)


def test_views_share_their_axes_with_xy_and_fit_resets_them(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
    qtbot.waitUntil(lambda: abs(window.side.width() - window.side_width) <= 10, timeout=5_000)  # laid out
    xy, yz, xz = window.views
    assert (yz.rows_axis, yz.cols_axis) == ("y", "z") and (xz.rows_axis, xz.cols_axis) == ("z", "x")
    top_left = xy.mapTo(window, xy.rect().topLeft())
    assert yz.mapTo(window, yz.rect().topLeft()).y() == top_left.y()  # beside it
    assert xz.mapTo(window, xz.rect().topLeft()).x() == top_left.x()  # below it
    xy.box.translateBy(x=5, y=7)  # pan xy
    (x0, x1), (y0, y1) = xy.box.viewRange()
    assert np.allclose(yz.box.viewRange()[1], (y0, y1))  # same rows (y) in yz
    assert np.allclose(xz.box.viewRange()[0], (x0, x1))  # same columns (x) in xz
    fit = next(a for a in window.menuBar().actions() if a.text() == "&View").menu().actions()[1]
    assert fit.text() == "&Fit views"
    fit.trigger()
    rows, cols = xy.shape
    (x0, x1), (y0, y1) = xy.box.viewRange()
    assert x0 <= 0 and x1 >= cols and y0 <= 0 and y1 >= rows
