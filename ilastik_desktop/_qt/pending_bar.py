"""The status bar's pending-blocks bar: the blocks the views wait for, and those of every request."""

from __future__ import annotations

from PyQt5 import QtWidgets


class PendingBar(QtWidgets.QProgressBar):
    """Counts the blocks the views wait for; its text also gives every request's blocks (views, prefetch,
    exports, objects) so it never says "0 pending" while the workers are busy for the project."""

    def __init__(self, parent=None):
        super().__init__(parent, maximumWidth=260, textVisible=True)
        self.setRange(0, 1)
        self.all_pending = 0
        self._format()

    def show_visible(self, count: int) -> None:
        """The views now wait for ``count`` blocks."""
        self.setRange(0, max(count, self.maximum() if count else 1))
        self.setValue(count)
        self._format()

    def show_all(self, count: int) -> None:
        """Every request of the project waits for ``count`` blocks."""
        self.all_pending = count
        self._format()

    def reset(self) -> None:
        """No project: nothing pending."""
        self.all_pending = 0
        self.show_visible(0)

    def _format(self) -> None:
        self.setFormat(f"%v visible, {max(self.all_pending, self.value(), 0)} in all pending")
