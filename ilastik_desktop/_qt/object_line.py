"""The status bar's line on the object under the mouse: its ID, size, mean intensity and bounding box."""

from __future__ import annotations

from PyQt5 import QtWidgets

from backend.service.gateway import Gateway
from ilastik_desktop.runtime.object_info import ObjectInfo
from viewer.bridge import GuiBridge
from viewer.loader import PlaneLoader
from viewer.model import OBJECTS, ViewerModel
from viewer.slice_view import SliceView


class ObjectLine(QtWidgets.QLabel):
    """Shows :class:`ObjectInfo`'s line while the Objects layer is visible and the mouse is over an object."""

    def __init__(self, bridge: GuiBridge):
        super().__init__()
        self.bridge = bridge
        self.info: ObjectInfo | None = None

    def bind(self, gateway: Gateway) -> None:
        """Describe the objects of ``gateway``'s lane from now on."""
        self.unbind()
        self.info = ObjectInfo(gateway, self.bridge.post)
        self.info.text_changed.connect(self.setText, check_nargs=False)  # a Qt slot: no signature

    def unbind(self) -> None:
        """Stop describing the lane's objects (it is closed or another is shown)."""
        if self.info is not None:
            self.info.close()
            self.info = None
        self.clear()

    def point(self, model: ViewerModel, loader: PlaneLoader | None, pointer: tuple[SliceView, int, int] | None) -> None:
        """The mouse is at ``pointer`` (view, row, column), or off the views (None)."""
        if self.info is None:
            return
        value = None
        if pointer is not None and loader is not None and model.layer(OBJECTS).visible:
            view, row, col = pointer
            value = loader.value_at(view.plane, OBJECTS, row, col)
        self.info.point(model.position[0] if value is not None else None,
                        int(value[0]) if value is not None else 0, loader.threshold if loader else None)
