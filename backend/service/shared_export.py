"""Batch export on a shared file system (``--shared-filesystem``): the gateway only coordinates.

The output is a chunk-aligned zarr image (:mod:`backend.io.chunk_store`) that this gateway creates, or joins
when another gateway (``--slab K/N``) or an earlier run made it with the same settings. Each block's task names
its raw data by file and region and its output chunks; the computing process reads, computes, writes and
answers "written". The cache's claims keep every block computed once however many gateways share it: a block
is claimed under a key of its own output (:func:`written_key`), and once written that key holds a marker of
no values for ``cache.written_ttl_s``, so the data never passes the gateway or the cache and the markers stay
bounded; after that the chunk files are the record: a claimed block whose chunks are all on disk and whole is
counted as written before, not computed. A block whose worker dies is sent again by the
executor and its chunks written again, whole.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import redis

from backend.cache.block_cache import CACHED, CLAIMED, FAILED
from backend.compute.geometry import Block, BlockGrid, Roi
from backend.compute.pipeline import RESULT_KINDS, WRITTEN, BlockTask
from backend.config import ExecutorConfig, WorkerConfig
from backend.errors import UserError
from backend.io.chunk_store import SharedOutput, create_or_join
from backend.io.h5_writer import H5Output
from backend.io.ngff import ngff_axes
from backend.io.writers import output_axes
from backend.service.gateway import BATCH, Gateway
from backend.service.snapshot import PipelineSnapshot

log = logging.getLogger(__name__)
SPATIAL = "zyx"


def written_key(snapshot: PipelineSnapshot, kind: str, roi: Roi, output: SharedOutput) -> str:
    """The cache key that claims, and then marks as written, the block at ``roi`` of ``output``."""
    return f"{snapshot.key(kind, roi)}:written:{output.run}"


def parse_slab(text: str) -> tuple[int, int]:
    """``K/N`` (1 <= K <= N) as (K, N); UserError if not."""
    number, _, count = text.partition("/")
    if not (number.isdigit() and count.isdigit() and 1 <= int(number) <= int(count)):
        raise UserError(f"--slab '{text}': expected K/N with 1 <= K <= N, e.g. 2/4")
    return int(number), int(count)


def slab_region(region: Roi, grid: BlockGrid, slab: tuple[int, int]) -> Roi:
    """The ``slab`` (K, N) of ``region``: the K-th of N runs of whole blocks along the slowest spatial axis with
    at least N blocks in the region, else along t; UserError if no axis has N."""
    number, count = slab
    for axis in (1, 2, 3, 0):
        size = grid.block_shape[axis]
        first, end = region.start[axis] // size, -(-region.stop[axis] // size)
        blocks = end - first
        if blocks >= count:
            lo = first + (number - 1) * blocks // count
            hi = first + number * blocks // count
            start, stop = list(region.start), list(region.stop)
            start[axis], stop[axis] = max(lo * size, region.start[axis]), min(hi * size, region.stop[axis])
            return Roi(tuple(start), tuple(stop))
    raise UserError(f"--slab {number}/{count}: no axis of the region has {count} blocks (use fewer slabs or "
                    "smaller --block_shape)")


def check_aligned(region: Roi, grid: BlockGrid) -> None:
    """UserError unless the region starts on the block grid (each output chunk is then exactly one block)."""
    if any(a % b for a, b in zip(region.start, grid.block_shape)):
        raise UserError(f"--shared-filesystem: the region must start at a multiple of the block shape "
                        f"{grid.block_shape} (tzyx), so that each block is whole chunks of the output; it starts at "
                        f"{region.start}")


def check_kind(kind: str) -> None:
    """UserError unless ``kind`` is a single pixel result the workers can write themselves."""
    if kind not in RESULT_KINDS:
        raise UserError(f"--shared-filesystem exports one of {', '.join(RESULT_KINDS)} per run (not '{kind}')")


@dataclass
class SharedCounts:
    """What one gateway's shared export did."""

    blocks: int = 0  # in this gateway's region (or slab)
    computed: int = 0  # written by workers for this gateway
    written_before: int = 0  # found written (by another gateway, or an earlier run into the same output)
    result_bytes: int = 0  # bytes of results that reached this gateway (0: only "written" answers)
    partials_removed: int = 0  # .partial files of killed writers deleted at the end
    voxels: int = 0  # in this gateway's region (or slab)
    seconds: float = 0.0
    waited: int = 0  # blocks another gateway held when we came to them
    slab: tuple[int, int] | None = None  # (K, N) when this gateway exported one slab


