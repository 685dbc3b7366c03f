"""The thresholding panel: ilastik's Threshold & Size Filter parameters, by class name, checked, applied on
Enter or after a short pause rather than on every keystroke. Hysteresis may seed and grow on the same class
(ilastik's defaults: both channels 0). A project's graph-cut or identity-preserving method is shown, said to be
unsupported and not applied until Simple or Hysteresis is chosen."""

from __future__ import annotations

import dataclasses

from PyQt5 import QtCore, QtWidgets

from backend.compute.threshold import ThresholdSettings, unsupported_method
from backend.config import WindowConfig
from ilastik_desktop._qt.panels.project import narrow


def problems(s: ThresholdSettings) -> list[str]:
    """What is wrong with ``s``, in words (empty when it can be applied)."""
    found = []
    reason = unsupported_method(s)
    if reason is not None:
        found.append(reason)
    if s.method == 1 and s.low > s.high:
        found.append(f"the low threshold ({s.low:g}) is above the high one ({s.high:g})")
    if s.min_size > s.max_size:
        found.append(f"the minimum size ({s.min_size}) is above the maximum ({s.max_size})")
    return found


class ThresholdPanel(QtWidgets.QWidget):
    """Every accepted change emits ``changed`` with the new settings; a refused one says why and emits nothing."""

    changed = QtCore.pyqtSignal(object)

    def __init__(self, settings: ThresholdSettings, class_names: list[str], volumetric: bool,
                 pause_s: float = WindowConfig().threshold_pause_s, parent=None):
        super().__init__(parent)
        form = QtWidgets.QFormLayout(self)
        self.method = QtWidgets.QComboBox()
        self.method.addItems(["Simple", "Hysteresis", "Graph cut (not supported)",
                              "Identity-preserving hysteresis (not supported)"])
        for index in (2, 3):  # shown when a project has them, never offered
            self.method.model().item(index).setEnabled(False)
        self.channel, self.core = QtWidgets.QComboBox(), QtWidgets.QComboBox()
        for box in (self.channel, self.core):
            box.addItems(class_names)
        self.low = QtWidgets.QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2)
        self.high = QtWidgets.QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2)
        self.sigmas = [QtWidgets.QDoubleSpinBox(minimum=0.0, maximum=20.0, singleStep=0.5, decimals=1)
                       for _ in range(3)]
        self.min_size = QtWidgets.QSpinBox(minimum=0, maximum=2**31 - 1)
        self.max_size = QtWidgets.QSpinBox(minimum=0, maximum=2**31 - 1)
        self.relabel = QtWidgets.QCheckBox("Consecutive object IDs")
        self.relabel.setToolTip("Number the objects 1..n; off: ilastik's IDs, with the gaps of objects the size "
                                "filter removed")
        self.message = QtWidgets.QLabel(wordWrap=True)
        self.message.setStyleSheet("color: #c62828;")
        sigmas = QtWidgets.QHBoxLayout()
        for box in self.sigmas:
            sigmas.addWidget(box)
        self.sigmas[0].setVisible(volumetric)  # 2D data has no z smoothing
        for label, widget in (("Method", self.method), ("Channel", self.channel), ("Core channel", self.core),
                              ("Threshold (low)", self.low), ("High", self.high), ("Size min", self.min_size),
                              ("Size max", self.max_size)):
            form.addRow(label, widget)
        form.addRow("Smoothing " + ("z y x" if volumetric else "y x"), sigmas)
        form.addRow(self.relabel)
        form.addRow(self.message)
        self.hint = QtWidgets.QLabel("The objects are drawn in the Objects layer (Layers tab); changing a value "
                                     "turns it on.", wordWrap=True)
        self.hint.setStyleSheet("color: #888;")
        form.addRow(self.hint)
        narrow(self, 60)
        self.pause = QtCore.QTimer(self, singleShot=True, interval=round(pause_s * 1000))  # typing applies once
        # it pauses this long (Enter applies at once)
        self.pause.timeout.connect(self.apply)
        self.set_settings(settings)
        for combo in (self.method, self.channel, self.core):
            combo.currentIndexChanged.connect(lambda *_: self.apply())
        self.relabel.toggled.connect(lambda *_: self.apply())
        for box in self.boxes():
            box.valueChanged.connect(lambda *_: self.pause.start())
            box.editingFinished.connect(self.apply)

    def boxes(self) -> list[QtWidgets.QAbstractSpinBox]:
        """The number fields."""
        return [self.low, self.high, self.min_size, self.max_size, *self.sigmas]

    def set_settings(self, s: ThresholdSettings) -> None:
        """Show ``s`` without emitting ``changed``."""
        widgets = [self.method, self.channel, self.core, self.relabel, *self.boxes()]
        for widget in widgets:
            widget.blockSignals(True)
        self.method.setCurrentIndex(s.method)
        self.channel.setCurrentIndex(s.channel)
        self.core.setCurrentIndex(s.core_channel)
        self.low.setValue(s.low)
        self.high.setValue(s.high)
        self.min_size.setValue(s.min_size)
        self.max_size.setValue(s.max_size)
        for box, sigma in zip(self.sigmas, s.sigmas):
            box.setValue(sigma)
        self.relabel.setChecked(s.relabel)
        for widget in widgets:
            widget.blockSignals(False)
        self._enable(s.method)
        self._say(problems(s))
        self.applied = s

    def _enable(self, method: int) -> None:
        self.high.setEnabled(method == 1)
        self.core.setEnabled(method == 1)

    def settings(self) -> ThresholdSettings:
        """The parameters as shown."""
        return dataclasses.replace(
            ThresholdSettings(), method=self.method.currentIndex(), channel=self.channel.currentIndex(),
            core_channel=self.core.currentIndex(), low=self.low.value(), high=self.high.value(),
            min_size=self.min_size.value(), max_size=self.max_size.value(),
            sigmas=tuple(box.value() for box in self.sigmas), relabel=self.relabel.isChecked())

    def apply(self) -> None:
        """Emit the shown settings if they are valid and new; otherwise say what is wrong."""
        self.pause.stop()
        shown = self.settings()
        self._enable(shown.method)
        wrong = problems(shown)
        self._say(wrong)
        if not wrong and shown != self.applied:
            self.applied = shown
            self.changed.emit(shown)

    def _say(self, wrong: list[str]) -> None:
        text = "; ".join(wrong)
        self.message.setText(text[:1].upper() + text[1:] + ("; not applied" if wrong else ""))
