"""Futures of block tasks: settled exactly once, whatever races with them, and relayed from inner futures.

Every executor hands out a :class:`TaskFuture` and settles it through :func:`settle`, which never raises
for a future that was cancelled or settled meanwhile (the check-then-set of ``Future`` is a race).
Executors that compute through another future (a process pool's, a Dask cluster's) keep the pair in a
:class:`FutureRelay`, which settles the outer future from the inner one whatever the inner one does
(including failing to give its result at all).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError

log = logging.getLogger(__name__)


class TaskError(RuntimeError):
    """A task that failed on a worker (the message says why); ``deterministic`` if it would fail again."""

    def __init__(self, message: str, deterministic: bool = False):
        super().__init__(message)
        self.deterministic = deterministic


class TaskFuture(Future):
    """A block task's future; ``compute_s`` is the seconds the task computed on its worker."""

    def __init__(self) -> None:
        super().__init__()
        self.compute_s = 0.0


def settle(future: Future, result=None, error: BaseException | None = None) -> bool:
    """Resolve ``future`` unless it was resolved or cancelled meanwhile; True if this call resolved it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        return False
    return True


def guarded(callback: Callable, *args) -> None:
    """Run ``callback(*args)``; an exception is logged, never raised into the caller's loop."""
    try:
        callback(*args)
    except Exception:
        log.exception("a callback failed (going on)")


class FutureRelay:
    """Outer futures handed to callers, each tied to the inner future that computes it now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inner: dict[int, tuple[Future, object]] = {}

    def attach(self, outer: Future, inner) -> None:
        """``inner`` computes ``outer`` from now on (replacing an earlier inner future)."""
        with self._lock:
            self._inner[id(outer)] = (outer, inner)

    def detach(self, outer: Future):
        """Forget ``outer``'s inner future and return it (None if there is none)."""
        with self._lock:
            pair = self._inner.pop(id(outer), None)
        return pair[1] if pair else None

    def inner(self, outer: Future):
        """The inner future computing ``outer`` now, or None."""
        with self._lock:
            pair = self._inner.get(id(outer))
        return pair[1] if pair else None

    def pending(self) -> int:
        """How many outer futures are still computing."""
        with self._lock:
            return len(self._inner)

    def drain(self) -> list:
        """Forget every pair; returns the inner futures (to cancel them)."""
        with self._lock:
            inner = [pair[1] for pair in self._inner.values()]
            self._inner.clear()
        return inner

    @staticmethod
    def relay(outer: Future, read: Callable[[], object], convert: Callable[[object], object] = lambda v: v) -> None:
        """Settle ``outer`` with ``convert(read())``; any failure of either settles it with that error.

        The error is kept without the traceback raising it here gave it: that traceback holds this frame,
        which holds ``outer``, which would hold the error: a cycle only the garbage collector frees, keeping
        whatever the error refers to (a process pool's queues and their semaphores) alive until then."""
        try:
            value = convert(read())
        except CancelledError:
            outer.cancel()
            return
        except Exception as exc:  # the inner future's own error, or one raised while fetching its result
            settle(outer, error=exc.with_traceback(None))
            return
        settle(outer, result=value)
