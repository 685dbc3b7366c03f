"""The headless export command: open a project, (re)train if asked, stream the export through the gateway."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import signal
import sys
import threading
import time

import h5py
import numpy as np

from backend.compute.geometry import Roi
from backend.compute.pipeline import Pipeline, split_kind
from backend.compute.threshold import ThresholdSettings
from backend.distributed.futures import TaskError
from backend.errors import TransientError, UserError
from backend.io.dataset import open_lane
from backend.io.project import Project, open_project
from backend.io.project_pipeline import build_pipeline
from backend.io.sources import DataSource, open_source
from backend.io.sources.base import SourceReadError
from backend.io.writers import check_output_folder, output_axes
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
from backend.service.object_table import OBJECT_FEATURES, TABLE_DATASET
from backend.service.objects import OBJECTS
from backend.service.prediction_maps import check_map_sources, export_objects, map_outputs, open_input
from backend.wording import counted
from ilastik_desktop.runtime.batch import FAILED, BatchRunner, FileOutcome, expand_raw_data, nickname_of
from ilastik_desktop.runtime.frozen import announce_first_start
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.settings import Settings, export_threshold, no_objects_line, parse_cutout

# Ctrl-C, a kill or a service stop; the terminal closed (no SIGHUP on Windows)
INTERRUPTING = (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


def run_headless(settings: Settings) -> int:
    """Run the export as configured (a batch when several raw data files are given); returns the exit code.
    Ctrl-C, SIGTERM and SIGHUP end it with its partial output and temporary files removed."""
    interrupted = threading.Event()

    def interrupt(signum, frame) -> None:
        interrupted.set()  # seen by the export even if the exception lands where Python ignores it (a gc callback)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in INTERRUPTING}
    try:
        return _run(settings, interrupted)
    except KeyboardInterrupt:
        if not (settings.export.shared_filesystem and settings.export.fmt == "zarr"):
            raise  # the partial output was removed
        print("ilastik-desktop: interrupted; the blocks written so far stay in the zarr output (unwritten ones "
              "read as zeros): the same command again finishes it", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(settings: Settings, interrupted: threading.Event) -> int:
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # its warnings on a damaged file: our line says it
    project = open_project(settings.project)
    if settings.prediction_maps:
        return run_prediction_maps(settings, project)
    files = expand_raw_data(settings.raw_data, project, settings.lane)
    if len(files) > 1:
        return run_batch(settings, project, files)
    raw_data = files[0] if files else None
    source = open_lane(project, settings.lane, raw_data, settings.input_axes)
    volumetric = source.shape[1] > 1
    classifier = None
    if settings.retrain:
        from backend.io.training import retrain_project

        classifier = retrain_project(project, source, settings.lane, progress=settings.export.progress)
        print(f"retrained {classifier.tree_count} trees and saved them in {project.path}", file=sys.stderr)
    needs_forest = settings.export.kind != "Features"  # a combined kind with Features needs it too
    pipeline = build_pipeline(project, source.channels, volumetric, classifier, require_classifier=needs_forest)
    threshold = export_threshold(settings, project, pipeline.label_count)
    options = dataclasses.replace(settings.export, threshold=threshold)
    if settings.cutout:
        options = dataclasses.replace(options, region=parse_cutout(settings.cutout, source.axes,
                                                                   source.spatial_shape))
    block_shape = options.block_shape or default_block_shape(source.spatial_shape)
    nickname = nickname_of(raw_data) if raw_data else project.lanes[settings.lane].nickname
    for kind in check_sources(split_kind(options.kind), options.filename_pattern):  # checked before any
        check_output_folder(output_path(options.filename_pattern, options.fmt, source, nickname, kind))  # starts
    check_internal_path(options.internal_path)
    with Services(settings.compute) as services:
        if services.compiling_kernels:
            announce_first_start()
        if services.listen_address:
            print(services.accepting_line(), file=sys.stderr)
        services.wait_for_workers()
        gateway = services.gateway(source, pipeline, block_shape)
        try:
            in_flight = max(4, 2 * services.executor.status().processes + 2)
            if options.shared_filesystem:  # no result is held here: keep every worker's queue full
                in_flight = max(in_flight, services.config.cache.claim_batch)
            try:
                result = run_export(gateway, nickname, options, in_flight, cancel=interrupted)
            except ExportCancelled:
                raise KeyboardInterrupt from None  # interrupted: the export removed its partial output
            except (TaskError, TransientError, SourceReadError) as exc:
                raise UserError(f"the export failed and its partial output was removed: {exc}") from None
            status = gateway.status()
        finally:
            gateway.close()
    rate = result.voxels / max(result.seconds, 1e-9)
    if result.shared is not None:
        print(shared_line(result, status.executor.processes), file=sys.stderr)
        return 0
    wide = ", uint64 labels" if result.labels_dtype == np.uint64 else ""
    highest = "" if result.highest_object_id is None else f"highest object ID {result.highest_object_id}{wide}; "
    print(f"wrote {', '.join(result.paths)} ({counted(result.blocks, piece_unit(options.kind))}, "
          f"{result.seconds:.1f} s, "
          f"{rate / 1e6:.2f} Mvoxel/s; {highest}"
          f"{status.computed} computed, {status.hits} from the cache, "
          f"{counted(status.executor.processes, 'worker process')})", file=sys.stderr)
    warning = no_objects_line(*written_without_objects(result, options, source), threshold, project.label_names)
    if warning and {OBJECTS, OBJECT_FEATURES} & set(split_kind(options.kind)):
        print(warning, file=sys.stderr)
    return 0


def shared_line(result: ExportResult, processes: int) -> str:
    """What a --shared-filesystem export did: blocks written by the workers, found written, bytes of results
    that reached this gateway."""
    counts = result.shared
    rate = result.voxels / max(result.seconds, 1e-9)
    speed = f", {rate / 1e6:.2f} Mvoxel/s" if counts.computed else ""
    part = f"slab {counts.slab[0]}/{counts.slab[1]} of " if counts.slab else ""
    pending = "; the other slabs' gateways write the rest" if counts.slab and counts.slab[1] > 1 else ""
    return (f"wrote {part}{result.path} ({counted(result.blocks, 'block')}, {result.seconds:.1f} s{speed}; "
            f"{counts.computed} written by the workers, {counts.written_before} written before, "
            f"{counts.result_bytes} bytes of results through this gateway, "
            f"{counted(processes, 'worker process')}){pending}")


def written_without_objects(result: ExportResult, options: ExportOptions, source: DataSource) -> tuple[int, int]:
    """How many of the frames an Objects or Object Features export wrote have no object, and how many frames it
    wrote: counted while writing for Objects alone, else read back from its output (a zero labels frame, no row
    of the table); (0, 0) for other sources."""
    kind = split_kind(options.kind)[0]
    if kind == OBJECT_FEATURES:
        if options.fmt == "csv":
            with open(result.path, newline="") as f:
                steps = {row["timestep"] for row in csv.DictReader(f)}
        else:
            with h5py.File(result.path, "r") as f:
                steps = set(f[TABLE_DATASET]["timestep"].tolist())
        return result.blocks - len(steps), result.blocks
    if kind != OBJECTS:
        return 0, 0
    if result.frames_with_objects is not None:  # counted while writing (an Objects-only export)
        return result.blocks - result.frames_with_objects, result.blocks
    spec = f"{result.path}/{options.internal_path}" if options.fmt == "hdf5" else result.path
    try:
        labels = open_source(spec, None if options.fmt in ("hdf5", "zarr") else output_axes(source.axes))
    except UserError:
        return 0, 0  # not read back: no warning
    frames, depth, height, width = labels.spatial_shape
    try:
        empty = sum(not any(labels.read(Roi((t, z, 0, 0), (t + 1, z + 1, height, width))).any()
                            for z in range(depth)) for t in range(frames))
    finally:
        getattr(labels, "close", lambda: None)()  # an HDF5 source holds its file open
    return empty, frames


def run_batch(settings: Settings, project: Project, files: list[str]) -> int:
    """Export each file to its own output with the project's classifier: a line per file and a summary line;
    exit code 1 if any file failed (it is skipped, the others are written)."""
    classifier = None
    if settings.retrain:  # on every lane's labels, each lane's raw data read where the project records it
        from backend.io.training import retrain_project

        own = open_lane(project, settings.lane)
        classifier = retrain_project(project, own, settings.lane, progress=settings.export.progress)
        print(f"retrained {classifier.tree_count} trees and saved them in {project.path}", file=sys.stderr)
    needs_forest = settings.export.kind != "Features"
    if needs_forest and classifier is None:
        project.require_classifier()  # one line before anything starts, not one per file
    threshold = export_threshold(settings, project, len(project.label_names))
    options = dataclasses.replace(settings.export, threshold=threshold)

    def pipeline_for(source: DataSource) -> Pipeline:
        return build_pipeline(project, source.channels, source.shape[1] > 1, classifier,
                              require_classifier=needs_forest)

    with Services(settings.compute) as services:
        runner = BatchRunner(services, project, options, pipeline_for, settings.lane, settings.input_axes,
                             settings.cutout)
        runner.file_finished.connect(lambda index, outcome: _report(index, len(files), outcome))
        if services.compiling_kernels:
            announce_first_start()
        if services.listen_address:
            print(services.accepting_line(), file=sys.stderr)
        services.wait_for_workers()
        summary = runner.run(files)
    print(summary.line, file=sys.stderr)
    return 1 if summary.count(FAILED) else 0


def _report(index: int, count: int, outcome: FileOutcome) -> None:
    """``[2/5] FILE: wrote OUTPUT (...)`` or ``[3/5] skipped FILE: why``."""
    reason = outcome.message.removeprefix(f"{outcome.spec}: ")
    line = f"skipped {outcome.spec}: {reason}" if outcome.status == FAILED else f"{outcome.spec}: {reason}"
    print(f"[{index + 1}/{count}] {line}", file=sys.stderr, flush=True)


def run_prediction_maps(settings: Settings, project: Project) -> int:
    """Threshold each given probability map into Objects with the project's thresholding settings (``--threshold``
    over them) and/or measure their Object Features on the raw data; no classifier, no workers. ``--raw_data``
    files, if given, are paired with the maps in order and name the outputs. Several maps: a line per map and a
    summary line, exit code 1 if any failed (it is skipped, the others are written)."""
    for given, option in ((settings.retrain, "--retrain"), (settings.cutout, "--cutout_subregion")):
        if given:
            raise UserError(f"{option} is not used with --prediction_maps (the objects are thresholded from the "
                            "whole of each map)")
    check_map_sources(settings.export.kind, settings.export.filename_pattern, bool(settings.raw_data))
    threshold = export_threshold(settings, project, ANY_CHANNEL_COUNT)
    files = expand_raw_data(settings.prediction_maps, project, settings.lane)
    raws = expand_raw_data(settings.raw_data, project, settings.lane) if settings.raw_data else []
    if raws and len(raws) != len(files):
        raise UserError(f"--raw_data gives {counted(len(raws), 'file')} but --prediction_maps "
                        f"{counted(len(files), 'file')}: they are paired in order, one raw data file per map")
    pairs = list(zip(files, raws or [None] * len(files)))
    written: dict[str, tuple[str, str | None]] = {}  # output (real path) -> the map and raw data written to it
    if len(pairs) == 1:
        print(_export_map(settings, project, threshold, *pairs[0], written), file=sys.stderr)
        return 0
    started, failed = time.perf_counter(), 0
    for index, (spec, raw_spec) in enumerate(pairs):
        try:
            line = f"{spec}: {_export_map(settings, project, threshold, spec, raw_spec, written)}"
        except UserError as exc:
            failed += 1
            line = f"skipped {spec}: {str(exc).removeprefix(f'{spec}: ')}"
        print(f"[{index + 1}/{len(files)}] {line}", file=sys.stderr, flush=True)
    parts = [f"{len(files) - failed} of {len(files)} files written"] + ([f"{failed} failed"] if failed else [])
    print(f"batch: {', '.join(parts)} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 1 if failed else 0


# the maps' channels are checked for each map (naming it), not against the project's classes
ANY_CHANNEL_COUNT = 2**31


def role_axes(input_axes: str | None) -> tuple[str | None, str | None]:
    """``--input_axes`` as ilastik's per role (raw data, prediction maps): ``RAW,MAPS``, or one value for both."""
    if input_axes is None or "," not in input_axes:
        return input_axes, input_axes
    raw, maps, *more = (part.strip() or None for part in input_axes.split(","))
    if more:
        raise UserError(f"--input_axes '{input_axes}': expected the axes of the raw data and of the maps "
                        "(e.g. tyx,tyxc), or one value for both")
    return raw, maps


