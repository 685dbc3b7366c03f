"""The thresholding panel as a user meets it: classes by name, a sensible default channel, impossible
settings refused with a message, hysteresis on one class allowed (ilastik's defaults), values applied on Enter
or after a pause (not per keystroke), no z smoothing on 2D data, the objects turned on and announced, and a
project's unsupported method said in the status bar when its objects are asked for."""

import os
import shutil

import h5py
import numpy as np
import pytest
from PyQt5 import QtCore, QtTest, QtWidgets

import viewer.loader as loader_module
from backend.compute.threshold import ThresholdSettings, default_channel, threshold_frame, unsupported_method
from backend.config import WindowConfig
from backend.service.objects import request_objects
from ilastik_desktop._qt.panels.threshold import ThresholdPanel
from ilastik_desktop.runtime.settings import parse_threshold
from tests.gui.conftest import open_and_settle
from tests.helpers import stays

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
    panel.core.setCurrentIndex(1)  # the same class as the channel: allowed, as in ilastik
    assert [s.core_channel for s in emitted] == [2, 1] and panel.message.text() == ""
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


def test_hysteresis_may_seed_and_grow_on_the_same_class_as_ilastik_does(qtbot):
    panel, emitted = _panel(qtbot, settings=ThresholdSettings())  # ilastik's defaults: both channels 0
    panel.method.setFocus()
    QtTest.QTest.keyClick(panel.method, QtCore.Qt.Key_Down)  # Simple -> Hysteresis
    assert [(s.method, s.channel, s.core_channel) for s in emitted] == [(1, 0, 0)] and panel.message.text() == ""
    parsed = parse_threshold("method=hysteresis,channel=1,core_channel=1", None, 2)  # headless --threshold
    assert (parsed.method, parsed.channel, parsed.core_channel) == (1, 1, 1)
    p = np.zeros((1, 20, 30, 2), np.float32)  # (z, y, x, classes)
    p[0, 5:10, 2:8, 1] = 0.6  # grows from a seed
    p[0, 6:8, 4:6, 1] = 0.9  # the seed: above High on the same class
    p[0, 5:10, 15:25, 1] = 0.6  # above Low but no seed: dropped
    labels = threshold_frame(p, ThresholdSettings(method=1, channel=1, core_channel=1, min_size=1, sigmas=(0, 0, 0)))
    assert labels.max() == 1 and (labels == 1).sum() == 5 * 6 and labels[0, 7, 20] == 0


