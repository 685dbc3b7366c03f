"""The headless export command: open a project, (re)train if asked, stream the export."""

from __future__ import annotations

import dataclasses
import sys

from backend.dataset import open_lane
from backend.executor import LocalExecutor
from backend.export import run_export
from backend.pipeline import build_pipeline
from backend.project import open_project
from ilastik_desktop.config import Settings, parse_cutout


def run_headless(settings: Settings) -> int:
    """Run one export as configured; returns the exit code."""
    project = open_project(settings.project)
    source = open_lane(project, settings.lane, settings.raw_data, settings.input_axes)
    volumetric = source.shape[1] > 1
    classifier = None
    if settings.retrain:
        from backend.training import retrain_project

        classifier = retrain_project(project, source, progress=settings.export.progress)
        print(f"retrained {classifier.tree_count} trees and saved them in {project.path}", file=sys.stderr)
    needs_forest = settings.export.kind != "Features"
    pipeline = build_pipeline(project, source.channels, volumetric, classifier, require_classifier=needs_forest)
    options = settings.export
    if settings.cutout:
        options = dataclasses.replace(options, region=parse_cutout(settings.cutout, source.axes,
                                                                   source.spatial_shape))
    with LocalExecutor(pipeline, settings.workers) as executor:
        result = run_export(source, pipeline, executor, project.lanes[settings.lane].nickname, options,
                            max_in_flight=2 * executor.workers)
    rate = result.voxels / max(result.seconds, 1e-9)
    print(f"wrote {result.path} ({result.blocks} blocks, {result.seconds:.1f} s, {rate / 1e6:.2f} Mvoxel/s)",
          file=sys.stderr)
    return 0
