"""What the gateway knows of one block in progress: who waits for it, its claim, its task or computation."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from backend.compute.geometry import Block
from backend.compute.pipeline import BlockTask
from backend.service.region import RegionRequest


@dataclass
class BlockState:
    """One block being looked up, claimed, computed or awaited (the gateway's lock guards it)."""

    key: str
    block: Block
    kind: str
    priority: int
    waiters: list[RegionRequest] = field(default_factory=list)
    token: str | None = None
    task: BlockTask | None = None
    future: Future | None = None
    since: float = field(default_factory=time.monotonic)
    produce: Callable[[], Future] | None = None  # computed here, not by the executor (a frame's objects)
    expected: tuple[tuple[int, ...], np.dtype] | None = None  # shape and dtype of a valid cached value