@pytest.mark.timeout(300)
def test_changing_a_threshold_turns_the_objects_layer_on_and_says_so(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
    assert not window.model.layer("Objects").visible  # off until thresholds are asked for
    panel = window.threshold_panel
    bar = window.tabs.tabBar()
    tab = next(i for i in range(bar.count()) if bar.tabText(i) == "Thresholding")
    QtTest.QTest.mouseClick(bar, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, bar.tabRect(tab).center())
    qtbot.waitUntil(panel.low.isVisible, timeout=5_000)
    panel.low.setFocus()
    panel.low.selectAll()
    qtbot.keyClicks(panel.low, "0.4")
    qtbot.keyClick(panel.low, QtCore.Qt.Key_Return)
    assert window.model.layer("Objects").visible and window.layers_panel.checks["Objects"].isChecked()
    assert "Objects layer turned on" in window.statusBar().currentMessage() and "Objects layer" in panel.hint.text()
    qtbot.waitUntil(lambda: window.loader.is_complete("xy", "Objects"), timeout=120_000)
    assert window.views[0].overlays["Objects"].isVisible() and window.views[0].buffers["Objects"][..., 3].any()


def test_consecutive_object_ids_is_a_checkbox_off_by_default(qtbot):
    panel, emitted = _panel(qtbot)
    assert panel.relabel.text() == "Consecutive object IDs" and not panel.relabel.isChecked()
    assert not panel.settings().relabel  # ilastik's IDs
    box = QtCore.QPoint(8, panel.relabel.height() // 2)  # on the tick box
    QtTest.QTest.mouseClick(panel.relabel, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, box)
    assert [s.relabel for s in emitted] == [True]
    QtTest.QTest.mouseClick(panel.relabel, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, box)
    assert [s.relabel for s in emitted] == [True, False]


def test_a_graph_cut_project_is_shown_as_unsupported_until_another_method_is_chosen(qtbot):
    panel, emitted = _panel(qtbot, settings=ThresholdSettings(method=2, channel=1, core_channel=1))
    assert panel.method.currentText() == "Graph cut (not supported)"
    assert panel.message.text() == ("ThresholdTwoLevels/CurOperator is 2 (graph-cut thresholding), which "
                                    "ilastik-desktop does not support; choose Simple or Hysteresis; not applied")
    panel.low.setValue(0.3)
    panel.low.editingFinished.emit()
    assert emitted == []  # still graph cut: nothing to compute
    panel.method.setFocus()
    QtTest.QTest.keyClick(panel.method, QtCore.Qt.Key_Down)  # the unsupported entries cannot be chosen
    assert panel.method.currentIndex() == 2 and emitted == []
    QtTest.QTest.keyClick(panel.method, QtCore.Qt.Key_Up)
    assert [(s.method, s.low) for s in emitted] == [(1, 0.3)] and panel.message.text() == ""


def _open_graph_cut_copy(qtbot, window, data_dir, tmp_path) -> None:
    """Open a copy of the shared 1.3 object-classification project saved with graph-cut thresholding."""
    folder = os.path.join(data_dir, "ilastik-timeseries")
    shutil.copyfile(os.path.join(folder, "pc-oc-133.ilp"), tmp_path / "p.ilp")
    with h5py.File(tmp_path / "p.ilp", "r+") as f:
        f["ThresholdTwoLevels/CurOperator"][()] = 2
    shutil.copytree(os.path.join(folder, "mitocheck_2d+t"), tmp_path / "mitocheck_2d+t")
    open_and_settle(qtbot, window, str(tmp_path / "p.ilp"),
                    str(tmp_path / "mitocheck_2d+t" / "mitocheck_small_2D+t.h5" / "exported_data"))


@pytest.mark.timeout(300)
def test_the_window_opens_a_graph_cut_project_and_says_its_objects_are_not_computed(qtbot, window, data_dir,
                                                                                    tmp_path):
    _open_graph_cut_copy(qtbot, window, data_dir, tmp_path)
    panel = window.threshold_panel
    assert panel.method.currentText() == "Graph cut (not supported)"
    assert "CurOperator is 2 (graph-cut thresholding), which ilastik-desktop does not support" in panel.message.text()
    assert window.views[0].buffers["Probability Label 1"][..., 3].any()  # pixel classification works


@pytest.mark.timeout(300)
def test_turning_on_a_graph_cut_projects_objects_says_why_in_the_status_bar_and_settles(qtbot, window, data_dir,
                                                                                       tmp_path, monkeypatch):
    _open_graph_cut_copy(qtbot, window, data_dir, tmp_path)
    asked = []
    monkeypatch.setattr(loader_module, "request_objects", lambda *args: asked.append(args) or request_objects(*args))
    bar = window.tabs.tabBar()
    tab = next(i for i in range(bar.count()) if bar.tabText(i) == "Layers")
    QtTest.QTest.mouseClick(bar, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, bar.tabRect(tab).center())
    check = window.layers_panel.checks["Objects"]
    window.tabs.currentWidget().ensureWidgetVisible(check)
    qtbot.waitUntil(check.isVisible, timeout=5_000)
    assert not check.isChecked()
    QtTest.QTest.mouseClick(check, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, QtCore.QPoint(8, check.height() // 2))
    assert window.model.layer("Objects").visible
    qtbot.waitUntil(window.loader.is_settled, timeout=30_000)
    line = unsupported_method(window.loader.threshold)
    assert line.startswith("ThresholdTwoLevels/CurOperator is 2 (graph-cut thresholding)")
    assert window.statusBar().currentMessage() == line
    assert window.threshold_panel.message.text().startswith(line)  # the panel's own words
    assert len(asked) == 1  # the one view of this 2D+t project asked once

    def still_settled() -> bool:
        QtWidgets.QApplication.processEvents()
        return window.loader.is_settled() and len(asked) == 1

    stays(still_settled, 1.0, message="asked again (a retry loop) or not settled any more")
    tab = next(i for i in range(bar.count()) if bar.tabText(i) == "Thresholding")
    QtTest.QTest.mouseClick(bar, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, bar.tabRect(tab).center())
    panel = window.threshold_panel
    qtbot.waitUntil(panel.method.isVisible, timeout=5_000)
    panel.method.setFocus()
    QtTest.QTest.keyClick(panel.method, QtCore.Qt.Key_Up)  # Hysteresis: the objects are computed now
    qtbot.waitUntil(lambda: window.loader.is_complete("xy", "Objects"), timeout=120_000)  # labels arrived
    assert len(asked) == 2 and asked[-1][2].method == 1
