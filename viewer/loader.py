"""Fills the slice views from the gateway: visible tiles first, progressive painting, cancellation.

What to ask for, in which blocks, what to prefetch and what is stale is decided by the Qt-free
:class:`~viewer.slicing.SlicingPolicy`; this module carries it out. Every gateway call runs on the
loader's I/O threads; results come back through the GUI bridge.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PyQt5 import QtCore

from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings
from backend.config import WindowConfig
from backend.errors import UserError
from backend.service.gateway import PREFETCH, RAW, SIDE_VIEW, VISIBLE, Gateway
from backend.service.objects import request_objects
from backend.service.rendering import objects_rgba, probability_rgba, segmentation_rgba
from viewer.bridge import GuiBridge
from viewer.model import (
    CLASSES_CHANGED,
    LABELS,
    OBJECTS,
    ORDER_CHANGED,
    PROBABILITIES,
    SEGMENTATION,
    UNCERTAINTY,
    ViewerModel,
)
from viewer.slice_view import SliceView
from viewer.slicing import SlicingPolicy, Slot, plane_roi, view_block_shape

log = logging.getLogger(__name__)
RESULT_LAYERS = (PROBABILITIES, UNCERTAINTY, SEGMENTATION, OBJECTS)  # computed from the classifier


class PlaneLoader(QtCore.QObject):
    """Keeps the views' layers filled; ``settled`` fires when everything visible is complete."""

    settled = QtCore.pyqtSignal()
    progress = QtCore.pyqtSignal(int)  # blocks still wanted by the visible views
    failed = QtCore.pyqtSignal(str)  # one line: why a layer cannot be shown (its view counts as settled)

    def __init__(self, model: ViewerModel, gateway: Gateway, views: list[SliceView], bridge: GuiBridge,
                 threshold: ThresholdSettings, parent=None,
                 refresh_delay_s: float = WindowConfig().refresh_delay_s):
        super().__init__(parent)
        self.model, self.gateway, self.views, self.bridge = model, gateway, views, bridge
        self.threshold = threshold
        self.io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="viewer-io")
        self.policy = SlicingPolicy(views[0].normal_axis)
        self.slots = self.policy.slots
        self._styles: dict[tuple[str, str], tuple] = {}  # (view, kind) -> the layers' looks last painted
        self._closed = False
        self._timer = QtCore.QTimer(self, singleShot=True, interval=round(refresh_delay_s * 1000))
        self._timer.timeout.connect(self.refresh)
        model.position_changed.connect(self._moved)
        model.layers_changed.connect(self._layers_changed)
        model.display_changed.connect(self._display_changed)
        for view in views:
            view.range_changed.connect(self.schedule)
        self._restyle_raw()

    def schedule(self) -> None:
        """Refresh soon (changes arriving together are handled once); nothing once closed."""
        if not self._closed:
            self._timer.start()

    def set_threshold(self, settings: ThresholdSettings) -> None:
        """Label objects with other parameters from now on."""
        self.threshold = settings
        self.policy.forget(OBJECTS)
        self.schedule()

    def renew(self) -> None:
        """Recompute every result layer shown under the gateway's new pipeline, keeping the old overlays on
        screen until each new tile replaces its part."""
        self.policy.renew(RESULT_LAYERS)
        self.refresh()

    def drop_prefetch(self) -> None:
        """Stop prefetching the result layers: a new classifier is coming, and what they prefetch would be
        outdated (they prefetch again once it is shown)."""
        for (_, kind), slot in self.slots.items():
            if kind != RAW and slot.prefetch is not None:
                self._cancel_all([slot.prefetch])
                slot.prefetch = None

    def close(self) -> None:
        """Cancel everything and stop the I/O threads (a view resized while the window closes asks nothing)."""
        self._closed = True
        self._timer.stop()
        for slot in self.slots.values():
            self._cancel(slot)
        self.io.shutdown(wait=True, cancel_futures=True)

    def pending_blocks(self) -> int:
        """Blocks the visible views still wait for."""
        return self.policy.pending_blocks()

    def shown(self, plane: str, kind: str):
        """The values painted for ``kind`` in view ``plane`` over the region last requested, and that region."""
        slot = self.slots[(plane, kind)]
        view = next(v for v in self.views if v.plane == plane)
        rows, cols = self._plane_slices(view, slot.roi)
        return slot.values[rows, cols], slot.roi

    def value_at(self, plane: str, kind: str, row: int, col: int) -> np.ndarray | None:
        """The painted values (one per channel) of ``kind`` at a pixel of view ``plane``, None if not there yet."""
        slot = self.slots.get((plane, kind))
        if slot is None or slot.values is None or (slot.painted is not None and not slot.painted[row, col]):
            return None
        normal = "tzyx".index(next(v for v in self.views if v.plane == plane).normal_axis)
        here = self.model.position
        if slot.roi.start[0] != here[0] or slot.roi.start[normal] != here[normal]:  # another slice: not yet asked
            return None
        return np.atleast_1d(slot.values[row, col])

    def raw_plane(self, plane: str) -> np.ndarray | None:
        """The raw data shown in view ``plane`` (None before any arrived)."""
        slot = self.slots.get((plane, RAW))
        return None if slot is None else slot.values

    def is_complete(self, plane: str, kind: str) -> bool:
        """True when view ``plane`` shows every block of ``kind`` it asked for."""
        slot = self.slots.get((plane, kind))
        return slot is not None and slot.values is not None and slot.done

    def is_settled(self) -> bool:
        """True when every visible layer of every view is complete."""
        return not self._timer.isActive() and self.policy.all_done()

    # -- reacting to the model -------------------------------------------------------------------------
    def _moved(self, axis: str) -> None:
        self.schedule()

    def _restyle_raw(self) -> None:
        """Show, hide or fade the raw planes as the Raw layer says."""
        raw = next(layer for layer in self.model.layers if layer.kind == RAW)
        for view in self.views:
            view.set_raw_style(raw.visible, raw.opacity)

    def _layers_changed(self, name: str) -> None:
        self._restyle_raw()
        if name == CLASSES_CHANGED:  # overlays of layers that are gone leave the views; the rest is recoloured
            names = {layer.name for layer in self.model.layers}  # every overlay is named after its layer
            for view in self.views:
                for old in [n for n in view.overlays if n not in names]:
                    view.remove_overlay(old)
            self._styles.clear()
        if name in (CLASSES_CHANGED, ORDER_CHANGED):  # later layers are drawn above earlier ones
            for view in self.views:
                for order, layer in enumerate(self.model.layers):
                    if layer.kind != LABELS:
                        view.set_order(layer.name, order)
        self.schedule()

    def _display_changed(self) -> None:
        for view in self.views:
            view.set_levels(self.model.contrast)
            view.set_colormap(self.model.colormap)
        self.policy.forget(RAW)  # another channel
        self.schedule()

    def step(self, axis: str, delta: int) -> None:
        """Move along ``axis`` and remember the axis and direction for prefetching."""
        self.policy.step(axis, delta)
        self.model.step(axis, delta)

    # -- requests --------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Request what each view shows now; recolour what is already there."""
        if self._closed:
            return
        visible = {layer.kind for layer in self.model.layers if layer.visible}
        if self.gateway.pipeline.forests is None:  # an untrained project shows its raw data only
            visible = {RAW}
        for view in self.views:
            self._want(view, RAW, self._plane_roi(view, whole=True))
            for kind in RESULT_LAYERS:
                if kind in visible and self.model.live:
                    self._want(view, kind, self._plane_roi(view, whole=False))
                style = tuple((layer.visible, layer.opacity) for layer in self.model.layers if layer.kind == kind)
                if self._styles.get((view.plane, kind)) != style:  # recolour only what the user restyled
                    self._styles[(view.plane, kind)] = style
                    self._recolour(view, kind)
        self.progress.emit(self.pending_blocks())
        self._check_settled()

    def _plane_roi(self, view: SliceView, whole: bool) -> Roi:
        rect = (0, view.shape[0], 0, view.shape[1]) if whole else view.visible_rect()
        return plane_roi(self.model.position, view.rows_axis, view.cols_axis, rect)

    def _want(self, view: SliceView, kind: str, roi: Roi) -> None:
        wanted = self.policy.want(view.plane, kind, view.normal_axis, roi)
        if wanted is None:
            return
        self._cancel_all(wanted.stale)
        if wanted.clear and kind != RAW:
            for name in self._layer_names(kind):
                view.clear_overlay(name)
        self.io.submit(self._start, view, kind, wanted.slot, wanted.generation, roi)

    def _start(self, view: SliceView, kind: str, slot: Slot, generation: int, roi: Roi) -> None:
        """On an I/O thread: ask the gateway (unless the view has moved on already)."""
        if generation != slot.generation:
            return
        prefetch = None
        try:
            priority = VISIBLE if view is self.views[0] else SIDE_VIEW  # the main (xy) view first

            def paint(part: Roi, values: np.ndarray) -> None:
                self.bridge.post(self._paint, view, kind, slot, generation, part, values.copy())

            if kind == OBJECTS:  # its blocks are the frame's labelling blocks, painted as they are labelled
                handle = request_objects(self.gateway, roi, self.threshold, priority, paint)
            else:
                blocks = view_block_shape(view.normal_axis)
                handle = self.gateway.request(kind, roi, priority, paint, blocks)
                ahead = self.policy.prefetch_for(view.normal_axis, roi, self.model.shape) if kind != RAW else None
                if ahead is not None and generation == slot.generation:
                    prefetch = self.gateway.request(kind, ahead, PREFETCH, block_shape=blocks)
            handle.future.add_done_callback(lambda f: self.bridge.post(self._finished, kind, slot, generation, f))
        except Exception as exc:  # refused (an unsupported method, cache down, bad region): say it, do not crash
            log.warning("could not request %s for the %s view: %s", kind, view.plane, exc)
            self.bridge.post(self._refused, slot, generation, problem(kind, exc))
            return
        self.bridge.post(self._attach, slot, generation, handle, prefetch)

    def _refused(self, slot: Slot, generation: int, message: str) -> None:
        """On the GUI thread: a request that could not be made is over (asked again only when the view moves
        or the parameters change); say why."""
        if generation != slot.generation:
            return
        slot.complete = True
        self.failed.emit(message)
        self._check_settled()

    def _attach(self, slot: Slot, generation: int, handle, prefetch) -> None:
        """On the GUI thread: keep the requests of the current generation, cancel stale ones."""
        self._cancel_all(self.policy.attach(slot, generation, handle, prefetch))
        self._check_settled()

    def _cancel(self, slot: Slot) -> None:
        self._cancel_all(self.policy.release(slot))

    def _cancel_all(self, handles: list) -> None:
        for handle in handles:
            self.io.submit(_cancel_handle, handle)

    # -- painting (GUI thread) -------------------------------------------------------------------------
    def _paint(self, view: SliceView, kind: str, slot: Slot, generation: int, part: Roi, values) -> None:
        if generation != slot.generation:
            return
        plane = _plane_of(values, view)
        rows, cols = self._plane_slices(view, part)
        if kind == RAW:
            if slot.values is None or slot.values.shape[:2] != view.shape:
                slot.values = np.zeros(view.shape, plane.dtype)
            slot.values[rows, cols] = plane[..., self.model.channel]
            view.set_raw(slot.values, self.model.contrast)
            return
        if slot.values is None or slot.values.shape[-1] != plane.shape[-1]:  # first, or classes were added
            slot.values = np.zeros(view.shape + (plane.shape[-1],), plane.dtype)
            slot.painted = np.zeros(view.shape, bool)
        if slot.values.dtype != plane.dtype:  # objects of a frame whose IDs need uint64 (or back): keep the wider
            slot.values = slot.values.astype(np.promote_types(slot.values.dtype, plane.dtype))
        slot.values[rows, cols] = plane
        slot.painted[rows, cols] = True
        self._recolour(view, kind, (rows, cols))
        self.progress.emit(self.pending_blocks())  # what is under the mouse may have just arrived

    def _finished(self, kind: str, slot: Slot, generation: int, future: Future) -> None:
        if generation == slot.generation and not future.cancelled():
            slot.complete = True  # posted after the blocks' paints, so they are all on screen
            if future.exception() is not None:
                log.warning("%s blocks failed: %s", kind, future.exception())
                if kind == OBJECTS:  # a frame that cannot be labelled (too many objects, a bad channel): say it
                    self.failed.emit(problem(kind, future.exception()))
        self.progress.emit(self.pending_blocks())
        self._check_settled()

    def _recolour(self, view: SliceView, kind: str, where=(slice(None), slice(None))) -> None:
        slot = self.slots.get((view.plane, kind))
        for layer in self.model.layers:
            if layer.kind != kind or kind == RAW:
                continue
            buffer = view.overlay(layer.name, self.model.layers.index(layer))
            view.show_overlay(layer.name, layer.visible)
            if slot is None or slot.values is None or not layer.visible:
                continue
            values = slot.values[where]
            if kind == PROBABILITIES and layer.index >= values.shape[-1]:
                continue  # a class added since these values were computed
            if kind in (PROBABILITIES, UNCERTAINTY):
                buffer[where] = probability_rgba(values[..., layer.index], layer.color, layer.opacity)
            elif kind == SEGMENTATION:
                colors = [x.color for x in self.model.layers if x.kind == PROBABILITIES]
                buffer[where] = segmentation_rgba(values[..., 0], colors, layer.opacity)
            else:
                buffer[where] = objects_rgba(values[..., 0], layer.opacity)
            view.refresh(layer.name)

    def _layer_names(self, kind: str) -> list[str]:
        return [layer.name for layer in self.model.layers if layer.kind == kind]

    @staticmethod
    def _plane_slices(view: SliceView, part: Roi) -> tuple[slice, slice]:
        rows, cols = "tzyx".index(view.rows_axis), "tzyx".index(view.cols_axis)
        return slice(part.start[rows], part.stop[rows]), slice(part.start[cols], part.stop[cols])

    def _check_settled(self) -> None:
        if self.is_settled():
            self.settled.emit()


def problem(kind: str, exc: BaseException) -> str:
    """One line on why ``kind`` cannot be shown: a user's mistake (such as a thresholding method not supported)
    in its own words, anything else named as a failure."""
    return str(exc) if isinstance(exc, UserError) else f"could not show {kind}: {type(exc).__name__}: {exc}"


def _plane_of(values: np.ndarray, view: SliceView) -> np.ndarray:
    """``(t, z, y, x, c)`` values one voxel thick along the view's normal as ``(rows, cols, c)``."""
    plane = values[0].take(0, axis="zyx".index(view.normal_axis))
    return plane.swapaxes(0, 1) if "zyx".index(view.rows_axis) > "zyx".index(view.cols_axis) else plane


def _cancel_handle(handle) -> None:
    handle.cancel()
