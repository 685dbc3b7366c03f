"""The app as the soak benchmark drives it, without Qt: the one place its objects are started and stopped."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from backend.web.server import WebServer, WebSettings
from ilastik_desktop.runtime.document import Document, open_document
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.serving import serve_document, stop_serving
from ilastik_desktop.runtime.settings import ComputeSettings
from ilastik_desktop.runtime.training import TrainingController


class GuiThread:
    """Runs posted calls one at a time, in order: the window's GUI thread, for the training controller."""

    def __init__(self, fail: Callable[[str, str], None]):
        self.fail = fail
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="soak-gui")
        self._thread.start()

    def post(self, function: Callable, *args) -> None:
        """Run ``function(*args)`` on the thread soon."""
        self._queue.put((function, args))

    def stop(self) -> None:
        """Run what was posted, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                item[0](*item[1])
            except Exception as exc:  # the window would log it and go on
                self.fail("gui", f"{type(exc).__name__}: {exc}")


@dataclass
class App:
    """The app's objects the soak drives."""

    services: Services
    document: Document
    controller: TrainingController
    server: WebServer
    gui: GuiThread


@contextmanager
def running_app(project: str, workers: int, cache_mb: int, chunk_memory_mb: float,
                fail: Callable[[str, str], None]) -> Iterator[App]:
    """The app's objects over ``project``: services with a local worker of ``workers`` compute processes and an
    embedded cache of ``cache_mb``, the document, its training controller (owned by a stand-in GUI thread that
    reports errors to ``fail``) and the web service over the document's gateway; all stopped after."""
    with Services(ComputeSettings(workers=workers, cache_mb=cache_mb)) as services:
        services.wait_for_workers()
        document = open_document(project, services)
        gui = GuiThread(fail)
        controller = TrainingController(document, services.executor, services.config.training, gui.post)
        try:
            server = serve_document(document, services, document.threshold,
                                    WebSettings(port=0, chunk_memory_mb=chunk_memory_mb))
            try:
                yield App(services, document, controller, server, gui)
            finally:
                stop_serving(server)
        finally:
            controller.close()
            gui.stop()
            document.close()
