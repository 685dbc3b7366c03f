"""File > Serve over HTTP: where to listen, start and stop; shows the URLs (docs, viewer page, zarr) and the token.

The serving itself is :class:`~ilastik_desktop.runtime.serving.ServeController`'s; this dialog binds its
fields and buttons to it and shows its signals on the GUI thread.
"""

from __future__ import annotations

import html

from PyQt5 import QtCore, QtWidgets

from backend.compute.threshold import ThresholdSettings
from backend.web.server import WebServer, WebSettings
from ilastik_desktop.runtime.document import Document
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.serving import ServeController, viewer_url, zarr_url
from viewer.bridge import GuiBridge

VIEWER_HINT = "the lane on screen in any browser (neuroglancer), following training"


class ServeDialog(QtWidgets.QDialog):
    """The serving controller's face. ``serving`` emits the URL, "" on stop."""

    serving = QtCore.pyqtSignal(str)

    def __init__(self, services: Services, bridge: GuiBridge, parent=None):
        super().__init__(parent)
        self.bridge = bridge
        self.controller = ServeController(services)
        self.controller.started.connect(lambda server: bridge.post(self._started, server))
        self.controller.failed.connect(lambda message: bridge.post(self._failed, message))
        self.controller.stopped.connect(lambda reason: bridge.post(self._stopped, reason))
        self.controller.idle.connect(lambda: bridge.post(self._idle))
        self.setWindowTitle("Serve over HTTP")
        self.setMinimumWidth(560)
        self._build()

    @property
    def server(self) -> WebServer | None:
        """The running server, if any."""
        return self.controller.server

    def _build(self) -> None:
        form = QtWidgets.QFormLayout(self)
        self.host = QtWidgets.QLineEdit("127.0.0.1")
        self.host.setToolTip("127.0.0.1: this machine only. 0.0.0.0: every network")
        self.port = QtWidgets.QSpinBox(minimum=0, maximum=65535, value=8000)
        self.port.setToolTip("0: any free port")
        self.token = QtWidgets.QLineEdit(placeholderText="generated (shown in the links below)")
        self.cors = QtWidgets.QLineEdit(placeholderText="e.g. https://neuroglancer-demo.appspot.com (comma-separated)")
        self.url = QtWidgets.QLabel(textInteractionFlags=QtCore.Qt.TextBrowserInteraction, openExternalLinks=True)
        self.viewer_link = QtWidgets.QLabel(textInteractionFlags=QtCore.Qt.TextBrowserInteraction,
                                            openExternalLinks=True)
        self.viewer_link.setToolTip(VIEWER_HINT)
        # the link is elided to the width the dialog gives it (never wider): the tooltip and the copy button
        # give it whole
        self.viewer_link.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Preferred)
        self.message = QtWidgets.QLabel(wordWrap=True)
        self.message.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)
        self.start_button = QtWidgets.QPushButton("Start", clicked=self.start)
        self.stop_button = QtWidgets.QPushButton("Stop", clicked=lambda: self.controller.stop(), enabled=False)
        self.copy_button = QtWidgets.QPushButton("Copy zarr URL", clicked=self._copy, enabled=False)
        self.copy_viewer_button = QtWidgets.QPushButton("Copy viewer link", clicked=self._copy_viewer, enabled=False)
        buttons = QtWidgets.QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.copy_button, self.copy_viewer_button):
            buttons.addWidget(button)
        for label, widget in (("Address", self.host), ("Port", self.port), ("Token", self.token),
                              ("Browser origins", self.cors)):
            form.addRow(label, widget)
        form.addRow(buttons)
        form.addRow(self.url)
        form.addRow("Viewer", self.viewer_link)
        form.addRow(self.message)

    def set_document(self, document: Document | None, threshold: ThresholdSettings | None = None) -> None:
        """Serve ``document`` from now on (stopping the service over the previous one)."""
        self.controller.set_document(document, threshold)
        self.start_button.setEnabled(self.controller.can_start())

    def set_threshold(self, threshold: ThresholdSettings) -> None:
        """Objects served from now on use ``threshold``."""
        self.controller.set_threshold(threshold)

    def start(self) -> None:
        """Start serving the document in the background; the outcome shows in the dialog."""
        cors = tuple(o.strip() for o in self.cors.text().split(",") if o.strip())
        settings = WebSettings(host=self.host.text().strip() or "127.0.0.1", port=self.port.value(),
                               token=self.token.text().strip() or None, cors=cors)
        if self.controller.start(settings):
            self.start_button.setEnabled(False)
            self.message.setText(f"starting on {settings.host}:{settings.port} ...")

    def _started(self, server: WebServer) -> None:
        if server is not self.controller.server:
            return  # stopped meanwhile
        self.stop_button.setEnabled(True)
        self.copy_button.setEnabled(True)
        self.copy_viewer_button.setEnabled(True)
        for field in (self.host, self.port, self.token, self.cors):
            field.setEnabled(False)
        link = html.escape(server.link)
        self.url.setText(f'<a href="{link}/doc">{link}/doc</a>')
        self._show_viewer_link()
        token = f"token: {server.token}\n" if server.token else "no token: this machine only\n"
        self.message.setText(f"serving {server.url}\n{token}zarr: {self.zarr_url()}")
        self.serving.emit(server.url)

    def _failed(self, message: str) -> None:
        self.message.setText(message)
        self.start_button.setEnabled(self.controller.can_start())

    def _stopped(self, reason: str) -> None:
        self.stop_button.setEnabled(False)
        self.copy_button.setEnabled(False)
        self.copy_viewer_button.setEnabled(False)
        for field in (self.host, self.port, self.token, self.cors):
            field.setEnabled(True)
        self.url.clear()
        self._show_viewer_link()
        self.message.setText(reason)
        self.serving.emit("")

    def _show_viewer_link(self) -> None:
        link = self.viewer_url()
        shown = self.viewer_link.fontMetrics().elidedText(link, QtCore.Qt.ElideMiddle,
                                                          max(self.viewer_link.width() - 8, 80))
        self.viewer_link.setText(f'<a href="{html.escape(link)}">{html.escape(shown)}</a>' if link else "")
        self.viewer_link.setToolTip(f"{link}\n{VIEWER_HINT}" if link else VIEWER_HINT)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Elide the viewer link to the new width."""
        super().resizeEvent(event)
        self._show_viewer_link()

    def _idle(self) -> None:
        self.start_button.setEnabled(self.controller.can_start())

    def zarr_url(self) -> str:
        """The URL of the open lane's probabilities as OME-Zarr ("" when not serving)."""
        server = self.controller.server
        return zarr_url(server) if server is not None else ""

    def viewer_url(self) -> str:
        """The link of the viewer page showing the lane on screen ("" when not serving)."""
        server, document = self.controller.server, self.controller.document
        return viewer_url(server, document.lane if document is not None else 0) if server is not None else ""

    def _copy(self) -> None:
        QtWidgets.QApplication.clipboard().setText(self.zarr_url())

    def _copy_viewer(self) -> None:
        QtWidgets.QApplication.clipboard().setText(self.viewer_url())

    def stop(self, reason: str = "stopped") -> None:
        """Stop serving (in the background)."""
        self.controller.stop(reason)

    def shutdown(self) -> None:
        """Stop serving and wait until the server and its threads are gone (the window is closing)."""
        self.controller.shutdown()
