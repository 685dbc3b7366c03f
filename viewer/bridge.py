"""The one bridge from backend threads onto the GUI thread.

Model and controller events are psygnal signals, emitted on the thread that changed the state; results
computed elsewhere come onto the GUI thread through this bridge. psygnal's own queued connections
(``connect(thread=...)`` with ``psygnal.qt.start_emitting_from_queue``) need qtpy besides PyQt5 and poll their
queue with a QTimer, while a queued Qt signal wakes the event loop the moment something is posted: the
viewer posts every arriving tile, so the bridge stays.
"""

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