def _export_map(settings: Settings, project: Project, threshold: ThresholdSettings, spec: str,
                raw_spec: str | None, written: dict[str, tuple[str, str | None]]) -> str:
    """Threshold one map (with its raw data ``raw_spec`` if given) and write its Objects, unless that would
    overwrite an output ``written`` before in this run (UserError); returns the ``wrote ...`` line, and a warning
    line when a frame has no object."""
    raw_axes, map_axes = role_axes(settings.input_axes)
    inputs = open_input(spec, map_axes, raw_spec, raw_axes, project, settings.lane)
    try:
        nickname = nickname_of(raw_spec or spec)
        targets = [os.path.realpath(path) for path in map_outputs(inputs, nickname, settings.export).values()]
        for target in targets:
            first_map, first_raw = written.get(target, (None, None))
            if first_map is not None and same_file(first_map, spec) and first_raw == raw_spec:
                raise UserError(f"{spec}: this map was given twice; it is written once")
            if first_map is not None:
                raise UserError(f"{spec}: its output {target} would overwrite the output of {first_map} (put "
                                "{nickname} or {dataset_dir} in the file name pattern)")
        empty: list[int] = []
        try:
            result, highest = export_objects(inputs, nickname, threshold, settings.export,
                                             settings.compute.config.objects.threads,
                                             lambda t, frame_highest: empty.extend([t] * (frame_highest == 0)))
        except SourceReadError as exc:
            raise UserError(f"the export failed and its partial output was removed: {exc}") from None
    finally:
        inputs.close()
    written.update(dict.fromkeys(targets, (spec, raw_spec)))
    rate = result.voxels / max(result.seconds, 1e-9)
    warning = no_objects_line(len(empty), result.blocks, threshold, project.label_names)
    return (f"wrote {', '.join(result.paths)} ({counted(result.blocks, 'frame')}, {result.seconds:.1f} s, "
            f"{rate / 1e6:.2f} Mvoxel/s; highest object ID {highest}{', uint64 labels' if highest >= 2**32 else ''})"
            + (f"\n{warning}" if warning else ""))


def same_file(spec: str, other: str) -> bool:
    """Whether two image specifications (file, or file/internal/path) name the same data."""
    return os.path.realpath(spec) == os.path.realpath(other)
