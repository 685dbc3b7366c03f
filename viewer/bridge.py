"""The one bridge from backend threads onto the GUI thread."""

from __future__ import annotations

import logging
from collections.abc import Callable

from PyQt5 import QtCore

log = logging.getLogger(__name__)


class GuiBridge(QtCore.QObject):
    """``post(fn, *args)`` from any thread runs ``fn(*args)`` soon on the thread that owns the bridge."""

    _call = QtCore.pyqtSignal(object, object)

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self._call.connect(self._run, QtCore.Qt.QueuedConnection)

    def post(self, function: Callable, *args) -> None:
        """Queue ``function(*args)`` for the GUI thread."""
        self._call.emit(function, args)

    @staticmethod
    def _run(function: Callable, args: tuple) -> None:
        try:
            function(*args)
        except Exception:  # a bad callback must not take the event loop down
            log.exception("a GUI callback failed")
