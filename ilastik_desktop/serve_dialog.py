"""File > Serve over HTTP: the open project's lanes as a web service (OME-Zarr and ROI API) while the window runs.

The lane on screen is served through the window's own gateway (so the views and the clients share blocks);
the project's other lanes get gateways of their own, closed when serving stops. Starting and stopping run
off the GUI thread; the service stops when the project is closed or the window quits.
"""

from __future__ import annotations

import threading

from PyQt5 import QtCore, QtWidgets

from backend.compute.threshold import ThresholdSettings
from backend.errors import UserError
from backend.web.catalog import Lane
from backend.web.server import WebServer, WebSettings
from ilastik_desktop import __version__
from ilastik_desktop.document import Document
from ilastik_desktop.serve import describe_project, open_served_lane
from ilastik_desktop.services import Services
from viewer.bridge import GuiBridge


def serve_document(document: Document, services: Services, threshold: ThresholdSettings,
                   settings: WebSettings) -> WebServer:
    """Start a web server over ``document``'s project: its open lane on its gateway, the others on their own."""
    project = document.project
    lanes = [Lane(0, project.lanes[0].nickname, document.gateway, threshold)]
    lanes += [open_served_lane(project, index, services) for index in range(1, len(project.lanes))]
    server = WebServer(lanes, describe_project(project), settings, __version__)
    try:
        return server.start()
    except UserError:
        _close_own_gateways(lanes)
        raise


def stop_serving(server: WebServer) -> None:
    """Stop ``server`` and close the gateways it opened (not the window's)."""
    server.stop()
    _close_own_gateways(server.service.lanes)


def _close_own_gateways(lanes: list[Lane]) -> None:
    for lane in lanes[1:]:
        if lane.gateway is not None:
            lane.gateway.close()


