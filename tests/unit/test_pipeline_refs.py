"""Pipeline references: a pipeline goes with its last reference, but never under a pending task of it."""

from backend.distributed.pipeline_refs import PipelineRefs


def test_a_pipeline_is_dropped_with_its_last_reference_once_its_tasks_are_settled():
    refs = PipelineRefs()
    assert refs.add("a") and not refs.add("a")  # installed once, counted twice
    refs.task_started("a")
    refs.release("a")
    refs.release("a")
    assert refs.known("a")  # releases wait for collect (a finalizer only notes them)
    assert refs.collect() == [] and refs.known("a")  # its task is pending
    refs.task_ended("a")
    assert refs.collect() == ["a"] and not refs.known("a")
    assert refs.add("a")  # added again: installed again


def test_a_pipeline_added_again_before_its_release_is_applied_stays():
    refs = PipelineRefs()
    refs.add("old")
    refs.release("old")
    refs.add("old")  # the next retrain gave the same classifier
    assert refs.collect() == [] and refs.fingerprints() == frozenset({"old"})
    refs.release("unknown")  # more releases than adds: ignored
    assert refs.collect() == []
