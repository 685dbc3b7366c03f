"""The ZeroMQ executor's books on a clock the test moves: who gets which task, silent and slow workers,
late results, malformed results, and no workers at all, each race ordered by hand."""

from __future__ import annotations

import numpy as np
import pytest

from backend.compute.pipeline import BlockTask
from backend.config import ExecutorConfig
from backend.distributed.futures import TaskError
from backend.distributed.protocol import Message
from backend.distributed.roster import NoWorkers, Roster
from tests.fakes import FakeClock, FakePipeline

PIPELINE = FakePipeline("A")
CONFIG = ExecutorConfig(heartbeat_s=1.0, liveness=3, max_attempts=3, deadline_floor_s=10.0, worker_timeout_s=5.0)


def task(n: int = 0) -> BlockTask:
    return BlockTask(f"block-{n}", "Probabilities", np.zeros((1, 4, 4, 1), np.uint8), (0, 0, 0), (1, 4, 4),
                     ((0, 1), (0, 4), (0, 4)), PIPELINE.fingerprint())


def result(key: str, value: float = 0.5) -> Message:
    return Message("RESULT", {"key": key, "compute_s": 0.1}, [np.full((1, 4, 4, 2), value, np.float32)])


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def roster(clock):
    roster = Roster(CONFIG, fail_without_workers=True, clock=clock)
    roster.pipelines[PIPELINE.fingerprint()] = PIPELINE
    return roster


def register(roster: Roster, name: str, processes: int = 1):
    return roster.register((0, name.encode()), {"processes": processes, "host": name, "heartbeat_s": 1.0}, name)


def run(settles) -> None:
    for settle_one in settles or ():
        if settle_one is not None:
            settle_one()


def test_each_worker_gets_two_tasks_per_process_and_the_most_urgent_first(roster):
    futures = [roster.push(task(n), priority) for n, priority in enumerate([2, 0, 1, 0, 2])]
    worker = register(roster, "w1")
    sent = roster.dispatch()
    assert [job.priority for _, _, job, _ in sent] == [0, 0] and len(worker.in_flight) == 2
    assert sent[0][3] and not sent[1][3]  # the pipeline goes with the first task only
    assert roster.dispatch() == [] and sum(not f.running() for f in futures) == 3


def test_exports_leave_a_slot_per_process_for_the_views(roster):
    for n in range(4):
        roster.push(task(n), 3)  # batch priority: an export
    register(roster, "w1", processes=1)
    assert len(roster.dispatch()) == 1  # one export block per process, the other slot stays free
    roster.push(task(9), 0)
    assert [job.priority for _, _, job, _ in roster.dispatch()] == [0]


def test_a_silent_worker_is_dropped_and_its_tasks_go_to_another_without_counting_as_attempts(roster, clock):
    future = roster.push(task(), 0)
    register(roster, "silent")
    (_, _, job, _), = roster.dispatch()
    clock.advance(3.5)  # three missed heartbeats
    assert roster.expire(clock()) == [] and roster.workers == {}
    assert roster.lost[0].reason.startswith("silent") and job.attempts == 0
    helper = register(roster, "helper")
    (_, key, _, _), = roster.dispatch()
    run([roster.complete(helper, result(key))])
    assert future.result(0)[0, 0, 0, 0] == 0.5


def test_a_late_result_from_a_slow_worker_wins_and_the_redispatched_copy_is_ignored(roster, clock):
    """The task goes overdue, is sent to another worker, then the first worker's result arrives after all."""
    future = roster.push(task(), 0)
    slow = register(roster, "slow")
    (_, slow_key, _, _), = roster.dispatch()
    clock.advance(0.9)
    slow.last_heard = clock()  # it keeps heartbeating, but the task takes too long
    clock.advance(roster.deadline())
    slow.last_heard = clock()
    assert roster.expire(clock()) == [] and slow_key in slow.overdue
    fast = register(roster, "fast")
    (_, fast_key, _, _), = roster.dispatch()
    run([roster.complete(slow, result(slow_key, 0.25))])  # late, but welcome
    assert future.result(0)[0, 0, 0, 0] == 0.25 and slow.overdue == {}
    assert roster.complete(fast, result(fast_key, 0.75)) is None  # settled already: ignored
    assert fast.in_flight == {} and future.result(0)[0, 0, 0, 0] == 0.25  # its slot is free again


def test_a_result_for_a_task_sent_elsewhere_after_its_worker_was_dropped_is_ignored(roster, clock):
    future = roster.push(task(), 0)
    first = register(roster, "first")
    (_, first_key, _, _), = roster.dispatch()
    roster.drop(first.route, "disconnected by the user")
    second = register(roster, "second")
    (_, second_key, _, _), = roster.dispatch()
    back = register(roster, "first")  # the first worker comes back and sends its old result
    assert roster.complete(back, result(first_key, 0.25)) is None
    run([roster.complete(second, result(second_key, 0.75))])
    assert future.result(0)[0, 0, 0, 0] == 0.75


def test_a_malformed_result_is_rejected_and_the_task_retried_then_failed(roster):
    future = roster.push(task(), 0)
    worker = register(roster, "liar")
    for _ in range(CONFIG.max_attempts):
        (_, key, _, _), = roster.dispatch()
        settle_one = roster.complete(worker, Message("RESULT", {"key": key}, [np.zeros((2, 2), np.float64)]))
        run([settle_one])
    assert roster.counters["rejected"] == CONFIG.max_attempts
    with pytest.raises(TaskError, match="malformed"):
        future.result(0)


