"""Headless export: stream every block of a region through an executor into an output file."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

from tqdm import tqdm

from backend.errors import UserError
from backend.executor import Executor
from backend.geometry import BlockGrid, Roi
from backend.pipeline import RESULT_KINDS, BlockTask, Pipeline
from backend.sources import DataSource, split_internal_path
from backend.writers import FORMATS, BlockWriter, output_axes


@dataclass(frozen=True)
class ExportOptions:
    """What to export, where, and how to cut it into blocks."""

    kind: str = "Probabilities"
    fmt: str = "hdf5"
    filename_pattern: str = "{dataset_dir}/{nickname}_{result_type}"
    internal_path: str = "exported_data"
    region: Roi | None = None  # tzyx; None = whole image
    block_shape: tuple[int, int, int, int] | None = None  # tzyx; None = default_block_shape()
    progress: bool = True


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what it took."""

    path: str
    blocks: int
    seconds: float
    voxels: int


def default_block_shape(spatial_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Blocks large enough to amortise the halo and small enough to keep memory bounded."""
    if spatial_shape[1] == 1:
        return (1, 1, 512, 512)
    return (1, 64, 128, 128)


def output_path(pattern: str, fmt: str, source: DataSource, nickname: str, kind: str) -> str:
    """Fill ``{dataset_dir}``, ``{nickname}`` and ``{result_type}`` and add the format's extension."""
    file_path, _ = split_internal_path(source.description.split(os.pathsep)[0])
    dataset_dir = os.path.dirname(os.path.abspath(file_path))
    try:
        path = pattern.format(dataset_dir=dataset_dir, nickname=nickname, result_type=kind.replace(" ", "_"))
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--output_filename_format '{pattern}': unknown placeholder {exc}") from None
    ext = FORMATS[fmt]
    return path if path.lower().endswith((ext, ".hdf5", ".tiff")) else path + ext


def plan(source: DataSource, pipeline: Pipeline, region: Roi, block_shape) -> Iterator[tuple[Roi, Roi]]:
    """(target, halo ROI) pairs, in tzyx, covering ``region``."""
    grid = BlockGrid(source.spatial_shape, block_shape, (0,) + pipeline.halo)
    for block in grid.blocks_in(region):
        target = block.roi.intersect(region)
        yield target, target.grow(grid.halo, grid.image)


def run_export(source: DataSource, pipeline: Pipeline, executor: Executor, nickname: str,
               options: ExportOptions, max_in_flight: int = 4) -> ExportResult:
    """Compute ``options.kind`` over the region and write it; returns where and how long."""
    if options.kind not in RESULT_KINDS:
        raise UserError(f"unknown export source '{options.kind}' (choose one of {', '.join(RESULT_KINDS)})")
    region = options.region or Roi.from_shape(source.spatial_shape)
    block_shape = options.block_shape or default_block_shape(source.spatial_shape)
    path = output_path(options.filename_pattern, options.fmt, source, nickname, options.kind)
    writer = BlockWriter(path, options.fmt, output_axes(source.axes), region, pipeline.channels(options.kind),
                         pipeline.dtype(options.kind), block_shape, options.internal_path)
    blocks = list(plan(source, pipeline, region, block_shape))
    started = time.perf_counter()
    bar = tqdm(total=len(blocks), unit="block", desc=options.kind, file=sys.stderr,
               disable=not options.progress, dynamic_ncols=True)
    try:
        _stream(source, pipeline, executor, options.kind, blocks, writer, bar, max_in_flight)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return ExportResult(path, len(blocks), time.perf_counter() - started, region.size)


def _stream(source, pipeline, executor, kind, blocks, writer, bar, max_in_flight) -> None:
    fingerprint = executor.add_pipeline(pipeline)
    image = source.spatial_shape[1:]
    pending: dict[Future, Roi] = {}
    try:
        for target, halo_roi in blocks:
            while len(pending) >= max_in_flight:
                _drain(pending, writer, bar, FIRST_COMPLETED)
            raw = source.read(halo_roi)[0]
            task = BlockTask(
                key=f"{target.start}", kind=kind, raw=raw, start=halo_roi.start[1:], image=image,
                target=tuple(zip(target.start[1:], target.stop[1:])), pipeline=fingerprint,
            )
            pending[executor.submit(task)] = target
        while pending:
            _drain(pending, writer, bar, FIRST_COMPLETED)
    finally:
        for future in pending:
            executor.cancel(future)


def _drain(pending: dict[Future, Roi], writer: BlockWriter, bar, return_when) -> None:
    done, _ = wait(list(pending), return_when=return_when)
    for future in done:
        target = pending.pop(future)
        writer.write(target, future.result()[None])
        bar.update(1)
