"""Ways into a project: drag and drop, Open recent, locating moved raw data, error dialogs."""

import os
import shutil

import pytest
from PyQt5 import QtCore, QtGui, QtWidgets

from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def interactive_window(make_window):
    """A window that asks the user (its dialogs are answered by the test)."""
    window = make_window(interactive=True)
    window.journal_policy = "keep"  # labels an earlier test painted on a shared project are not asked about
    return window


def drop_event(window, path: str, kind=QtCore.QEvent.Drop):
    """A drag-enter or drop event carrying ``path``, and its mime data (keep it alive with the event)."""
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(path)])
    center = QtCore.QPoint(window.width() // 2, window.height() // 2)
    if kind == QtCore.QEvent.DragEnter:
        event = QtGui.QDragEnterEvent(center, QtCore.Qt.CopyAction, mime, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier)
    else:
        event = QtGui.QDropEvent(QtCore.QPointF(center), QtCore.Qt.CopyAction, mime, QtCore.Qt.LeftButton,
                                 QtCore.Qt.NoModifier)
    return event, mime


def test_dropping_a_project_opens_it_and_other_files_are_refused(qtbot, window, data_dir, tmp_path):
    project = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    enter, mime = drop_event(window, project, QtCore.QEvent.DragEnter)
    QtWidgets.QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    other, other_mime = drop_event(window, os.path.join(data_dir, "ilastik-api", "Data_3D.npy"),
                                   QtCore.QEvent.DragEnter)
    other.ignore()
    QtWidgets.QApplication.sendEvent(window, other)
    assert not other.isAccepted()
    drop, drop_mime = drop_event(window, project)
    with qtbot.waitSignal(window.opened, timeout=60_000) as opened:
        QtWidgets.QApplication.sendEvent(window, drop)
    assert opened.args[0].project.path == project
    qtbot.waitUntil(window.loader.is_settled, timeout=180_000)


def test_open_recent_lists_opened_projects_newest_first(qtbot, window, data_dir):
    first = os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp")
    second = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    open_and_settle(qtbot, window, first)
    open_and_settle(qtbot, window, second)
    window.recent_menu.aboutToShow.emit()
    entries = [action.text() for action in window.recent_menu.actions()]
    assert entries[:2] == [second, first]
    with qtbot.waitSignal(window.opened, timeout=60_000) as opened:
        window.recent_menu.actions()[1].trigger()
    assert opened.args[0].project.path == first
    qtbot.waitUntil(window.loader.is_settled, timeout=180_000)


def test_moved_raw_data_is_located_by_the_user_and_remembered(qtbot, interactive_window, settings, data_dir,
                                                               monkeypatch):
    seed = os.path.join(data_dir, "seed")
    project, raw = os.path.join(seed, "pc.ilp"), os.path.join(seed, "raw.h5")
    told, asked = [], []
    monkeypatch.setattr(QtWidgets.QMessageBox, "information", lambda _parent, _title, text: told.append(text))
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName",
                        lambda _parent, title, _folder, *_: asked.append(title) or (raw, ""))
    with qtbot.waitSignal(interactive_window.opened, timeout=60_000):
        interactive_window.open_project(project)  # its raw path (t063_preprocessed.tif) does not exist here
    assert "t063_preprocessed.tif" in told[0] and asked == ["Locate t063_preprocessed.tif"]
    assert interactive_window.document.source.path.startswith(raw)
    qtbot.waitUntil(interactive_window.loader.is_settled, timeout=180_000)
    interactive_window.close_document()
    with qtbot.waitSignal(interactive_window.opened, timeout=60_000):
        interactive_window.open_project(project)
    assert len(asked) == 1, "the located file is remembered"
    assert settings.value("raw_data/" + project).startswith(raw)


def test_project_errors_are_dialogs_with_the_reader_message(qtbot, interactive_window, data_dir, monkeypatch):
    shown = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "critical", lambda _parent, _title, text: shown.append(text))
    broken = os.path.join(data_dir, "ilastik-api", "PixelClassNoData.ilp")
    with qtbot.waitSignal(interactive_window.failed, timeout=60_000):
        interactive_window.open_project(broken)
    assert shown and "PixelClassNoData.ilp: the project has no input data" in shown[0]
    assert "Traceback" not in shown[0]
    assert interactive_window.document is None


def test_raw_data_that_does_not_fit_is_refused_and_not_remembered(qtbot, interactive_window, settings, data_dir,
                                                                  monkeypatch):
    project = os.path.join(data_dir, "ilastik-api", "PixelClass.ilp")  # 2D
    volume = os.path.join(data_dir, "ilastik-api", "Data_3D.npy")
    shown = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "critical", lambda _parent, _title, text: shown.append(text))
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", lambda *_: (volume, ""))
    open_and_settle(qtbot, interactive_window, project)
    opened = interactive_window.document
    with qtbot.waitSignal(interactive_window.failed, timeout=60_000):
        interactive_window.change_raw_action.trigger()
    assert "Data_3D.npy" in shown[0] and "Traceback" not in shown[0]
    assert not settings.contains("raw_data/" + project)
    assert interactive_window.document is opened, "the open project stays"


def test_changed_raw_data_is_remembered_until_forgotten(qtbot, interactive_window, settings, data_dir, tmp_path,
                                                         monkeypatch):
    project = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    recorded = os.path.join(data_dir, "ilastik-api", "Data_3D.npy")
    other = str(tmp_path / "other.npy")
    shutil.copyfile(recorded, other)
    monkeypatch.setattr(QtWidgets.QFileDialog, "getOpenFileName", lambda *_: (other, ""))
    open_and_settle(qtbot, interactive_window, project)
    assert not interactive_window.forget_raw_action.isEnabled()
    with qtbot.waitSignal(interactive_window.opened, timeout=60_000):
        interactive_window.change_raw_action.trigger()
    assert interactive_window.document.source.description == other
    assert settings.value("raw_data/" + project) == other and interactive_window.forget_raw_action.isEnabled()
    qtbot.waitUntil(interactive_window.loader.is_settled, timeout=180_000)
    with qtbot.waitSignal(interactive_window.opened, timeout=60_000):
        interactive_window.forget_raw_action.trigger()
    assert interactive_window.document.source.description == recorded
    assert not settings.contains("raw_data/" + project) and not interactive_window.forget_raw_action.isEnabled()
    qtbot.waitUntil(interactive_window.loader.is_settled, timeout=180_000)


def test_remembered_raw_data_that_no_longer_fits_is_forgotten(qtbot, interactive_window, settings, data_dir,
                                                              monkeypatch):
    project = os.path.join(data_dir, "ilastik-api", "PixelClass.ilp")
    settings.setValue("raw_data/" + project, os.path.join(data_dir, "ilastik-api", "Data_3D.npy"))
    shown = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "critical", lambda _parent, _title, text: shown.append(text))
    with qtbot.waitSignal(interactive_window.failed, timeout=60_000):
        interactive_window.open_project(project)
    assert "forgotten" in shown[0]
    qtbot.waitUntil(lambda: not settings.contains("raw_data/" + project), timeout=5_000)
    open_and_settle(qtbot, interactive_window, project)  # the project's own raw data again
