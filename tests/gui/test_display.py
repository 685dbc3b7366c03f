"""Raw display for daily use: the range's low can never pass its high, Auto fits what is on screen, Reset
returns to the opening range, a colour map per raw layer, opacity values shown."""

import os

import numpy as np
import pytest
from PyQt5 import QtWidgets

from ilastik_desktop._qt.panels.histogram import BINS
from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(300)


def test_display_range_auto_reset_colormap_and_opacity_values(qtbot, window, data_dir):
    series = os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp")
    open_and_settle(qtbot, window, series)
    panel, model = window.layers_panel, window.model
    original = model.contrast
    raw = window.loader.slots[("xy", "Raw")].values
    drawn = lambda: panel.histogram.curve.getData()[1]  # noqa: E731 - log(1 + count) per bin, as drawn
    qtbot.waitUntil(lambda: len(drawn()) == BINS, timeout=10_000)
    assert np.rint(np.expm1(drawn())).sum() == raw.size  # the histogram of the raw data in the xy view
    assert panel.histogram.region.getRegion() == original
    panel.histogram.region.setRegion((original[0] + 5, original[0] + 60))  # dragged
    panel.histogram.region.sigRegionChangeFinished.emit(panel.histogram.region)
    assert model.contrast == (original[0] + 5, original[0] + 60) and panel.low.value() == original[0] + 5
    panel.high.setValue(original[0] + 10)
    panel.low.setValue(original[0] + 50)  # typed above the high end: held at it
    assert panel.low.value() <= panel.high.value() and model.contrast[0] < model.contrast[1]
    assert panel.histogram.region.getRegion() == model.contrast
    panel.auto.click()
    expected = np.percentile(raw, (0.1, 99.9))
    assert np.allclose(model.contrast, expected, atol=0.1)
    assert np.allclose(window.views[0].raw.levels, expected, atol=0.1)
    panel.reset.click()
    assert np.allclose(model.contrast, original)
    panel.colormap.setCurrentText("viridis")
    assert model.colormap == "viridis" and window.views[0].raw.lut is not None
    panel.colormap.setCurrentText("grey")
    assert window.views[0].raw.lut is None
    name = next(layer.name for layer in model.layers if layer.name.startswith("Probability"))
    panel.sliders[name].setValue(40)
    assert panel.opacities[name].text() == "40 %" and model.layer(name).opacity == 0.4


def test_a_scale_bar_from_the_files_pixel_size(qtbot, window, data_dir, tmp_path):
    import tifffile

    from viewer.slice_view import nice_length

    api = os.path.join(data_dir, "ilastik-api")
    volume = np.load(os.path.join(api, "Data_3D.npy"))[..., 0]  # 64^3
    raw = tmp_path / "with_size.tif"
    tifffile.imwrite(raw, volume, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "micron", "axes": "ZYX"})
    open_and_settle(qtbot, window, os.path.join(api, "PixelClass3D.ilp"), str(raw))
    xy, yz, xz = window.views
    assert xy.scale_bar is not None and xz.scale_bar is not None and yz.scale_bar is None  # yz has z across
    assert xy.scale_bar.text.textItem.toPlainText() == "2 µm"  # 64 px of 0.25 µm: a fifth is 3.2, so 2
    assert xy.scale_bar.size == 8  # pixels
    assert (nice_length(3.2), nice_length(0.07), nice_length(700)) == (2, 0.05, 500)
    open_and_settle(qtbot, window, os.path.join(api, "PixelClass3D.ilp"))  # a .npy: no size, no bar
    assert all(view.scale_bar is None for view in window.views)


def test_layers_are_reordered_in_the_panel_and_drawn_in_that_order(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
    panel, model, xy = window.layers_panel, window.model, window.views[0]
    names = [layer.name for layer in model.layers]
    first, second = names[1], names[2]  # two probability layers: the second is drawn above the first
    assert xy.overlays[second].zValue() > xy.overlays[first].zValue()
    up = [b for b in panel.rows.findChildren(QtWidgets.QToolButton) if b.text() == "\u25b2"]
    assert len(up) == len(names) - 1  # the raw data has none: it stays at the bottom
    up[1].click()  # the second overlay's row: one place lower
    assert [layer.name for layer in model.layers][1:3] == [second, first]
    qtbot.waitUntil(lambda: xy.overlays[first].zValue() > xy.overlays[second].zValue(), timeout=5000)
    assert [panel.checks[n] for n in (second, first)] == [panel.checks[n] for n in [x.name for x in model.layers][1:3]]
    model.move_layer("Raw", 3)
    assert model.layers[0].name == "Raw"
    model.move_layer(first, -10)
    assert model.layers[1].name == first  # never below the raw data
    panel.checks[first].setChecked(False)  # the rebuilt rows still act on the model
    assert not model.layer(first).visible
