"""The headless export command: open a project, (re)train if asked, stream the export through the gateway."""

from __future__ import annotations

import dataclasses
import signal
import sys

from backend.compute.pipeline import split_kind
from backend.distributed.futures import TaskError
from backend.errors import TransientError, UserError
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline
from backend.io.sources.base import SourceReadError
from backend.service.export import check_internal_path, check_sources, default_block_shape, output_path, run_export
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.settings import Settings, parse_cutout, parse_threshold


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # ends the run like Ctrl-C: partial output and temporary files removed


# a kill or a service stop; the terminal closed (no SIGHUP on Windows)
INTERRUPTING = (signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


def run_headless(settings: Settings) -> int:
    """Run one export as configured; returns the exit code."""
    for signum in INTERRUPTING:
        signal.signal(signum, _interrupt)
    project = open_project(settings.project)
    source = open_lane(project, settings.lane, settings.raw_data, settings.input_axes)
    volumetric = source.shape[1] > 1
    classifier = None
    if settings.retrain:
        from backend.io.training import retrain_project

        classifier = retrain_project(project, source, settings.lane, progress=settings.export.progress)
        print(f"retrained {classifier.tree_count} trees and saved them in {project.path}", file=sys.stderr)
    needs_forest = settings.export.kind != "Features"  # a combined kind with Features needs it too
    pipeline = build_pipeline(project, source.channels, volumetric, classifier, require_classifier=needs_forest)
    threshold = parse_threshold(settings.threshold or "", project.threshold, pipeline.label_count)
    options = dataclasses.replace(settings.export, threshold=threshold)
    if settings.cutout:
        options = dataclasses.replace(options, region=parse_cutout(settings.cutout, source.axes,
                                                                   source.spatial_shape))
    block_shape = options.block_shape or default_block_shape(source.spatial_shape)
    nickname = project.lanes[settings.lane].nickname
    for kind in check_sources(split_kind(options.kind), options.filename_pattern):  # checked before any
        output_path(options.filename_pattern, options.fmt, source, nickname, kind)  # process starts
    check_internal_path(options.internal_path)
    with Services(settings.compute) as services:
        if services.listen_address:
            print(f"accepting workers at {services.listen_address}; start them with: {services.worker_command()}",
                  file=sys.stderr)
        services.wait_for_workers()
        gateway = services.gateway(source, pipeline, block_shape)
        try:
            in_flight = max(4, 2 * services.executor.status().processes + 2)
            try:
                result = run_export(gateway, nickname, options, in_flight)
            except (TaskError, TransientError, SourceReadError) as exc:
                raise UserError(f"the export failed and its partial output was removed: {exc}") from None
            status = gateway.status()
        finally:
            gateway.close()
    rate = result.voxels / max(result.seconds, 1e-9)
    unit = "frames" if options.kind == "Objects" else "blocks"
    print(f"wrote {', '.join(result.paths)} ({result.blocks} {unit}, {result.seconds:.1f} s, "
          f"{rate / 1e6:.2f} Mvoxel/s; "
          f"{status.computed} computed, {status.hits} from the cache, "
          f"{status.executor.processes} worker processes)", file=sys.stderr)
    return 0
