"""What the gateway knows of the blocks in progress: each block's state, and the table of all of them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from backend.compute.geometry import Block
from backend.compute.pipeline import BlockTask
from backend.service.region import RegionRequest
from backend.service.snapshot import PipelineSnapshot


@dataclass(eq=False)
class BlockState:
    """One block being looked up, claimed, computed or awaited (the table's lock guards it)."""

    key: str
    block: Block
    kind: str
    priority: int
    snapshot: PipelineSnapshot | None  # what the key was made from (None: a derived value)
    since: float  # when it was first asked for (a waiter takes over a claim not renewed since)
    waiters: list[RegionRequest] = field(default_factory=list)
    token: str | None = None  # ours when we hold the block's claim
    task: BlockTask | None = None
    future: Future | None = None
    produce: Callable[[], Future] | None = None  # computed here, not by the executor (a frame's objects)
    expected: tuple[tuple[int, ...], np.dtype | tuple[np.dtype, ...]] | None = None  # shape, dtype(s) of a valid
    # cached value


class BlockTable:
    """The blocks in progress by key. A finished block leaves the table once, and with it all its waiters."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._states: dict[str, BlockState] = {}

    def join(self, key: str, make: Callable[[], BlockState], waiter: RegionRequest | None,
             priority: int) -> tuple[BlockState, bool, bool]:
        """The block's state, made if new, with ``waiter`` added: (state, fresh, now more urgent)."""
        with self.lock:
            state = self._states.get(key)
            fresh = state is None
            if fresh:
                state = self._states[key] = make()
            hurried = not fresh and priority < state.priority
            if hurried:
                state.priority = priority
            if waiter is not None:
                state.waiters.append(waiter)
            return state, fresh, hurried

    def get(self, key: str) -> BlockState | None:
        """The state of ``key``, if the block is in progress."""
        with self.lock:
            return self._states.get(key)

    def finish(self, state: BlockState) -> list[RegionRequest] | None:
        """Take ``state`` out of the table; its waiters, or None if it was finished or replaced already."""
        with self.lock:
            if self._states.get(state.key) is not state:
                return None
            del self._states[state.key]
            waiters, state.waiters = state.waiters, []
            return waiters

    def keep_if_wanted(self, state: BlockState) -> bool:
        """True if ``state`` is current and someone waits for it; a current state nobody wants leaves the table."""
        with self.lock:
            if self._states.get(state.key) is not state:
                return False
            if state.waiters:
                return True
            del self._states[state.key]
            return False

    def detach(self, req: RegionRequest) -> list[BlockState]:
        """Stop ``req`` waiting; returns the blocks we own that nobody wants any more (waited-only ones go)."""
        unwanted = []
        with self.lock:
            for key in list(req.pending):
                state = self._states.get(key)
                if state is None:
                    continue
                state.waiters = [w for w in state.waiters if w is not req]
                if not state.waiters and state.token is None:
                    del self._states[key]  # we only waited for another owner's result
                elif not state.waiters:
                    unwanted.append(state)
        return unwanted

    def states(self, owned: bool | None = None) -> list[BlockState]:
        """Every block in progress; only those whose claim we hold (True) or that wait for others (False)."""
        with self.lock:
            states = list(self._states.values())
        if owned is None:
            return states
        return [s for s in states if bool(s.token) == owned]

    def clear(self) -> list[BlockState]:
        """Empty the table; returns what was in it."""
        with self.lock:
            states = list(self._states.values())
            self._states.clear()
        return states

    def __len__(self) -> int:
        with self.lock:
            return len(self._states)
