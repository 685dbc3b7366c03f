"""One training of a project's classifier from the labels of its loaded lanes, run off the owner's thread (the
labelled blocks' features on the workers, the forest here), and what it gives the controller."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from backend.compute.pipeline import Pipeline
from backend.distributed.executor import Executor
from backend.io.project import Classifier
from backend.io.project_pipeline import build_pipeline
from backend.service.live_training import train_sessions
from ilastik_desktop.runtime.document import Document
from ilastik_desktop.runtime.lanes import ProjectLanes


@dataclass(frozen=True)
class Trained:
    """A finished training: its classifier, the labelled voxels it learnt from, the pipeline computing with it,
    the executor's reference to that pipeline (None without an executor) and how it went, in words."""

    classifier: Classifier
    rows: int
    pipeline: Pipeline
    fingerprint: str | None
    how: str


def train_lanes(lanes: ProjectLanes, document: Document, executor: Executor | None, chunk_trees: int,
                should_stop: Callable[[], bool]) -> Trained:
    """A classifier from every loaded lane's labels as they are now, its pipeline for ``document`` registered
    with ``executor`` (here: with Dask a network call, never on the owner's thread). Raises
    :class:`~backend.io.training.TrainingStopped` once ``should_stop()`` says so, a UserError when the labels
    cannot train one."""
    started = time.perf_counter()
    sessions = lanes.sessions()
    classifier, rows = train_sessions(sessions, chunk_trees=chunk_trees, should_stop=should_stop)
    project, source = document.project, document.source
    pipeline = build_pipeline(project, source.channels, source.shape[1] > 1, classifier)
    fingerprint = executor.add_pipeline(pipeline) if executor is not None else None  # given back once in use
    of_lanes = f" of {len(sessions)} lanes" if len(sessions) > 1 else ""
    left_out = "".join(f"; left out {failure}" for failure in lanes.failures())
    return Trained(classifier, rows, pipeline, fingerprint,
                   f"{of_lanes} in {time.perf_counter() - started:.1f} s{left_out}")
