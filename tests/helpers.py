"""Waiting in tests: on the state a test needs, never a fixed sleep.

``wait_for`` returns as soon as a condition holds, and fails saying what it saw when it does not hold in
time. ``stays`` asserts that a condition holds throughout a period: the one case where a test has to let
time pass is proving that something does *not* happen.

Both block the calling thread. In a Qt test use ``qtbot.waitUntil`` instead (it keeps the event loop
running); in a coroutine, ``await asyncio.to_thread(wait_for, ...)`` (the event loop goes on meanwhile).
No import of pytest here: the web benchmark uses these helpers outside of pytest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _describe(message: str | Callable[[], str] | None) -> str:
    text = message() if callable(message) else message
    return f": {text}" if text else ""


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.01,
             message: str | Callable[[], str] | None = None,
             ignore: tuple[type[BaseException], ...] = ()) -> T:
    """The first truthy value of ``predicate()``, which is called every ``interval`` seconds.

    If it is not truthy within ``timeout`` seconds (it is asked once more at the deadline), raises
    AssertionError with ``message`` (when it is a callable, it is called then: it can tell the state seen
    last). Exceptions raised by ``predicate`` propagate, except those of the types in ``ignore``: they count
    as "not yet", and the last of them is chained to the AssertionError.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as error:
            last_error = error
        else:
            if value:
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    seen = f" (last error: {last_error!r})" if last_error is not None else ""
    raise AssertionError(f"not within {timeout:g} s{_describe(message)}{seen}") from last_error


def stays(predicate: Callable[[], object], seconds: float, interval: float = 0.01,
          message: str | Callable[[], str] | None = None) -> None:
    """Assert that ``predicate()`` is truthy throughout the next ``seconds``, asking every ``interval`` seconds
    (and at the end): for a test proving that something does not happen during a period.

    Fails with AssertionError and ``message`` (called then, if a callable) the first time it is falsy.
    """
    started = time.monotonic()
    deadline = started + seconds
    while True:
        if not predicate():
            raise AssertionError(f"stopped holding after {time.monotonic() - started:.2f} of {seconds:g} s"
                                 f"{_describe(message)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(interval, remaining))
