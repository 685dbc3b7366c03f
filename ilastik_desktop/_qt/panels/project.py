"""The side panels: project summary, layers and display, thresholding."""

from __future__ import annotations

import html

from PyQt5 import QtCore, QtGui, QtWidgets

from ilastik_desktop.runtime.document import Document


def narrow(panel: QtWidgets.QWidget, width: int = 70) -> None:
    """Let the panel's number fields be narrower than their largest value, so the panel never asks for
    more width than a side panel has (a range of +-1e9 alone asked for 250 px per field)."""
    for box in panel.findChildren(QtWidgets.QAbstractSpinBox):
        box.setMinimumWidth(width)


def project_summary(document: Document) -> list[tuple[str, list[tuple[str, str]]]]:
    """Sections of (name, value) rows describing the project, its data, features and classifier."""
    p, source = document.project, document.source
    lanes = [(info.nickname or f"lane {i}", f"{info.location}: {info.file_path}") for i, info in enumerate(p.lanes)]
    data = [("file", source.description), ("shape", " x ".join(map(str, source.native_shape))),
            ("axes", source.axes), ("dtype", str(source.dtype)), ("channels", str(source.channels))]
    selection = p.features
    names = [f"{fid} ({', '.join(str(s) for s, on in zip(selection.scales, row) if on)})"
             for fid, row in zip(selection.ids, selection.matrix) if any(row)]
    features = [("selected", f"{selection.selected_count} ({document.pipeline.features.column_count} columns)")]
    features += [("", name) for name in names]
    classifier = p.classifier
    forest = [("trees", str(classifier.tree_count)), ("forests", str(len(classifier.forests))),
              ("features", str(classifier.feature_count))] if classifier else [("", "not trained")]
    return [("Project", [("file", p.path), ("ilastik", p.version), ("workflow", p.workflow)]),
            ("Lanes", lanes), ("Raw data", data), ("Features", features), ("Classifier", forest)]


class ProjectPanel(QtWidgets.QTreeWidget):
    """The project as a tree: lanes, data, label classes with colours, features, classifier."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setHeaderLabels(["", ""])
        self.setHeaderHidden(True)
        self.setColumnCount(2)
        self.setRootIsDecorated(True)

    def show_document(self, document: Document) -> None:
        """Fill the tree for ``document``."""
        self.clear()
        for title, rows in project_summary(document):
            self._section(title, rows)
        labels = self._section("Label classes", [])
        for name, color in zip(document.project.label_names, document.project.label_colors):
            item = QtWidgets.QTreeWidgetItem(labels, [name, ""])
            pixmap = QtGui.QPixmap(12, 12)
            pixmap.fill(QtGui.QColor(*color))
            item.setIcon(0, QtGui.QIcon(pixmap))
        self.expandAll()
        self.resizeColumnToContents(0)

    def _section(self, title: str, rows) -> QtWidgets.QTreeWidgetItem:
        section = QtWidgets.QTreeWidgetItem(self, [title])
        font = section.font(0)
        font.setBold(True)
        section.setFont(0, font)
        for key, value in rows:
            item = QtWidgets.QTreeWidgetItem(section, [key, value])
            item.setToolTip(1, value)
        return section


def legend_text(names, colors) -> str:
    """The classes' names, each after a square in its colour (rich text)."""
    return "&nbsp;&nbsp;&nbsp;".join(f'<span style="color: rgb{tuple(color)}; font-size: 18px;">&#9632;</span> '
                                     f'{html.escape(name)}' for name, color in zip(names, colors))


def info_box(position_label: QtWidgets.QLabel, legend: QtWidgets.QLabel) -> QtWidgets.QWidget:
    """The fourth quadrant of a 3D view: crosshair position, the classes' colours (``legend``) and the mouse
    hints."""
    box = QtWidgets.QWidget()
    layout = QtWidgets.QVBoxLayout(box)
    layout.addStretch(1)
    position_label.setStyleSheet("font-size: 15px;")
    layout.addWidget(position_label)
    legend.setAlignment(QtCore.Qt.AlignCenter)
    layout.addWidget(legend)
    hint = QtWidgets.QLabel("wheel: slices    Ctrl+wheel: zoom\ndrag: pan    click: move the crosshair",
                            alignment=QtCore.Qt.AlignCenter)
    hint.setStyleSheet("color: #888;")
    layout.addWidget(hint)
    layout.addStretch(1)
    return box


def ok_cancel(dialog: QtWidgets.QDialog, content: QtWidgets.QLayout, message: QtWidgets.QLabel, on_ok) -> None:
    """Lay ``dialog`` out as ``content``, then ``message`` (what is wrong), then OK (calls ``on_ok``) and Cancel."""
    buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.Ok | QtWidgets.QDialogButtonBox.Cancel)
    buttons.accepted.connect(on_ok)
    buttons.rejected.connect(dialog.reject)
    layout = QtWidgets.QVBoxLayout(dialog)
    layout.addLayout(content)
    layout.addWidget(message)
    layout.addWidget(buttons)
