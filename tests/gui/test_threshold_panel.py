"""The thresholding panel as a user meets it: classes by name, a sensible default channel, impossible
settings refused with a message, values applied on Enter or after a pause (not per keystroke), no z
smoothing on 2D data."""

import pytest
from PyQt5 import QtCore

from backend.compute.threshold import ThresholdSettings, default_channel
from backend.config import WindowConfig
from ilastik_desktop._qt.panels.threshold import ThresholdPanel

pytestmark = pytest.mark.timeout(60)


def _panel(qtbot, names=("Background", "Cells", "Membrane"), volumetric=True, settings=None):
    panel = ThresholdPanel(settings or ThresholdSettings(channel=default_channel(list(names))), list(names),
                           volumetric)
    qtbot.addWidget(panel)
    panel.show()
    emitted = []
    panel.changed.connect(emitted.append)
    return panel, emitted


def test_channels_are_class_names_and_the_default_is_the_first_non_background_class(qtbot):
    panel, _ = _panel(qtbot)
    assert [panel.channel.itemText(i) for i in range(3)] == ["Background", "Cells", "Membrane"]
    assert panel.channel.currentText() == "Cells" and panel.settings().channel == 1
    assert default_channel(["Label 1", "Label 2"]) == 0 and default_channel(["bg", "fg"]) == 1


def test_impossible_settings_are_refused_with_a_message_and_not_applied(qtbot):
    panel, emitted = _panel(qtbot, settings=ThresholdSettings(method=1, channel=1, core_channel=2, low=0.4,
                                                              high=0.8))
    panel.low.setValue(0.9)
    panel.low.editingFinished.emit()  # Enter
    assert emitted == [] and "low threshold (0.9) is above the high one (0.8)" in panel.message.text()
    panel.low.setValue(0.5)
    panel.low.editingFinished.emit()
    assert [s.low for s in emitted] == [0.5] and panel.message.text() == ""
    panel.core.setCurrentIndex(1)  # the same class as the channel
    assert len(emitted) == 1 and "core channel" in panel.message.text()
    panel.core.setCurrentIndex(2)
    panel.min_size.setValue(500)
    panel.max_size.setValue(100)
    panel.max_size.editingFinished.emit()
    assert "minimum size (500) is above the maximum (100)" in panel.message.text()


def test_typing_applies_after_a_pause_or_on_enter_not_per_keystroke(qtbot):
    panel, emitted = _panel(qtbot)
    panel.low.setFocus()
    panel.low.selectAll()
    for key in (QtCore.Qt.Key_0, QtCore.Qt.Key_Period, QtCore.Qt.Key_3, QtCore.Qt.Key_5):
        qtbot.keyClick(panel.low, key)
    assert emitted == []  # nothing while typing
    qtbot.waitUntil(lambda: len(emitted) == 1, timeout=round(WindowConfig().threshold_pause_s * 3000))
    assert emitted[0].low == 0.35
    panel.low.selectAll()
    qtbot.keyClicks(panel.low, "0.6")
    qtbot.keyClick(panel.low, QtCore.Qt.Key_Return)  # Enter: at once
    assert [s.low for s in emitted] == [0.35, 0.6]


def test_2d_data_shows_no_z_smoothing(qtbot):
    panel, _ = _panel(qtbot, volumetric=False)
    assert not panel.sigmas[0].isVisible() and panel.sigmas[1].isVisible() and panel.sigmas[2].isVisible()
    three_d, _ = _panel(qtbot)
    assert all(box.isVisible() for box in three_d.sigmas)
