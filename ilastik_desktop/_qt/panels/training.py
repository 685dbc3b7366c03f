"""The Training tab: the classes to paint with (added, renamed, recoloured, deleted), brush or eraser and its
size, painting on or off, undo and redo, live training or training on demand, and what the last training did."""

from __future__ import annotations

from PyQt5 import QtCore, QtGui, QtWidgets

ERASER = 0
BRUSH_SIZES = (1, 3, 5, 7, 11, 23, 31, 61)  # ilastik's, stepped through with "," and "."


class TrainingPanel(QtWidgets.QWidget):
    """Emits ``painting(bool)``, ``undo``, ``redo``, ``train`` and ``edit_class(action)`` (add, rename, colour,
    delete: of the class selected); :meth:`label` and :meth:`radius` say how to paint."""

    painting = QtCore.pyqtSignal(bool)
    edit_class = QtCore.pyqtSignal(str)
    choose_features = QtCore.pyqtSignal()
    undo = QtCore.pyqtSignal()
    redo = QtCore.pyqtSignal()
    train = QtCore.pyqtSignal()

    def __init__(self, names: list[str], colors: list[tuple[int, int, int]], parent=None):
        super().__init__(parent)
        layout = QtWidgets.QVBoxLayout(self)
        self.paint = QtWidgets.QPushButton("Paint labels (B; N to navigate)", checkable=True)
        self.paint.setToolTip("left drags paint in every view instead of panning")
        self.paint.toggled.connect(self.painting.emit)
        layout.addWidget(self.paint)
        self.classes = QtWidgets.QButtonGroup(self)
        self.class_list = QtWidgets.QVBoxLayout()
        layout.addLayout(self.class_list)
        eraser = QtWidgets.QRadioButton("Eraser (E)")
        self.classes.addButton(eraser, ERASER)
        layout.addWidget(eraser)
        self._last_class = 1  # the class B returns to from the eraser
        self.set_classes(names, colors)
        actions = QtWidgets.QHBoxLayout()
        for text, action, tip in (("Add", "add", "a new class (Label N, in ilastik's next colour)"),
                                  ("Rename", "rename", "rename the selected class"),
                                  ("Colour", "colour", "choose the selected class's colour"),
                                  ("Delete", "delete", "delete the selected class and its labels")):
            button = QtWidgets.QPushButton(text, toolTip=tip)
            button.clicked.connect(lambda _checked, a=action: self.edit_class.emit(a))
            actions.addWidget(button)
        layout.addLayout(actions)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Brush size"))
        self.size = QtWidgets.QSpinBox(minimum=1, maximum=61, value=3, singleStep=2, toolTip="smaller , larger .")
        row.addWidget(self.size)
        layout.addLayout(row)
        edits = QtWidgets.QHBoxLayout()
        for text, signal, tip in (("Undo", self.undo, "undo the last stroke"),
                                  ("Redo", self.redo, "paint the stroke undone again")):  # keys: the window's
            button = QtWidgets.QPushButton(text, toolTip=tip)
            button.clicked.connect(signal.emit)
            edits.addWidget(button)
        layout.addLayout(edits)
        self.live = QtWidgets.QCheckBox("Live training (after each stroke; L)", checked=True)
        layout.addWidget(self.live)
        features = QtWidgets.QPushButton("Features...", toolTip="the features the classifier learns from")
        features.clicked.connect(self.choose_features.emit)
        layout.addWidget(features)
        self.train_now = QtWidgets.QPushButton("Train now")
        self.train_now.clicked.connect(self.train.emit)
        layout.addWidget(self.train_now)
        self.status = QtWidgets.QLabel(wordWrap=True)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def set_classes(self, names: list[str], colors: list[tuple[int, int, int]]) -> None:
        """Show these classes (the same class stays selected while it exists; else the first)."""
        chosen = self.classes.checkedId()
        for button in [b for b in self.classes.buttons() if self.classes.id(b) != ERASER]:
            self.classes.removeButton(button)
            button.deleteLater()
        for number, (name, color) in enumerate(zip(names, colors), start=1):
            button = QtWidgets.QRadioButton(name, checked=number == chosen or (chosen > len(names) and number == 1))
            pixmap = QtGui.QPixmap(12, 12)
            pixmap.fill(QtGui.QColor(*color[:3]))
            button.setIcon(QtGui.QIcon(pixmap))
            self.classes.addButton(button, number)
            self.class_list.addWidget(button)
        if self.classes.checkedId() == -1:
            self.classes.button(1).setChecked(True)

    def brush(self) -> None:
        """Paint with a class (the last one chosen if the eraser was on)."""
        if self.label() == ERASER:
            self.classes.button(self._last_class if self.classes.button(self._last_class) else 1).setChecked(True)
        self.paint.setChecked(True)

    def erase(self) -> None:
        """Paint with the eraser."""
        if self.label() != ERASER:
            self._last_class = self.label()
        self.classes.button(ERASER).setChecked(True)
        self.paint.setChecked(True)

    def select_class(self, label: int) -> None:
        """Paint with class ``label`` (from 1) if there is one."""
        button = self.classes.button(label)
        if button is not None and label != ERASER:
            button.setChecked(True)

    def step_size(self, step: int) -> None:
        """The next larger (1) or smaller (-1) of ilastik's brush sizes."""
        current = self.size.value()
        sizes = [s for s in BRUSH_SIZES if (s > current if step > 0 else s < current)]
        if sizes:
            self.size.setValue(sizes[0] if step > 0 else sizes[-1])

    def label(self) -> int:
        """The class to paint (from 1), or 0 for the eraser."""
        return self.classes.checkedId()

    def radius(self) -> int:
        """The brush's radius in voxels (size 1 paints single voxels)."""
        return self.size.value() // 2
