"""The View and Help menus (side panel, fit views; keyboard shortcuts, the README, About with versions and
licences) and the window's keyboard shortcuts for time steps and layers. The keyboard help (F1) is built from
the window's own actions and shortcuts when it is shown, so it lists every key the window has."""

from __future__ import annotations

import html
import os
import platform
from importlib import metadata

from PyQt5 import QtCore, QtGui, QtWidgets

from ilastik_desktop import __version__
from ilastik_desktop._qt.training import LABELING_KEYS
from ilastik_desktop.runtime.frozen import checkout_folder, open_externally, resource_path

VIEW_KEYS = (  # the views handle these themselves (no QAction or QShortcut stands for them)
    ("Up / Down, mouse wheel", "next / previous slice (time step on 2D+t data)"),
    ("Page Up / Page Down", "10 slices"),
    ("Ctrl+wheel, drag, click", "zoom, pan, move the crosshair"),
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


def key_text(sequence: QtGui.QKeySequence) -> str:
    """A key sequence as the user reads it (e.g. ``Ctrl+N``)."""
    return sequence.toString(QtGui.QKeySequence.NativeText)


def _action_name(action: QtWidgets.QAction) -> str:
    menus = [w for w in action.associatedWidgets() if isinstance(w, QtWidgets.QMenu)]
    text = action.text().replace("&", "").rstrip(".")
    return f"{menus[0].title().replace('&', '')} > {text}" if menus else text


def shortcut_rows(window: QtWidgets.QMainWindow) -> list[tuple[list[str], str]]:
    """(keys, what they do) for every key the window answers to now: its actions', its shortcuts' (with what
    they do in their What's This), its buttons', the views' own keys, and ilastik's labeling keys (on once a
    project is open). Keys that do the same thing share a row."""
    found: list[tuple[str, str]] = []
    for action in window.findChildren(QtWidgets.QAction):
        found += [(key_text(key), _action_name(action)) for key in action.shortcuts()]
    for shortcut in window.findChildren(QtWidgets.QShortcut):
        if shortcut.isEnabled() and not shortcut.key().isEmpty():
            found.append((key_text(shortcut.key()), shortcut.whatsThis()))
    for button in window.findChildren(QtWidgets.QAbstractButton):
        if button.window() is window and not button.shortcut().isEmpty():
            found.append((key_text(button.shortcut()), button.toolTip() or button.text().replace("&", "")))
    found += LABELING_KEYS  # listed also before a project is open (and only once after)
    rows: dict[str, list[str]] = {}
    for key, what in found:
        if not any(key in keys for keys in rows.values()):
            rows.setdefault(what, []).append(key)
    return [(keys, what) for what, keys in rows.items()] + [([keys], what) for keys, what in VIEW_KEYS]


def shortcut_sheet(window: QtWidgets.QMainWindow) -> str:
    """The keyboard shortcuts of ``window`` (:func:`shortcut_rows`) as an HTML table."""
    def keys_text(keys: list[str]) -> str:
        return f"{keys[0]} ... {keys[-1]}" if len(keys) > 3 else " / ".join(keys)

    return "<table>" + "".join(f"<tr><td><b>{html.escape(keys_text(keys))}</b></td><td>&nbsp;&nbsp;"
                               f"{html.escape(what)}</td></tr>" for keys, what in shortcut_rows(window)) + "</table>"


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
        window, "Keyboard shortcuts", shortcut_sheet(window)), QtGui.QKeySequence("F1"))
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

    for key, delta, what in (("Alt+Right", 1, "next time step"), ("Alt+Left", -1, "previous time step")):
        QtWidgets.QShortcut(QtGui.QKeySequence(key), window, lambda d=delta: step_time(d)).setWhatsThis(what)
    for index in range(9):
        shortcut = QtWidgets.QShortcut(QtGui.QKeySequence(f"Ctrl+{index + 1}"), window, lambda i=index: toggle_layer(i))
        shortcut.setWhatsThis("show or hide layer 1 to 9 (as listed in Layers)")
