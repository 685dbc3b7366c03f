"""The feature selection dialog, laid out as ilastik's: the six features by the scales 0.3 to 10, a 2D or
3D choice per scale for volumes, and the scales too large for the image greyed out."""

from __future__ import annotations

from PyQt5 import QtCore, QtWidgets

from backend.compute.features import DISPLAY_NAMES, FEATURE_IDS, scale_fits
from backend.io.project import FeatureSelection
from ilastik_desktop._qt.panels.project import ok_cancel

ILASTIK_SCALES = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)


class FeatureDialog(QtWidgets.QDialog):
    """Edits a :class:`FeatureSelection` for an image of spatial shape ``(z, y, x)``; :meth:`selection` is
    the result."""

    def __init__(self, selection: FeatureSelection, shape_zyx: tuple[int, int, int], parent=None):
        super().__init__(parent)
        self.setWindowTitle("Select features")
        self.volumetric = shape_zyx[0] > 1
        current = _as_ilastik_grid(selection)
        grid = QtWidgets.QGridLayout()
        self.boxes: dict[tuple[int, int], QtWidgets.QCheckBox] = {}
        self.in_2d: list[QtWidgets.QCheckBox] = []
        for j, scale in enumerate(ILASTIK_SCALES):
            grid.addWidget(QtWidgets.QLabel(f"σ {scale}", alignment=QtCore.Qt.AlignCenter), 0, j + 1)
        for i, fid in enumerate(FEATURE_IDS):
            grid.addWidget(QtWidgets.QLabel(DISPLAY_NAMES[fid]), i + 1, 0)
            for j in range(len(ILASTIK_SCALES)):
                box = QtWidgets.QCheckBox(checked=current[0][i][j])
                box.setEnabled(j > 0 or i == 0)  # as in ilastik, only smoothing is offered at 0.3
                grid.addWidget(box, i + 1, j + 1, alignment=QtCore.Qt.AlignCenter)
                self.boxes[(i, j)] = box
        if self.volumetric:
            grid.addWidget(QtWidgets.QLabel("Compute in 2D"), len(FEATURE_IDS) + 1, 0)
            for j in range(len(ILASTIK_SCALES)):
                box = QtWidgets.QCheckBox(checked=current[1][j])
                self.in_2d.append(box)
                grid.addWidget(box, len(FEATURE_IDS) + 1, j + 1, alignment=QtCore.Qt.AlignCenter)
        self._grey_out(shape_zyx)
        dropped = [scale for scale in selection.scales if scale not in ILASTIK_SCALES]
        self.message = QtWidgets.QLabel(f"The project's scales {dropped} are not offered here: OK drops them."
                                        if dropped else "", wordWrap=True)
        ok_cancel(self, grid, self.message, self._accept)

    def _grey_out(self, shape_zyx: tuple[int, int, int]) -> None:
        """Scales too large for the image's plane cannot be chosen; those too large along z only in 2D."""
        for j, scale in enumerate(ILASTIK_SCALES):
            fits_plane, fits_z = scale_fits(shape_zyx, scale)
            for i in range(len(FEATURE_IDS)):
                box = self.boxes[(i, j)]
                if not fits_plane:
                    box.setChecked(False)
                    box.setEnabled(False)
                    box.setToolTip(f"σ {scale} needs at least {int(3.5 * scale + 0.999) + 1} pixels in y and x")
            if self.in_2d and not fits_z:
                self.in_2d[j].setChecked(True)
                self.in_2d[j].setEnabled(False)
                self.in_2d[j].setToolTip(f"the image has too few slices for σ {scale} in 3D")

    def selection(self) -> FeatureSelection:
        """The features as ticked."""
        matrix = tuple(tuple(self.boxes[(i, j)].isChecked() for j in range(len(ILASTIK_SCALES)))
                       for i in range(len(FEATURE_IDS)))
        in_2d = tuple(b.isChecked() for b in self.in_2d) if self.in_2d else (True,) * len(ILASTIK_SCALES)
        return FeatureSelection(FEATURE_IDS, ILASTIK_SCALES, matrix, in_2d)

    def _accept(self) -> None:
        if not any(box.isChecked() for box in self.boxes.values()):
            self.message.setText("Select at least one feature.")
            return
        self.accept()


def _as_ilastik_grid(selection: FeatureSelection) -> tuple[list[list[bool]], list[bool]]:
    """``selection`` on ilastik's feature rows and scale columns (scales it does not offer are dropped)."""
    matrix = [[False] * len(ILASTIK_SCALES) for _ in FEATURE_IDS]
    in_2d = [False] * len(ILASTIK_SCALES)
    for j, scale in enumerate(selection.scales):
        if scale not in ILASTIK_SCALES:
            continue
        column = ILASTIK_SCALES.index(scale)
        in_2d[column] = bool(selection.compute_in_2d[j]) if selection.compute_in_2d else False
        for i, fid in enumerate(selection.ids):
            if fid in FEATURE_IDS:
                matrix[FEATURE_IDS.index(fid)][column] = bool(selection.matrix[i][j])
    return matrix, in_2d