def export_shared(gateway: Gateway, path: str, kind: str, region: Roi | None, slab: tuple[int, int] | None,
                  max_in_flight: int, on_written: Callable[[int], None], check: Callable[[], None]) -> SharedCounts:
    """Create or join the zarr output at ``path`` and have the workers write ``kind`` over ``region`` (its
    ``slab``, if given) into it; ``on_written(count)`` after each batch of blocks written, ``check()`` raises to
    stop (the blocks written so far stay)."""
    output = open_output(gateway, path, kind, region)
    part = slab_region(output.region, gateway.snapshot.grid(gateway.config.block_shape), slab) if slab \
        else output.region
    counts = SharedExport(gateway, kind, output, part, max_in_flight, on_written, check).run()
    counts.voxels, counts.slab = part.size, slab
    return counts


def export_shared_h5(gateway: Gateway, path: str, kind: str, region: Roi | None, internal_path: str,
                     max_in_flight: int, on_written: Callable[[int], None], check: Callable[[], None]) -> SharedCounts:
    """Have the workers send ``kind`` over ``region`` to one writer process that writes the HDF5 file ``path``
    (:mod:`backend.io.h5_writer`); the file gets its name only once whole (removed if the export fails)."""
    check_kind(kind)
    source, snapshot = gateway.source, gateway.snapshot
    whole = region or Roi.from_shape(source.spatial_shape)
    grid = snapshot.grid(gateway.config.block_shape)
    check_aligned(whole, grid)
    voxel = source.voxel_size
    spec = {"axes": output_axes(source.axes), "region": [list(whole.start), list(whole.stop)],
            "channels": snapshot.pipeline.channels(kind), "dtype": np.dtype(snapshot.pipeline.dtype(kind)).str,
            "block_shape": list(grid.block_shape), "internal_path": internal_path,
            "voxel_size": [voxel.unit, [list(pair) for pair in voxel.sizes]] if voxel else None}
    config = getattr(gateway.executor, "config", None) or ExecutorConfig()
    output = H5Output(path, spec, writer_host(gateway.executor), config.h5_writer_timeout_s,
                      WorkerConfig().parent_poll_s)
    try:
        def check_both() -> None:
            check()
            output.check()

        counts = SharedExport(gateway, kind, output, whole, max_in_flight, on_written, check_both).run()
        output.check()
        output.commit()
    except BaseException:
        output.abort()
        raise
    counts.voxels = whole.size
    return counts


def writer_host(executor) -> str:
    """The address the HDF5 writer listens on: the one our ZeroMQ workers reach the gateway at, else loopback."""
    address = getattr(executor, "address", None) or ""
    if address.startswith("tcp://"):
        return address.removeprefix("tcp://").rsplit(":", 1)[0]
    return "127.0.0.1"


def open_output(gateway: Gateway, path: str, kind: str, region: Roi | None) -> SharedOutput:
    """Create or join the zarr output at ``path`` for ``kind`` over ``region`` (None: the whole image) under the
    gateway's current pipeline; UserError for what this mode cannot write."""
    check_kind(kind)
    source, snapshot = gateway.source, gateway.snapshot
    whole = region or Roi.from_shape(source.spatial_shape)
    grid = snapshot.grid(gateway.config.block_shape)
    check_aligned(whole, grid)
    identity = {"data": snapshot.data_fingerprint, "pipeline": snapshot.fingerprint, "source": kind,
                "block_shape": list(grid.block_shape)}
    return create_or_join(path, ngff_axes(output_axes(source.axes)), whole, snapshot.pipeline.channels(kind),
                          snapshot.pipeline.dtype(kind), grid.block_shape, source.voxel_size, identity)


