"""Batch processing, without Qt: export many raw data files with one project's classifier, as ilastik's Batch
Processing applet does.

One :class:`~ilastik_desktop.runtime.services.Services` (one executor, one cache) serves the whole batch; each
file gets a gateway of its own, closed when its export ends. A file that cannot be exported (missing, corrupt,
not fitting the project) is reported in one line and skipped; the others are written. Cancelling stops the
batch and removes the partial output of the file being written. Outcomes come back through ``call_soon`` (the
window passes its GUI bridge) as signals: ``files_listed(files)`` (the patterns expanded, when :meth:`start`
expands them), ``file_started(index, spec)``, ``file_progress(index, done, total)``,
``file_finished(index, outcome)``, ``finished(summary)``.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from psygnal import Signal

from backend.compute.pipeline import Pipeline, split_kind
from backend.distributed.futures import TaskError
from backend.errors import TransientError, UserError
from backend.io.dataset import is_pattern, nickname_of, open_lane
from backend.io.project import Project
from backend.io.sources import DataSource, open_source, split_internal_path
from backend.io.sources.base import SourceReadError
from backend.service.export import (
    ExportCancelled,
    ExportOptions,
    ExportResult,
    check_internal_path,
    check_sources,
    default_block_shape,
    output_path,
    piece_unit,
    run_export,
)
from backend.wording import counted
from ilastik_desktop.runtime.settings import parse_cutout
from ilastik_desktop.runtime.training import call_inline

log = logging.getLogger(__name__)
WRITTEN, FAILED, CANCELLED, NOT_STARTED = "written", "failed", "cancelled", "not started"


@dataclass(frozen=True)
class FileOutcome:
    """What became of one file of a batch: ``status`` is one of WRITTEN, FAILED, CANCELLED, NOT_STARTED."""

    spec: str
    status: str
    message: str = ""
    paths: tuple[str, ...] = ()
    result: ExportResult | None = None


@dataclass(frozen=True)
class BatchSummary:
    """Every file's outcome and how long the batch took."""

    outcomes: tuple[FileOutcome, ...]
    seconds: float

    def count(self, status: str) -> int:
        """How many files ended with ``status``."""
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def line(self) -> str:
        """One line: how many files were written, failed or not exported, and the time taken."""
        total = len(self.outcomes)
        parts = [f"{self.count(WRITTEN)} of {total} files written"]
        if self.count(FAILED):
            parts.append(f"{self.count(FAILED)} failed")
        if self.count(CANCELLED) or self.count(NOT_STARTED):
            parts.append(f"cancelled ({self.count(CANCELLED) + self.count(NOT_STARTED)} not exported)")
        return f"batch: {', '.join(parts)} ({self.seconds:.1f} s)"


def expand_raw_data(specs: Sequence[str], project: Project, lane: int = 0) -> list[str]:
    """The files of a batch: each spec as given, a glob pattern (``'data/*.tif'``, ``'data/*.h5/volume'``)
    replaced by the files it matches (sorted); a pattern matching nothing stays (reported as missing).

    A pattern whose first file is a 2D image while the project's lane is 3D stays one spec: a stack of
    slices read as one volume, as ilastik reads such a pattern.
    """
    files: list[str] = []
    for spec in specs:
        if not is_pattern(spec):
            files.append(spec)
            continue
        pattern, internal = split_internal_path(spec)
        matches = sorted(glob.glob(pattern))
        if not matches or _slices_of_a_volume(matches[0], project, lane):
            files.append(spec)
        else:
            files.extend(match + (f"/{internal}" if internal else "") for match in matches)
    return files


def _slices_of_a_volume(first: str, project: Project, lane: int) -> bool:
    recorded = project.lanes[lane] if 0 <= lane < len(project.lanes) else None
    if recorded is None or "z" not in (recorded.axes or "") or not recorded.shape:
        return False
    if dict(zip(recorded.axes, recorded.shape)).get("z", 1) <= 1:
        return False
    try:
        return open_source(first).spatial_shape[1] == 1
    except UserError:
        return False  # unreadable: the batch reports it


@dataclass(frozen=True)
class _Located:
    """Where an input would be: all :func:`output_path` reads of a source."""

    description: str


def check_batch_options(options: ExportOptions) -> None:
    """UserError for export options no file of a batch could be written with (sources, placeholders, extension
    and format, internal path: checked before any file starts)."""
    probe = _Located(os.path.join(os.getcwd(), "input"))
    for kind in check_sources(split_kind(options.kind), options.filename_pattern):
        output_path(options.filename_pattern, options.fmt, probe, "input", kind)
    check_internal_path(options.internal_path)


