"""The features of the object under the mouse (ID, size, mean intensity, bounding box), as one line of text.

The frame's objects come from the Objects layer's cached labels; their features are computed on this
controller's own thread and handed back through ``post`` (the window's GUI thread), so the caller never
waits on compute. The features of the last few frames are kept: moving within a frame answers at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from psygnal import Signal

from backend.compute.object_features import ObjectStats
from backend.compute.threshold import ThresholdSettings
from backend.service.gateway import VISIBLE, Gateway
from backend.service.object_table import frame_stats
from backend.service.objects import frame_roi, objects_key

KEPT_FRAMES = 4  # frames whose features are kept (a frame's are a few numbers per object)


def describe_object(stats: ObjectStats, object_id: int, volumetric: bool) -> str:
    """``object 7: 620 px, mean 33854.8, bbox x 21-46 y 33-66`` (inclusive bounds; z too in 3D)."""
    row = stats.row_of(object_id)
    if row is None:
        return f"object {object_id}"
    mean = "/".join(f"{value:.6g}" for value in stats.mean[row])
    axes = "zyx" if volumetric else "yx"
    first, last = stats.bbox_min[row][-len(axes):], stats.bbox_max[row][-len(axes):]
    box = " ".join(f"{axis} {low}-{high}" for axis, low, high in reversed(list(zip(axes, first, last))))
    return f"object {object_id}: {stats.count[row]} px, mean {mean}, bbox {box}"


class ObjectInfo:
    """Says what the object under the mouse is; ``text_changed`` carries the line ('' for no object)."""

    text_changed = Signal(str)

    def __init__(self, gateway: Gateway, post: Callable[..., None]):
        self.gateway, self.post = gateway, post
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="object-info")
        self._stats: OrderedDict[str, ObjectStats] = OrderedDict()
        self._computing: set[str] = set()
        self._wanted: tuple[str, int] | None = None
        self._closed = False

    def point(self, t: int | None, object_id: int, settings: ThresholdSettings) -> None:
        """The mouse is over ``object_id`` (0: background) of frame ``t`` thresholded with ``settings``; None
        for ``t`` when no object is shown there."""
        if t is None or not object_id or self._closed:
            self._wanted = None
            self.text_changed.emit("")
            return
        key = objects_key(self.gateway, t, settings)
        self._wanted = (key, object_id)
        if key in self._stats:
            self._stats.move_to_end(key)
            self._show(key)
            return
        self.text_changed.emit(f"object {object_id}: computing its features...")
        if key not in self._computing:
            self._computing.add(key)
            self._submit(self._compute, key, t, settings)

    def _submit(self, function: Callable, *args) -> None:
        try:
            self._pool.submit(function, *args)
        except RuntimeError:  # closed meanwhile
            pass

    def _compute(self, key: str, t: int, settings: ThresholdSettings) -> None:
        """On this controller's thread: the frame's features from its labels, asked for block by block."""
        try:
            stats = frame_stats(self.gateway, frame_roi(self.gateway, t), settings, VISIBLE, check=self._check)
        except Exception as exc:  # the cache, the lane or the frame failed, or closed meanwhile: said on the line
            self.post(self._failed, key, str(exc) or type(exc).__name__)
            return
        self.post(self._arrived, key, stats)

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("closed")

    def _arrived(self, key: str, stats: ObjectStats) -> None:
        self._computing.discard(key)
        self._stats[key] = stats
        while len(self._stats) > KEPT_FRAMES:
            self._stats.popitem(last=False)
        if self._wanted is not None and self._wanted[0] == key and not self._closed:
            self._show(key)

    def _failed(self, key: str, reason: str) -> None:
        self._computing.discard(key)
        if self._wanted is not None and self._wanted[0] == key and not self._closed:
            self.text_changed.emit(f"object {self._wanted[1]}: no features ({reason})")

    def _show(self, key: str) -> None:
        volumetric = self.gateway.source.spatial_shape[1] > 1
        self.text_changed.emit(describe_object(self._stats[key], self._wanted[1], volumetric))

    def close(self) -> None:
        """Stop computing; nothing more is said."""
        self._closed = True
        self._wanted = None
        self._pool.shutdown(wait=False, cancel_futures=True)