class SharedExport:
    """One gateway's part of a shared export: claim blocks in batches, send their tasks, mark them written."""

    def __init__(self, gateway: Gateway, kind: str, output: SharedOutput, region: Roi, max_in_flight: int,
                 on_written: Callable[[int], None], check: Callable[[], None]):
        self.gateway, self.kind, self.output, self.region = gateway, kind, output, region
        self.snapshot, self.cache, self.executor = gateway.snapshot, gateway.cache, gateway.executor
        self.grid = self.snapshot.grid(gateway.config.block_shape)
        self.max_in_flight, self.on_written, self.check = max_in_flight, on_written, check
        self.interval = self.cache.config.lease_s / 3
        self.batch = self.cache.config.claim_batch
        self.marker_ms = int(self.cache.config.written_ttl_s * 1000)
        self.channels = self.snapshot.pipeline.channels(kind)
        self.counts = SharedCounts(blocks=self.grid.count_in(region))
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._held: dict[str, tuple[str, Block]] = {}  # our claims: key -> (token, block)
        self._queued: list[tuple[str, Block]] = []  # claimed, not sent yet
        self._futures: dict[str, Future] = {}
        self._elsewhere: dict[str, Block] = {}  # held by another gateway: looked at again every interval
        self._token = uuid.uuid4().hex

    def run(self) -> SharedCounts:
        """Export every block of the region; raises on a failed block or the cache's loss (claims released)."""
        started = time.perf_counter()
        blocks = self.grid.blocks_in(self.region)
        last_renewal = last_look = time.monotonic()
        try:
            while True:
                self.check()
                blocks_left = self._claim_more(blocks)
                self._send()
                now = time.monotonic()
                if self._elsewhere and (not (blocks_left or self._futures or self._queued)
                                        or now - last_look > self.interval):
                    self._look_again()
                    last_look = now
                if not (blocks_left or self._futures or self._queued or self._elsewhere):
                    break
                self._settle(self.interval if not blocks_left or self._futures else 0.0)
                if time.monotonic() - last_renewal > self.interval:
                    self._renew()
                    last_renewal = time.monotonic()
        finally:
            self._release()
        self.counts.partials_removed = self.output.remove_partials(self._mine)
        self.counts.seconds = time.perf_counter() - started
        return self.counts

    def _claim_more(self, blocks: Iterator[Block]) -> bool:
        """Claim the next batch of blocks when few are left to send; False once the region is exhausted."""
        if len(self._queued) + len(self._futures) >= self.max_in_flight:
            return True
        batch = []
        for block in blocks:
            batch.append((written_key(self.snapshot, self.kind, block.roi, self.output), block))
            if len(batch) >= self.batch:
                break
        self._claim(batch)
        return len(batch) == self.batch

    def _claim(self, batch: list[tuple[str, Block]]) -> None:
        if not batch:
            return
        tokens = {key: f"{self._token}-{key}" for key, _ in batch}
        outcomes = self._cache_call(lambda: self.cache.claim_many(tokens))
        on_disk = []
        for (key, block), outcome in zip(batch, outcomes):
            held_before = self._elsewhere.pop(key, None) is not None
            if outcome == CLAIMED and self.output.holds(block.roi, self.channels):
                on_disk.append(key)  # written before, its marker lapsed (or was evicted)
            elif outcome == CLAIMED:
                self._held[key] = (tokens[key], block)
                self._queued.append((key, block))
            elif outcome == CACHED:
                self.counts.written_before += 1
                self.on_written(1)
            elif outcome == FAILED:
                message = self._cache_call(lambda key=key: self.cache.error(key)) or "failed"
                raise UserError(f"the export failed: block {block.roi} failed in another gateway ({message})")
            else:
                self._elsewhere[key] = block
                self.counts.waited += not held_before
        if on_disk:
            self._mark_written(on_disk)
            self.counts.written_before += len(on_disk)
            self.on_written(len(on_disk))

    def _mark_written(self, keys: list[str]) -> None:
        """Mark blocks written (dropping their leases, telling everyone), the markers lapsing after
        ``cache.written_ttl_s``: the cache holds at most that long's worth of them, the chunk files stay."""
        self._cache_call(lambda: self.cache.complete_many([(key, WRITTEN) for key in keys]))
        pipe = self.cache.client.pipeline(transaction=False)
        for key in keys:
            pipe.pexpire(key, self.marker_ms)
        self._cache_call(pipe.execute)

    def _look_again(self) -> None:
        """Blocks another gateway held: written by now, still held, or ours to compute (its owner went away)."""
        self._claim(list(self._elsewhere.items()))

    def _send(self) -> None:
        while self._queued and len(self._futures) < self.max_in_flight:
            key, block = self._queued.pop()
            future = self.executor.submit(self._task(key, block), BATCH)
            self._futures[key] = future
            future.add_done_callback(lambda f, key=key: self._done.put((key, f)))

    def _task(self, key: str, block: Block) -> BlockTask:
        source, halo = self.gateway.source, block.halo_roi
        return BlockTask(key, self.kind, WRITTEN, halo.start[1:], source.spatial_shape[1:],
                         tuple(zip(block.roi.start[1:], block.roi.stop[1:])), self.snapshot.fingerprint,
                         source.reference(halo), output=self.output.target(block.roi))

    def _settle(self, wait_s: float) -> None:
        """Mark the blocks whose tasks ended as written (one call to the cache for all of them)."""
        finished = []
        try:
            finished.append(self._done.get(timeout=wait_s) if wait_s else self._done.get_nowait())
            while True:
                finished.append(self._done.get_nowait())
        except queue.Empty:
            pass
        written: list[str] = []
        for key, future in finished:
            if self._futures.pop(key, None) is not future:
                continue
            error = future.exception()
            if error is not None:
                self.check()  # the cause first, when there is one (the HDF5 writer ended, a cancellation)
                raise UserError(f"the export failed ({error}); the blocks written so far stay in "
                                f"{self.output.path}: run the same command again to finish it")
            self.counts.result_bytes += future.result().nbytes
            written.append(key)
        if written:
            self._mark_written(written)
            for key in written:
                self._held.pop(key, None)
            self.counts.computed += len(written)
            self.on_written(len(written))

    def _renew(self) -> None:
        """Renew the leases of every block we hold (queued or computing) in one call."""
        leases = {key: token for key, (token, _) in self._held.items()}
        try:
            lost = self.cache.renew_all(leases)
        except redis.RedisError as exc:
            log.warning("could not renew %d leases: %s", len(leases), exc)
            return
        for key in lost:
            log.warning("lost the lease of block %s (this process or the cache server stalled)", key)

    def _release(self) -> None:
        """Stop what is still queued or computing and give back our claims (ending without finishing)."""
        for future in self._futures.values():
            self.executor.cancel(future)
        for key, (token, _) in self._held.items():
            try:
                self.cache.release(key, token, retry=False)
            except redis.RedisError:
                pass  # its lease expires by itself
        self._held.clear()

    def _mine(self, index: tuple[int, ...]) -> bool:
        """Whether the chunk at ``index`` (the output's axes) lies in this gateway's region."""
        position = dict(zip(self.output.axes, index))
        for axis, letter in enumerate("tzyx"):
            if letter not in position:
                continue
            start = position[letter] * self.output.chunks[letter] + self.output.region.start[axis]
            if not self.region.start[axis] <= start < self.region.stop[axis]:
                return False
        return True

    def _cache_call(self, call: Callable):
        try:
            return call()
        except redis.RedisError as exc:
            raise UserError(f"the cache server is unavailable ({exc})") from None
