"""Serving a project's lanes over HTTP, from the command line (``serve``) or from the window.

A lane is served through a gateway: the window's own one for the lane on screen (so the views and the
clients share blocks), a gateway of its own for every other lane, closed when serving stops.
:class:`ServeController` starts and stops the service off the caller's thread and reports what happened
through its signals; the window's dialog only shows them.
"""

from __future__ import annotations

import dataclasses
import threading

from psygnal import Signal

from backend.compute.pipeline import Pipeline
from backend.compute.threshold import ThresholdSettings, default_settings
from backend.errors import UserError
from backend.io.dataset import open_lane
from backend.io.project import Project
from backend.io.project_pipeline import build_pipeline
from backend.service.export import default_block_shape
from backend.web.catalog import Lane
from backend.web.server import WebServer, WebSettings
from ilastik_desktop import __version__
from ilastik_desktop.runtime.document import Document
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.settings import parse_threshold


def open_served_lane(project: Project, index: int, services: Services, raw_data: str | None = None,
                     input_axes: str | None = None, threshold: str = "", block_shape: tuple | None = None,
                     classifier=None, pipeline: Pipeline | None = None, relabel: bool = False) -> Lane:
    """Lane ``index`` on a gateway of its own (computing ``pipeline``, else the project's with ``classifier``), or
    without one and with the reason when its data does not open."""
    nickname = project.lanes[index].nickname
    try:
        source = open_lane(project, index, raw_data, input_axes)
        pipeline = pipeline or build_pipeline(project, source.channels, source.shape[1] > 1, classifier)
        settings = parse_threshold(threshold, project.threshold or default_settings(list(project.label_names)),
                                   pipeline.label_count, relabel, project.label_names)
    except UserError as exc:
        return Lane(index, nickname, None, error=str(exc))
    gateway = services.gateway(source, pipeline, block_shape or default_block_shape(source.spatial_shape))
    return Lane(index, nickname, gateway, settings)


def describe_project(project: Project) -> dict:
    """The project part of ``/api/v1/info``: its file and classes with their colours."""
    return {"project": project.path,
            "classes": [{"name": name, "color": list(color)} for name, color in zip(project.label_names,
                                                                                   project.label_colors)]}


class WindowLane(Lane):
    """The lane on screen, served through the window's gateway (which stays open when serving stops)."""


def serve_document(document: Document, services: Services, threshold: ThresholdSettings,
                   settings: WebSettings) -> WebServer:
    """Start a web server over ``document``'s project: its lane on screen on its gateway, the others on their own,
    all with the window's pipeline (the classifier trained in the window)."""
    project = document.project
    lanes = [WindowLane(index, info.nickname, document.gateway, threshold) if index == document.lane
             else open_served_lane(project, index, services, pipeline=document.pipeline)
             for index, info in enumerate(project.lanes)]
    server = WebServer(lanes, describe_project(project), dataclasses.replace(settings, limits=services.config.web),
                       __version__)
    try:
        return server.start()
    except UserError:
        close_own_gateways(lanes)
        raise


def stop_serving(server: WebServer) -> None:
    """Stop ``server`` and close the gateways it opened (not the window's)."""
    server.stop()
    close_own_gateways(server.service.lanes)


def close_own_gateways(lanes: list[Lane]) -> None:
    """Close the gateways of every lane but the window's own."""
    for lane in lanes:
        if lane.gateway is not None and not isinstance(lane, WindowLane):
            lane.gateway.close()


def zarr_url(server: WebServer) -> str:
    """The URL of lane 0's probabilities as OME-Zarr, with the token in the path if there is one."""
    return f"{server.link}/zarr/0/probabilities"


def viewer_url(server: WebServer, lane: int = 0) -> str:
    """The URL of the viewer page of ``lane`` (neuroglancer in any browser), with the token in the path if there
    is one."""
    return f"{server.link}/viewer?lane={lane}"


class ServeController:
    """Serves the open document while asked to; signals come from a background thread.

    ``started(server)`` once serving, ``failed(message)`` when it could not start, ``stopped(reason)`` when
    serving stops, ``idle()`` when the background work is over (another start may begin).
    """

    started = Signal(object)
    failed = Signal(str)
    stopped = Signal(str)
    idle = Signal()

    def __init__(self, services: Services):
        self.services = services
        self.document: Document | None = None
        self.threshold = ThresholdSettings()
        self.server: WebServer | None = None
        self._launched: WebServer | None = None  # started, not yet taken over
        self._busy: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """True while starting or stopping runs in the background."""
        busy = self._busy
        return busy is not None and busy.is_alive()

    def can_start(self) -> bool:
        """True when a document is open, nothing is served and nothing runs in the background."""
        return self.document is not None and self.server is None and not self.busy

    def set_document(self, document: Document | None, threshold: ThresholdSettings | None = None) -> None:
        """Serve ``document`` from now on: the service over another project stops; another lane of the same
        project shown goes on being served (every lane is, each as itself)."""
        same_project = (document is not None and self.document is not None
                        and document.project.path == self.document.project.path)
        if self.server is not None and not same_project:
            self.stop(reason="stopped: the project was closed")
        with self._lock:
            self.document = document
            self.threshold = threshold or ThresholdSettings()

    def set_threshold(self, threshold: ThresholdSettings) -> None:
        """Objects served from now on use ``threshold`` (their ETag changes with it)."""
        self.threshold = threshold
        server = self.server
        for lane in server.service.lanes if server is not None else ():
            if isinstance(lane, WindowLane):
                lane.threshold = threshold

    def start(self, settings: WebSettings) -> bool:
        """Start serving the document in the background; False (and nothing started) if it cannot start now."""
        if settings.token is not None and len(settings.token) < 8:
            self.failed.emit("The token must have at least 8 characters.")
            return False
        try:
            settings.check()
        except UserError as exc:
            self.failed.emit(str(exc))
            return False
        if not self.can_start():
            return False
        self._in_background(self._start, self.document, self.threshold, settings)
        return True

    def _start(self, document: Document, threshold: ThresholdSettings, settings: WebSettings) -> None:
        try:
            server = serve_document(document, self.services, threshold, settings)
        except UserError as exc:
            self.failed.emit(str(exc))
            return
        with self._lock:
            current = document is self.document
            if current:
                self.server = server
            else:
                self._launched = server
        if not current:  # the project changed while starting
            stop_serving(server)
            self._launched = None
            return
        self.started.emit(server)

    def stop(self, reason: str = "stopped") -> None:
        """Stop serving (in the background; :meth:`shutdown` waits for it)."""
        with self._lock:
            server, self.server = self.server, None
        if server is None:
            return
        self._in_background(stop_serving, server)
        self.stopped.emit(reason)

    def _in_background(self, function, *args) -> None:
        def run() -> None:
            try:
                function(*args)
            finally:
                self.idle.emit()

        self._busy = threading.Thread(target=run, name="web-start-stop", daemon=True)
        self._busy.start()

    def shutdown(self) -> None:
        """Stop serving and wait until the server and its threads are gone (the window is closing)."""
        busy = self._busy
        if busy is not None:
            busy.join(timeout=60)
        with self._lock:
            servers = {self.server, self._launched} - {None}
            self.server = self._launched = None
        for server in servers:
            stop_serving(server)
