"""Raw display for daily use: the range's low can never pass its high, Auto fits what is on screen, Reset
returns to the opening range, a colour map per raw layer, opacity values shown."""

import os

import numpy as np
import pytest

from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(300)


def test_display_range_auto_reset_colormap_and_opacity_values(qtbot, window, data_dir):
    series = os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp")
    open_and_settle(qtbot, window, series)
    panel, model = window.layers_panel, window.model
    original = model.contrast
    panel.high.setValue(original[0] + 10)
    panel.low.setValue(original[0] + 50)  # typed above the high end: held at it
    assert panel.low.value() <= panel.high.value() and model.contrast[0] < model.contrast[1]
    raw = window.loader.slots[("xy", "Raw")].values
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
