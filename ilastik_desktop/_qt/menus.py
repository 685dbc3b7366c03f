"""The View and Help menus (side panel, fit views; keyboard shortcuts, the README, About with versions and
licences) and the window's keyboard shortcuts for time steps and layers."""

from __future__ import annotations

import html
import os
import platform
from importlib import metadata

from PyQt5 import QtCore, QtGui, QtWidgets

from ilastik_desktop import __version__
from ilastik_desktop.runtime.frozen import checkout_folder, open_externally, resource_path

SHORTCUTS = (
    ("Ctrl+O", "open a project"),
    ("Up / Down, mouse wheel", "next / previous slice (time step on 2D+t data)"),
    ("Page Up / Page Down", "10 slices"),
    ("Alt+Right / Alt+Left", "next / previous time step"),
    ("Ctrl+1 ... Ctrl+9", "show or hide layer 1 to 9 (as listed in Layers)"),
    ("Ctrl+wheel, drag, click", "zoom, pan, move the crosshair"),
    ("B / E / N", "paint labels with the brush / the eraser / navigate again (as in ilastik)"),
    ("1 ... 9, A", "paint with class 1 to 9, add a class"),
    (", / .", "smaller / larger brush"),
    ("L", "live training on or off"),
    ("Ctrl+Z / Ctrl+Y", "undo / redo a stroke"),
    ("Ctrl+S", "save labels and classifier into the project"),
    ("F9", "show or hide the side panel"),
    ("Ctrl+0", "fit every view to its image"),
    ("F1", "this list"),
    ("Ctrl+Q", "quit"),
)
LIBRARIES = ("numpy", "scipy", "numba", "scikit-learn", "h5py", "PyQt5", "pyqtgraph", "pyzmq", "redis", "zarr",
             "aiohttp", "tifffile")


def readme_path() -> str | None:
    """The README: beside the packages in a source checkout, else where the wheel or the bundle put it."""
    checkout = os.path.join(checkout_folder(), "README.md")
    return checkout if os.path.exists(checkout) else resource_path("README.md")


def licence_path() -> str | None:
    """Our LICENSE (the GPL v3 text): the repository's root in a source checkout, else where the wheel
    (``<prefix>/share/ilastik-desktop``) or the bundle (its resources) put it."""
    checkout = os.path.join(checkout_folder(), "LICENSE")
    return checkout if os.path.exists(checkout) else resource_path("LICENSE")


def licence_line() -> str:
    """Our own licence, and where its text is."""
    path = licence_path()
    where = f"its text is in {html.escape(path)}" if path else "see https://www.gnu.org/licenses/gpl-3.0.html"
    return ("ilastik-desktop is free software under the GNU General Public License, version 3 or later "
            f"(GPL-3.0-or-later), without any warranty; {where}.")


def licences() -> list[tuple[str, str, str]]:
    """(name, version, licence) of the main libraries as installed."""
    found = []
    for name in LIBRARIES:
        try:
            meta = metadata.metadata(name)
        except metadata.PackageNotFoundError:
            continue
        licence = meta.get("License-Expression") or meta.get("License") or ""
        if not licence or len(licence) > 40:  # some put the whole text there: use the classifier
            classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License")]
            licence = classifiers[0] if classifiers else "see its package"
        found.append((name, meta["Version"], licence))
    return found


def about_text() -> str:
    """The About box: our version and licence, Python and Qt, the libraries' licences."""
    rows = "".join(f"<tr><td>{n}</td><td>{v}</td><td>{lic}</td></tr>" for n, v, lic in licences())
    return (f"<h3>ilastik-desktop {__version__}</h3><p>{licence_line()}</p><p>Python {platform.python_version()}, "
            f"Qt {QtCore.QT_VERSION_STR}.</p><p>Reads ilastik projects; ilastik is GPL software by the "
            f"ilastik team, not part of this program.</p><table>{rows}</table>")


def shortcut_sheet() -> str:
    """The keyboard shortcuts as an HTML table."""
    return "<table>" + "".join(f"<tr><td><b>{k}</b></td><td>&nbsp;&nbsp;{what}</td></tr>" for k, what in SHORTCUTS) \
        + "</table>"


def add_view_menu(window) -> QtWidgets.QMenu:
    """View > Side panel (F9), Fit views (Ctrl+0)."""
    menu = window.menuBar().addMenu("&View")
    toggle = window.side.toggleViewAction()
    toggle.setText("&Side panel")
    toggle.setShortcut(QtGui.QKeySequence("F9"))
    menu.addAction(toggle)
    menu.addAction("&Fit views", lambda: [view.fit() for view in window.views], QtGui.QKeySequence("Ctrl+0"))
    return menu


def add_help_menu(window: QtWidgets.QMainWindow) -> QtWidgets.QMenu:
    """Help > Keyboard shortcuts (F1), Read me, About."""
    menu = window.menuBar().addMenu("&Help")
    menu.addAction("&Keyboard shortcuts", lambda: QtWidgets.QMessageBox.information(
        window, "Keyboard shortcuts", shortcut_sheet()), QtGui.QKeySequence("F1"))
    readme = menu.addAction("&Read me", lambda: open_externally(readme_path()))
    readme.setEnabled(readme_path() is not None)
    menu.addAction("&About ilastik-desktop", lambda: QtWidgets.QMessageBox.about(window, "About", about_text()))
    return menu


def add_view_shortcuts(window) -> None:
    """On the main window: Alt+Right/Left step time, Ctrl+1..9 show or hide a layer."""
    def step_time(delta: int) -> None:
        if window.loader is not None and window.model.shape[0] > 1:
            window.loader.step("t", delta)

    def toggle_layer(index: int) -> None:
        if window.model is not None and index < len(window.model.layers):
            layer = window.model.layers[index]
            window.model.set_layer(layer.name, visible=not layer.visible)

    for key, delta in (("Alt+Right", 1), ("Alt+Left", -1)):
        QtWidgets.QShortcut(QtGui.QKeySequence(key), window, lambda d=delta: step_time(d))
    for index in range(9):
        QtWidgets.QShortcut(QtGui.QKeySequence(f"Ctrl+{index + 1}"), window, lambda i=index: toggle_layer(i))
