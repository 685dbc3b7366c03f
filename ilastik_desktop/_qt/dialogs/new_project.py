"""File > New project: an ilastik pixel-classification project started from an image in any supported
format, its axes guessed as ilastik guesses them and editable, two classes and a first feature selection,
written next to the image unless the user says otherwise; the window then opens it for training."""

from __future__ import annotations

import os

from PyQt5 import QtCore, QtWidgets

from backend.compute.features import FEATURE_IDS, scale_fits
from backend.errors import UserError
from backend.io.project import FeatureSelection
from backend.io.project_writer import write_project
from backend.io.sources import open_source
from backend.io.sources.base import axes_problem
from backend.service.label_classes import ILASTIK_COLORS
from ilastik_desktop._qt.dialogs.features import FeatureDialog
from ilastik_desktop._qt.panels.project import ok_cancel
from ilastik_desktop.runtime.demo import DEMO_SELECTION, SCALES

FIRST_FEATURES = FeatureSelection(FEATURE_IDS, SCALES, DEMO_SELECTION, None)  # the demo's: a typical first choice


def create_project(path: str, image: str, axes: str, features: FeatureSelection = FIRST_FEATURES) -> str:
    """Write an untrained project at ``path`` for ``image`` read with ``axes`` (the image's path is kept
    relative to the project's folder); returns ``path``. UserError names what is wrong."""
    source = open_source(image, axes)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the folder ({exc.strerror})") from None
    features = fitted(features, source.spatial_shape[1:])
    if features.selected_count == 0:
        raise UserError(f"{image}: the image is too small for any of the selected features")
    raw = os.path.relpath(os.path.abspath(image), folder)
    write_project(path, raw, source.axes, source.native_shape, features, ("Label 1", "Label 2"),
                  ILASTIK_COLORS[:2], (), None, nickname=os.path.splitext(os.path.basename(image))[0])
    return path


def fitted(selection: FeatureSelection, shape_zyx: tuple[int, int, int]) -> FeatureSelection:
    """``selection`` without the scales too large for the image's plane, and in 2D where too large along z
    (the rule the feature dialog greys out by)."""
    fits = [scale_fits(shape_zyx, scale) for scale in selection.scales]
    matrix = tuple(tuple(bool(v) and fits[j][0] for j, v in enumerate(row)) for row in selection.matrix)
    given = selection.compute_in_2d or (False,) * len(selection.scales)
    in_2d = tuple(shape_zyx[0] == 1 or bool(given[j]) or not fits[j][1] for j in range(len(selection.scales)))
    return FeatureSelection(selection.ids, selection.scales, matrix, in_2d)


class NewProjectDialog(QtWidgets.QDialog):
    """Asks for the image, its axes and where to write the project; ``created(path)`` once it is written."""

    created = QtCore.pyqtSignal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("New project")
        self.setMinimumWidth(640)
        self.features = FIRST_FEATURES
        self.shape: tuple[int, int, int] | None = None
        self.ndim: int | None = None  # the image's number of axes, once it was read
        self.image, self.axes, self.project = QtWidgets.QLineEdit(), QtWidgets.QLineEdit(), QtWidgets.QLineEdit()
        # A field losing its focus emits editingFinished, also while the window destroys the dialog: a lambda
        # called then crashed the tests once (SIGSEGV in it during the next test's set-up). The connection is
        # cut as soon as the dialog closes or hides, and a method of a dialog that is gone is not called.
        self.image.editingFinished.connect(self._image_edited)
        self.axes.setToolTip("one letter per dimension of the file: t, z, y, x, c (as ilastik's axistags)")
        self.axes.textEdited.connect(self._axes_edited)
        self.about = QtWidgets.QLabel()
        form = QtWidgets.QFormLayout()
        form.addRow("Image", self._with_button(self.image, "Browse...", self._browse))
        form.addRow("Axes", self.axes)
        form.addRow("", self.about)
        form.addRow("Project", self.project)
        features = QtWidgets.QPushButton("Features...")
        features.clicked.connect(self._choose_features)
        form.addRow("", features)
        self.message = QtWidgets.QLabel(wordWrap=True, styleSheet="color: #b00;")
        ok_cancel(self, form, self.message, self.create)

    @staticmethod
    def _with_button(field: QtWidgets.QLineEdit, text: str, action) -> QtWidgets.QWidget:
        row = QtWidgets.QWidget()
        layout = QtWidgets.QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        button = QtWidgets.QPushButton(text)
        button.clicked.connect(action)
        layout.addWidget(field)
        layout.addWidget(button)
        return row

    def _browse(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Image for the new project")
        if path:
            self.set_image(path)

    def _image_edited(self) -> None:
        if self.isVisible():
            self.set_image(self.image.text())

    def _stop_following_the_image(self) -> None:
        try:
            self.image.editingFinished.disconnect(self._image_edited)
        except TypeError:  # cut already
            pass

    def done(self, result: int) -> None:
        self._stop_following_the_image()
        super().done(result)

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self._stop_following_the_image()
        super().hideEvent(event)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self._stop_following_the_image()
        self.image.editingFinished.connect(self._image_edited)
        super().showEvent(event)

    def set_image(self, image: str) -> None:
        """Use ``image``: its axes as ilastik would guess them, and a project of the same name beside it."""
        self.image.setText(image)
        try:
            source = open_source(image)
        except UserError as exc:
            self.message.setText(str(exc))
            return
        self.message.clear()
        self.axes.setText(source.axes)
        self.ndim = len(source.native_shape)
        self.shape = source.spatial_shape[1:]
        self.about.setText(f"{' x '.join(map(str, source.native_shape))} {source.dtype.name}"
                           + (" (axes guessed: check them)" if source.axes_guessed else ""))
        if not self.project.text():
            stem = os.path.splitext(image.split(".h5/")[0] if ".h5/" in image else image)[0]
            self.project.setText(stem + ".ilp")

    def _axes_edited(self, text: str) -> None:
        """Say at once what is wrong with the axes typed (or nothing once they fit the image)."""
        if self.ndim is not None:
            wrong = axes_problem(text.strip().lower(), self.ndim)
            self.message.setText(f"Axes: {wrong}" if wrong else "")

    def _choose_features(self) -> None:
        if self.shape is None:
            self.message.setText("Choose the image first.")
            return
        dialog = FeatureDialog(self.features, self.shape, self)
        if dialog.exec_() == QtWidgets.QDialog.Accepted:
            self.features = dialog.selection()

    def create(self) -> None:
        """Write the project (refusing an existing file and unusable axes, with a message) and report it."""
        path = self.project.text().strip()
        if not path.endswith(".ilp"):
            path += ".ilp"
        if os.path.exists(path):
            self.message.setText(f"{path} already exists: choose another name.")
            return
        try:
            create_project(path, self.image.text().strip(), self.axes.text().strip().lower() or None, self.features)
        except UserError as exc:
            self.message.setText(str(exc))
            return
        self.accept()
        self.created.emit(os.path.abspath(path))
