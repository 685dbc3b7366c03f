"""Work deferred to the end of a batch of futures settled together.

An executor that settles many futures at once (one turn of the ZeroMQ executor) opens a batch around
them; what their callbacks hand to :func:`after_settling` (the gateway's cache writes) then runs once,
when the batch ends, for all of them together. Outside a batch it runs at once, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from backend.distributed.futures import guarded

_local = threading.local()


@contextmanager
def settling_batch() -> Iterator[None]:
    """Defer what :func:`after_settling` is given on this thread until the block ends (the outermost one)."""
    if getattr(_local, "deferred", None) is not None:
        yield
        return
    _local.deferred = {}
    try:
        yield
    finally:
        deferred, _local.deferred = _local.deferred, None
        for action in deferred:
            guarded(action)


def after_settling(action: Callable[[], None]) -> None:
    """Run ``action`` once when this thread's settling batch ends (however often it is given), or now."""
    deferred = getattr(_local, "deferred", None)
    if deferred is None:
        action()
    else:
        deferred.setdefault(action, None)


def settle_all(settles: list[Callable[[], object]]) -> None:
    """Run settling actions in order as one batch; a failing callback never stops the others."""
    with settling_batch():
        for settle_one in settles:
            guarded(settle_one)
