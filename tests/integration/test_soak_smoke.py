"""The soak benchmark (bench/soak.py) runs end to end for a few seconds, so that it does not rot; its check
finds a block computed under another classifier, and the classifiers it keeps for checking stay bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from backend.compute.geometry import Roi
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline
from backend.service.snapshot import PipelineSnapshot
from bench.soak_checks import Checker, Classifiers, Job, expected_block
from ilastik_desktop.runtime.demo import write_demo_project

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_only_the_classifiers_an_open_operation_may_see_are_kept():
    current = ["A"]
    kept = Classifiers(lambda: current[0])
    first, generation = kept.open()
    assert kept.between(generation) == ["A"]
    for name in "BCD":  # three trainings while the first operation is open
        current[0] = name
        kept.note()
    assert kept.between(generation) == ["A", "B", "C", "D"]
    second, _ = kept.open()
    kept.close(first)
    assert kept.between(0) == ["D"]  # nothing open began before D
    current[0] = "E"
    kept.note()
    kept.close(second)
    assert kept.between(0) == ["E"] and kept.most_kept == 4


@pytest.mark.timeout(120)
def test_the_check_finds_a_block_of_another_classifier_and_names_it(tmp_path):
    projects = [open_project(write_demo_project(str(tmp_path / f"p{seed}"), (16, 48, 48), trees=5, seed=seed))
                for seed in (0, 1)]
    source = open_lane(projects[0], 0)
    pipelines = [build_pipeline(p, source.channels, True) for p in projects]
    snapshots = [PipelineSnapshot(source.fingerprint(), p, p.fingerprint(), source.spatial_shape) for p in pipelines]
    assert snapshots[0].fingerprint != snapshots[1].fingerprint
    block_shape = (1, 16, 32, 32)
    block = next(iter(snapshots[0].grid(block_shape).blocks_in(Roi((0, 0, 0, 0), (1, 16, 32, 32)))))
    values = expected_block(source, snapshots[0], "Probabilities", block)  # computed under classifier 0
    current = [snapshots[0]]
    classifiers = Classifiers(lambda: current[0])
    operation, _ = classifiers.open()  # a request under classifier 0 ...
    current[0] = snapshots[1]  # ... while a training swaps in classifier 1
    classifiers.note()
    failures: list[tuple[str, str]] = []
    checker = Checker(source, classifiers, lambda what, detail: failures.append((what, detail)))
    try:
        checker.submit(Job("labelled 1", "Probabilities", [snapshots[1]], block_shape, [(block.roi, values)],
                           operation))
        checker.submit(Job("either", "Probabilities", snapshots[::-1], block_shape, [(block.roi, values)]))
    finally:
        checker.stop()
    assert checker.counts == {"blocks_checked": 2, "jobs_checked": 2, "wrong_blocks": 1}
    assert len(failures) == 1 and failures[0][0] == "labelled 1"
    assert f"it is classifier {snapshots[0].fingerprint}'s result" in failures[0][1]
    assert classifiers.between(0) == [snapshots[1]]  # the operation was closed once checked


@pytest.mark.timeout(300)
def test_a_short_soak_runs_every_activity_and_checks_what_was_delivered(tmp_path):
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "soak.py"), "--minutes", "0.1", "--retrain-s", "1",
         "--viewer-s", "0.3", "--web-s", "0.5", "--export-every-s", "2", "--kill-every-s", "3", "--sample-s", "0.5",
         "--dir", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: a few seconds are too short for growth figures
    document = json.loads(out.read_text())
    rows = {row["check"]: row for row in document["rows"]}
    assert rows["wrong blocks"]["value"] == 0 and rows["blocks checked"]["value"] > 0
    assert document["failures_total"] == 0, document["failures"]
    assert rows["leases left after settling"]["ok"] and rows["blocks in progress after settling"]["ok"]
    counts = document["counts"]
    assert counts["trainings"] >= 1 and counts["exports"] >= 1 and counts["web_reads"] >= 1
    assert counts["viewer_requests"] >= 1 and counts["jobs_checked"] >= counts["web_reads"] + counts["exports"]
    assert document["kills"] and all(kill["back"] for kill in document["kills"])
    assert len(document["samples"]) >= 6 and not document["qt_loaded"]