class BatchRunner:
    """Exports raw data files one after another through one set of services; see the module docstring.

    ``pipeline_for(source)`` gives the classifier pipeline for a file (the command line builds it from the
    project; the window uses the one it shows); ``cutout`` is ilastik's ``--cutout_subregion``, applied to
    each file in its own axes.
    """

    files_listed = Signal(object)
    file_started = Signal(int, str)
    file_progress = Signal(int, int, int)
    file_finished = Signal(int, object)
    finished = Signal(object)

    def __init__(self, services, project: Project, options: ExportOptions,
                 pipeline_for: Callable[[DataSource], Pipeline], lane: int = 0, input_axes: str | None = None,
                 cutout: str | None = None, call_soon: Callable[..., None] = call_inline):
        check_batch_options(options)
        self.services, self.project, self.options, self.pipeline_for = services, project, options, pipeline_for
        self.lane, self.input_axes, self.cutout, self.call_soon = lane, input_axes, cutout, call_soon
        self.cancel_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.summary: BatchSummary | None = None

    def run(self, specs: Sequence[str]) -> BatchSummary:
        """Export every file in turn on this thread; a failed file is skipped, a cancel ends the batch."""
        started = time.perf_counter()
        outcomes: list[FileOutcome] = []
        written: dict[str, str] = {}  # output path -> the file it was written from
        for index, spec in enumerate(specs):
            if self.cancel_event.is_set():
                outcome = FileOutcome(spec, NOT_STARTED, "not exported: the batch was cancelled")
            else:
                self.call_soon(self.file_started.emit, index, spec)
                outcome = self._export_one(index, spec, written)
            outcomes.append(outcome)
            self.call_soon(self.file_finished.emit, index, outcome)
        self.summary = BatchSummary(tuple(outcomes), time.perf_counter() - started)
        self.call_soon(self.finished.emit, self.summary)
        return self.summary

    def start(self, specs: Sequence[str], expand: bool = False) -> None:
        """Run the batch in the background (``finished`` tells when it ends); with ``expand`` the glob patterns
        are first replaced by their files there (:func:`expand_raw_data`), announced by ``files_listed``."""
        target = self._expand_and_run if expand else self.run
        self.thread = threading.Thread(target=target, args=(list(specs),), name="batch", daemon=True)
        self.thread.start()

    def _expand_and_run(self, specs: list[str]) -> None:
        files = expand_raw_data(specs, self.project, self.lane)
        self.call_soon(self.files_listed.emit, files)
        self.run(files)

    def running(self) -> bool:
        """True while a batch started with :meth:`start` runs."""
        return self.thread is not None and self.thread.is_alive()

    def cancel(self) -> None:
        """Stop the batch: the file being written is abandoned and its partial output removed."""
        self.cancel_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until a batch started with :meth:`start` has ended, at most ``timeout`` seconds; True if it has."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running()

    def _export_one(self, index: int, spec: str, written: dict[str, str]) -> FileOutcome:
        try:
            result = self.export_file(spec, lambda done, total: self.call_soon(self.file_progress.emit, index,
                                                                               done, total), written)
        except ExportCancelled:
            return FileOutcome(spec, CANCELLED, "cancelled; its partial output was removed")
        except (UserError, TaskError, TransientError, SourceReadError) as exc:
            return FileOutcome(spec, FAILED, str(exc))
        except Exception as exc:  # an unexpected failure still ends this file only, in one line
            log.exception("exporting %s failed", spec)
            return FileOutcome(spec, FAILED, f"{type(exc).__name__}: {exc}")
        for path in result.paths:
            written[os.path.realpath(path)] = spec
        unit = piece_unit(self.options.kind)
        return FileOutcome(spec, WRITTEN, f"wrote {', '.join(result.paths)} ({counted(result.blocks, unit)}, "
                                          f"{result.seconds:.1f} s)", result.paths, result)

    def export_file(self, spec: str, on_progress: Callable[[int, int], None] | None = None,
                    written: dict[str, str] | None = None) -> ExportResult:
        """Export one file with its own gateway, creating its output folder if missing (UserError if it cannot be
        exported; ExportCancelled if cancelled)."""
        source = open_lane(self.project, self.lane, spec, self.input_axes)
        options = self.options
        if self.cutout:
            options = dataclasses.replace(options, region=parse_cutout(self.cutout, source.axes,
                                                                       source.spatial_shape))
        nickname = nickname_of(spec)
        for kind in split_kind(options.kind):
            path = os.path.realpath(output_path(options.filename_pattern, options.fmt, source, nickname, kind))
            if path in (written or {}):
                raise UserError(f"{spec}: its output {path} would overwrite the output of {written[path]} (put "
                                "{nickname} or {dataset_dir} in the file name pattern)")
            _make_folder(os.path.dirname(path))
        pipeline = self.pipeline_for(source)
        gateway = self.services.gateway(source, pipeline,
                                        options.block_shape or default_block_shape(source.spatial_shape))
        try:
            in_flight = max(4, 2 * self.services.executor.status().processes + 2)
            return run_export(gateway, nickname, options, in_flight, on_progress, self.cancel_event)
        finally:
            gateway.close()
            release = getattr(source, "close", None)  # an HDF5 source holds its file open
            if release is not None:
                release()


def _make_folder(folder: str) -> None:
    """Create a missing output folder (UserError naming it if it cannot be)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