class ServeDialog(QtWidgets.QDialog):
    """Where to listen, start and stop; shows the URL and the token. ``serving`` emits the URL, "" on stop."""

    serving = QtCore.pyqtSignal(str)

    def __init__(self, services: Services, bridge: GuiBridge, parent=None):
        super().__init__(parent)
        self.services, self.bridge = services, bridge
        self.document: Document | None = None
        self.threshold = ThresholdSettings()
        self.server: WebServer | None = None
        self._busy: threading.Thread | None = None
        self._launched: WebServer | None = None  # started, not yet taken over by the GUI thread
        self.setWindowTitle("Serve over HTTP")
        self.setMinimumWidth(560)
        self._build()

    def _build(self) -> None:
        form = QtWidgets.QFormLayout(self)
        self.host = QtWidgets.QLineEdit("127.0.0.1")
        self.host.setToolTip("127.0.0.1: this machine only. 0.0.0.0: every network (a token is then required)")
        self.port = QtWidgets.QSpinBox(minimum=0, maximum=65535, value=8000)
        self.port.setToolTip("0: any free port")
        self.token = QtWidgets.QLineEdit(placeholderText="none on this machine only; generated otherwise")
        self.cors = QtWidgets.QLineEdit(placeholderText="e.g. https://neuroglancer-demo.appspot.com (comma-separated)")
        self.url = QtWidgets.QLabel(textInteractionFlags=QtCore.Qt.TextBrowserInteraction, openExternalLinks=True)
        self.message = QtWidgets.QLabel(wordWrap=True)
        self.message.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)
        self.start_button = QtWidgets.QPushButton("Start", clicked=self.start)
        self.stop_button = QtWidgets.QPushButton("Stop", clicked=lambda: self.stop(), enabled=False)
        self.copy_button = QtWidgets.QPushButton("Copy zarr URL", clicked=self._copy, enabled=False)
        buttons = QtWidgets.QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.copy_button):
            buttons.addWidget(button)
        for label, widget in (("Address", self.host), ("Port", self.port), ("Token", self.token),
                              ("Browser origins", self.cors)):
            form.addRow(label, widget)
        form.addRow(buttons)
        form.addRow(self.url)
        form.addRow(self.message)

    def set_document(self, document: Document | None, threshold: ThresholdSettings | None = None) -> None:
        """Serve ``document`` from now on (stopping the service over the previous one)."""
        if self.server is not None:
            self.stop(reason="stopped: the project was closed")
        self.document = document
        self.threshold = threshold or ThresholdSettings()
        self.start_button.setEnabled(document is not None and self._busy is None)

    def set_threshold(self, threshold: ThresholdSettings) -> None:
        """Objects served from now on use ``threshold`` (their ETag changes with it)."""
        self.threshold = threshold
        if self.server is not None:
            self.server.service.lanes[0].threshold = threshold

    def start(self) -> None:
        """Start serving the document in the background; the outcome shows in the dialog."""
        if self.document is None or self.server is not None or self._busy is not None:
            return
        token = self.token.text().strip() or None
        if token is not None and len(token) < 8:
            self.message.setText("The token must have at least 8 characters.")
            return
        cors = tuple(o.strip() for o in self.cors.text().split(",") if o.strip())
        settings = WebSettings(host=self.host.text().strip() or "127.0.0.1", port=self.port.value(), token=token,
                               cors=cors)
        self.start_button.setEnabled(False)
        self.message.setText(f"starting on {settings.host}:{settings.port} ...")
        self._in_background(self._start, self.document, self.threshold, settings)

    def _start(self, document: Document, threshold: ThresholdSettings, settings: WebSettings) -> None:
        try:
            server = serve_document(document, self.services, threshold, settings)
        except UserError as exc:
            self.bridge.post(self._failed, str(exc))
            return
        self._launched = server
        self.bridge.post(self._started, server, document)

    def _started(self, server: WebServer, document: Document) -> None:
        self._busy, self._launched = None, None
        if document is not self.document:  # the project changed while starting
            self._in_background(stop_serving, server)
            return
        self.server = server
        self.stop_button.setEnabled(True)
        self.copy_button.setEnabled(True)
        for field in (self.host, self.port, self.token, self.cors):
            field.setEnabled(False)
        prefix = server.url + (f"/t/{server.token}" if server.token else "")
        self.url.setText(f'<a href="{prefix}/doc">{prefix}/doc</a>')
        token = f"token: {server.token}\n" if server.token else "no token: this machine only\n"
        self.message.setText(f"serving {server.url}\n{token}zarr: {self.zarr_url()}")
        self.serving.emit(server.url)

    def _failed(self, message: str) -> None:
        self._busy = None
        self.message.setText(message)
        self.start_button.setEnabled(self.document is not None)

    def zarr_url(self) -> str:
        """The URL of the open lane's probabilities as OME-Zarr ("" when not serving)."""
        if self.server is None:
            return ""
        prefix = self.server.url + (f"/t/{self.server.token}" if self.server.token else "")
        return f"{prefix}/zarr/0/probabilities"

    def _copy(self) -> None:
        QtWidgets.QApplication.clipboard().setText(self.zarr_url())

    def stop(self, reason: str = "stopped") -> None:
        """Stop serving (in the background; :meth:`shutdown` waits for it)."""
        server, self.server = self.server, None
        if server is None:
            return
        self._in_background(stop_serving, server)
        self.stop_button.setEnabled(False)
        self.copy_button.setEnabled(False)
        for field in (self.host, self.port, self.token, self.cors):
            field.setEnabled(True)
        self.url.clear()
        self.message.setText(reason)
        self.serving.emit("")

    def _in_background(self, function, *args) -> None:
        def run() -> None:
            function(*args)
            if function is stop_serving:
                self.bridge.post(self._stopped)

        self._busy = threading.Thread(target=run, name="web-start-stop", daemon=True)
        self._busy.start()

    def _stopped(self) -> None:
        self._busy = None
        self.start_button.setEnabled(self.document is not None)

    def shutdown(self) -> None:
        """Stop serving and wait until the server and its threads are gone (the window is closing)."""
        busy = self._busy
        if busy is not None:
            busy.join(timeout=60)
        servers = {self.server, self._launched} - {None}
        self.server = self._launched = None
        for server in servers:
            stop_serving(server)