def test_a_deterministic_error_fails_the_task_at_once(roster):
    future = roster.push(task(), 0)
    worker = register(roster, "w")
    (_, key, _, _), = roster.dispatch()
    run([roster.complete(worker, Message("ERROR", {"key": key, "message": "bad data", "deterministic": True}))])
    with pytest.raises(TaskError, match="bad data"):
        future.result(0)
    assert future.exception(0).deterministic


def test_queued_tasks_fail_once_there_was_no_worker_for_the_timeout(roster, clock):
    future = roster.push(task(), 0)
    clock.advance(CONFIG.worker_timeout_s - 1)
    assert roster.expire(clock()) == []
    clock.advance(2)
    run(roster.expire(clock()))
    with pytest.raises(NoWorkers):
        future.result(0)


def test_a_cancelled_task_is_never_sent(roster):
    future = roster.push(task(), 0)
    assert future.cancel()
    register(roster, "w")
    assert roster.dispatch() == []


def test_the_status_counts_what_happened(roster, clock):
    roster.push(task(), 0)
    worker = register(roster, "w", processes=2)
    (_, key, _, _), = roster.dispatch()
    clock.advance(0.5)
    run([roster.complete(worker, result(key))])
    (status,) = roster.workers_status(clock())
    assert (status.host, status.processes, status.blocks_done, status.state) == ("w", 2, 1, "idle")
    assert roster.counters["done"] == 1 and roster.no_workers_s(clock()) == 0.0


def _overdue(roster, clock, worker, key) -> None:
    """Let ``worker``'s task ``key`` run past the deadline while the worker keeps heartbeating."""
    deadline = roster.deadline()
    while key not in worker.overdue:
        clock.advance(min(deadline, 0.9) + 0.01)
        worker.last_heard = clock()
        run(roster.expire(clock()))


def test_a_stuck_task_killed_by_its_worker_frees_the_process_and_runs_once_elsewhere(roster, clock):
    """The worker kills the compute process stuck with an overdue task and answers with a transient error:
    its process is free again, and the copy already re-dispatched is the only one."""
    future = roster.push(task(), 0)
    stuck = register(roster, "stuck")
    (_, stuck_key, _, _), = roster.dispatch()
    _overdue(roster, clock, stuck, stuck_key)
    helper = register(roster, "helper")
    (worker, helper_key, _, _), = roster.dispatch()
    assert worker is helper
    message = Message("ERROR", {"key": stuck_key, "message": "its compute process was killed", "deterministic": False})
    assert roster.complete(stuck, message) is None
    assert stuck.overdue == {} and roster.waiting() == [] and roster.dispatch() == []  # not sent a second time
    run([roster.complete(helper, result(helper_key, 0.75))])
    assert future.result(0)[0, 0, 0, 0] == 0.75 and roster.counters["redispatched"] == 1


def test_an_overdue_task_its_worker_never_answers_is_forgotten_after_two_more_deadlines(roster, clock):
    roster.push(task(0), 0)
    stuck = register(roster, "stuck")
    (_, key, _, _), = roster.dispatch()
    _overdue(roster, clock, stuck, key)
    roster.dispatch()  # nowhere else to go: back to the same worker, under a key of its own
    assert key in stuck.overdue and len(stuck.in_flight) == 1 and key not in stuck.in_flight
    waited = 0.0
    while key in stuck.overdue:
        clock.advance(0.5)
        waited += 0.5
        stuck.last_heard = clock()
        roster.expire(clock())
        assert waited <= 2 * roster.deadline() + 1, "an overdue task held its process for good"
    assert waited > 2 * roster.deadline() - 1 - 0.5


def test_the_last_message_of_each_local_worker_process_is_kept_after_it_is_dropped(roster, clock):
    local = roster.register((0, b"l"), {"processes": 1, "pid": 4321, "heartbeat_s": 1.0}, "local", kind="local")
    remote = roster.register((0, b"r"), {"processes": 1, "pid": 99, "heartbeat_s": 1.0}, "tcp://far", kind="remote")
    clock.advance(1.0)
    roster.heard_from(local)
    roster.heard_from(remote)
    clock.advance(5.0)
    roster.expire(clock())
    assert roster.workers == {} and roster.heard == {4321: clock() - 5.0}  # remote pids mean nothing here


def test_a_task_whose_worker_dropped_its_pipeline_is_sent_again_with_it_without_counting_an_attempt(roster):
    """Workers keep the few pipelines they used last: a task of one they dropped comes back asking for it."""
    future = roster.push(task(), 0)
    worker = register(roster, "w")
    for _ in range(CONFIG.max_attempts + 1):
        (_, key, job, needs_pipeline), = roster.dispatch()
        assert needs_pipeline
        missing = {"key": key, "message": "unknown pipeline", "deterministic": False,
                   "missing_pipeline": PIPELINE.fingerprint()}
        assert roster.complete(worker, Message("ERROR", missing)) is None
    assert job.attempts == 0 and not future.done()
    (_, key, _, _), = roster.dispatch()
    run([roster.complete(worker, result(key))])
    assert future.result(0)[0, 0, 0, 0] == 0.5


def test_a_pipeline_no_task_needs_is_forgotten_and_sent_again_when_added_back(roster):
    worker = register(roster, "w")
    roster.push(task(), 0)
    roster.dispatch()
    assert worker.pipelines == {PIPELINE.fingerprint()}
    roster.forget(PIPELINE.fingerprint())
    assert roster.pipelines == {} and worker.pipelines == set()
