"""One region of one layer being assembled from blocks, as the gateway delivers them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from backend.compute.geometry import Roi
from backend.distributed.futures import settle


class RegionRequest:
    """One region of one layer being assembled; ``future`` resolves to the ``(t, z, y, x, c)`` array.

    ``on_block(part, values)`` is called once per finished block, before the future resolves; it must
    return quickly (hand the values over, do not compute in it). The future is settled exactly once:
    with the region, the first error, or cancelled by :meth:`cancel`, whichever comes first.
    """

    def __init__(self, gateway, kind: str, roi: Roi, channels: int, dtype,
                 on_block: Callable[[Roi, np.ndarray], None] | None):
        self.gateway, self.kind, self.roi, self.on_block = gateway, kind, roi, on_block
        self.data = np.zeros(roi.shape + (channels,), dtype)
        self.future: Future = Future()
        self.pending: set[str] = set()
        self._lock = threading.Lock()

    def result(self, timeout: float | None = None) -> np.ndarray:
        """The assembled region (raises the first block error, or TimeoutError)."""
        return self.future.result(timeout)

    def cancel(self) -> None:
        """Stop waiting; blocks nobody else wants are dropped from the queue."""
        self.gateway.detach(self)
        self.future.cancel()

    def deliver(self, key: str, block: Roi, values: np.ndarray) -> None:
        """One block's values (the gateway calls this once per block)."""
        part = block.intersect(self.roi)
        with self._lock:
            if key not in self.pending or self.future.done():
                return
            if values.dtype != self.data.dtype and np.can_cast(self.data.dtype, values.dtype, "safe"):
                self.data = self.data.astype(values.dtype)  # a derived value of the wider of its dtypes
            self.data[part.relative_to(self.roi)] = values[part.relative_to(block)]
            self.pending.discard(key)
            finished = not self.pending
            if self.on_block is not None:  # under the lock: every block is announced before the future resolves
                self.on_block(part, self.data[part.relative_to(self.roi)])
        if finished:
            settle(self.future, result=self.data)

    def fail(self, error: Exception) -> None:
        """A block of the region failed: the region fails with its error (unless settled already)."""
        settle(self.future, error=error)
