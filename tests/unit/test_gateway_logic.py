"""The gateway's logic on the in-memory cache and executor: claims, take-over, cancel, retry and snapshots,
with every race ordered by hand (notices delivered, tasks finished and leases lapsed when the test says)."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.config import CacheConfig
from backend.distributed.futures import TaskError
from backend.errors import TransientError
from backend.io.sources.arrays import ArraySource
from backend.service.claims import BlockOverdue
from backend.service.gateway import PREFETCH, VISIBLE, CacheUnavailable, Gateway, GatewayConfig
from tests.fakes import FakeCache, FakeClock, FakeExecutor, FakePipeline
from tests.helpers import wait_for

LEASE_S = 3.0
BLOCK = (1, 2, 16, 16)
ROI = Roi((0, 0, 0, 0), (1, 2, 16, 16))  # exactly one block


@pytest.fixture
def world():
    return World()


class World:
    """One image, one shared cache and clock; gateways (each with its own executor) made on demand."""

    def __init__(self):
        self.clock = FakeClock()
        self.cache = FakeCache(self.clock, CacheConfig(lease_s=LEASE_S), immediate=False)
        self.source = ArraySource(np.arange(4 * 32 * 32, dtype=np.uint8).reshape(4, 32, 32), "zyx")
        self.gateways: list[Gateway] = []

    def gateway(self, pipeline: FakePipeline, source=None) -> tuple[Gateway, FakeExecutor]:
        executor = FakeExecutor()
        gateway = Gateway(source or self.source, pipeline, executor, self.cache, GatewayConfig(BLOCK),
                          clock=self.clock)
        self.gateways.append(gateway)
        return gateway, executor

    def close(self):
        for gateway in self.gateways:
            gateway.close()


@pytest.fixture(autouse=True)
def closed(world):
    yield
    world.close()


def filled(pipeline: FakePipeline, kind: str = "Probabilities", roi: Roi = ROI) -> np.ndarray:
    return np.full(roi.shape + (pipeline.channels(kind),), pipeline.value(), np.float32)


A, B = FakePipeline("A"), FakePipeline("B")


def test_a_block_asked_for_twice_is_computed_once(world):
    gateway, executor = world.gateway(A)
    first, second = gateway.request("Probabilities", ROI), gateway.request("Probabilities", ROI)
    assert len(executor.tasks) == 1
    executor.finish(executor.tasks[0])
    assert np.array_equal(first.result(0), filled(A)) and np.array_equal(second.result(0), filled(A))
    assert gateway.status().misses == 1 and gateway.status().blocks_in_progress == 0
    assert not world.cache.leased(gateway.snapshot.key("Probabilities", ROI))


def test_two_gateways_share_a_block_through_the_cache(world):
    owner, owner_executor = world.gateway(A)
    other, other_executor = world.gateway(A)
    mine, theirs = owner.request("Probabilities", ROI), other.request("Probabilities", ROI)
    assert len(owner_executor.tasks) == 1 and other_executor.tasks == [] and other.status().waited == 1
    owner_executor.finish(owner_executor.tasks[0])
    assert mine.future.done() and not theirs.future.done()  # until the notice arrives
    world.cache.deliver()
    assert np.array_equal(theirs.result(0), filled(A)) and other.status().hits == 1


def test_a_claim_taken_over_while_its_owner_delivers(world):
    """The owner stalls past its lease; a waiter takes the block over; then both finish, in either order."""
    owner, owner_executor = world.gateway(A)
    taker, taker_executor = world.gateway(A)
    mine, theirs = owner.request("Probabilities", ROI), taker.request("Probabilities", ROI)
    world.clock.advance(LEASE_S + 1)  # the owner's watchdog did not renew (stalled)
    taker.claims.check()
    assert len(taker_executor.tasks) == 1  # taken over: computing it itself
    owner_executor.finish(owner_executor.tasks[0])  # the stalled owner delivers after all
    world.cache.deliver()  # its notice: the taker owns the block now and ignores it
    assert np.array_equal(mine.result(0), filled(A)) and not theirs.future.done()
    taker_executor.finish(taker_executor.tasks[0])
    world.cache.deliver()
    assert np.array_equal(theirs.result(0), filled(A))
    key = owner.snapshot.key("Probabilities", ROI)
    assert np.array_equal(world.cache.get(key)[0], filled(A)[0]) and not world.cache.leased(key)
    assert owner.status().blocks_in_progress == taker.status().blocks_in_progress == 0


def test_the_owner_of_a_block_keeps_it_by_renewing_its_lease(world):
    owner, owner_executor = world.gateway(A)
    waiter, waiter_executor = world.gateway(A)
    owner.request("Probabilities", ROI)
    waiter.request("Probabilities", ROI)
    for _ in range(5):
        world.clock.advance(LEASE_S / 2)
        owner.claims.renew()  # its lease thread renews
        waiter.claims.check()
    assert waiter_executor.tasks == [] and len(owner_executor.tasks) == 1


def test_cancelling_during_delivery_leaves_nobody_waiting(world):
    gateway, executor = world.gateway(A)
    others = []
    first = gateway.request("Probabilities", ROI, on_block=lambda part, values: others[0].cancel())
    late = gateway.request("Probabilities", ROI)  # delivered after first, which cancels it meanwhile
    third = gateway.request("Probabilities", ROI)
    others.append(late)
    executor.finish(executor.tasks[0])
    assert first.future.done() and third.future.done() and late.future.cancelled()
    assert np.array_equal(third.result(0), filled(A)) and gateway.status().blocks_in_progress == 0


def test_the_last_waiter_leaving_takes_a_queued_block_off_the_queue_and_frees_its_claim(world):
    gateway, executor = world.gateway(A)
    request = gateway.request("Probabilities", ROI, PREFETCH)
    request.cancel()
    key = gateway.snapshot.key("Probabilities", ROI)
    assert executor.tasks[0].future.cancelled() and not world.cache.leased(key)
    assert gateway.status().blocks_in_progress == 0 and request.future.cancelled()


def test_a_more_urgent_request_resubmits_a_queued_block_and_only_the_new_task_counts(world):
    gateway, executor = world.gateway(A)
    prefetch = gateway.request("Probabilities", ROI, PREFETCH)
    visible = gateway.request("Probabilities", ROI, VISIBLE)
    old, new = executor.tasks
    assert old.future.cancelled() and (old.priority, new.priority) == (PREFETCH, VISIBLE)
    assert not executor.finish(old)  # the old task's result can no longer arrive
    executor.finish(new)
    assert np.array_equal(prefetch.result(0), visible.result(0))


def test_a_running_task_is_not_resubmitted_for_a_more_urgent_request(world):
    gateway, executor = world.gateway(A)
    prefetch = gateway.request("Probabilities", ROI, PREFETCH)
    executor.start(executor.tasks[0])  # on a worker already: it cannot be taken back
    visible = gateway.request("Probabilities", ROI, VISIBLE)
    assert len(executor.tasks) == 1
    executor.finish(executor.tasks[0])
    assert prefetch.future.done() and visible.future.done()


def test_retraining_never_stores_one_classifiers_result_under_anothers_key(world):
    """A block asked for under A and taken over after the gateway moved to B is still computed with A."""
    owner, _ = world.gateway(A)
    gateway, executor = world.gateway(A)
    owner.request("Probabilities", ROI)
    waiting = gateway.request("Probabilities", ROI)  # under A, waiting for the owner
    gateway.set_pipeline(B)  # live training: a new classifier
    world.clock.advance(LEASE_S + 1)  # the owner died
    gateway.claims.check()
    (job,) = executor.tasks
    assert job.task.pipeline == A.fingerprint() and job.task.key == waiting.pending.copy().pop()
    executor.finish(job)
    key_a = owner.snapshot.key("Probabilities", ROI)
    assert np.array_equal(world.cache.get(key_a)[0], filled(A)[0]) and np.array_equal(waiting.result(0), filled(A))
    after = gateway.request("Probabilities", ROI)  # new requests use B, under B's key
    assert executor.tasks[-1].task.pipeline == B.fingerprint()
    executor.finish(executor.tasks[-1])
    assert np.array_equal(after.result(0), filled(B))


def test_a_cached_value_of_the_wrong_shape_is_dropped_and_computed_again(world, caplog):
    gateway, executor = world.gateway(A)
    key = gateway.snapshot.key("Probabilities", ROI)
    world.cache.values[key] = np.zeros((1, 3, 3, 1), np.float32)
    with caplog.at_level(logging.WARNING):
        request = gateway.request("Probabilities", ROI)
    assert "dropping cache entry" in caplog.text and len(executor.tasks) == 1
    executor.finish(executor.tasks[0])
    assert np.array_equal(request.result(0), filled(A))


def test_a_planted_value_or_error_is_a_miss_and_the_block_is_computed(world):
    gateway, executor = world.gateway(A)
    key = gateway.snapshot.key("Probabilities", ROI)
    world.cache.plant(key)
    world.cache.plant(key + ":error")
    request = gateway.request("Probabilities", ROI)
    assert len(executor.tasks) == 1 and world.cache.rejected == 2 and gateway.status().misses == 1
    executor.finish(executor.tasks[0])
    assert np.array_equal(request.result(0), filled(A))


def test_a_deterministic_failure_is_recorded_for_everyone(world):
    owner, owner_executor = world.gateway(A)
    other, other_executor = world.gateway(A)
    mine, theirs = owner.request("Probabilities", ROI), other.request("Probabilities", ROI)
    owner_executor.finish(owner_executor.tasks[0], error=ValueError("bad raw data"))
    world.cache.deliver()
    with pytest.raises(ValueError):
        mine.result(0)
    with pytest.raises(TaskError, match="ValueError: bad raw data"):  # the headless export reports it in one line
        theirs.result(0)
    later = other.request("Probabilities", ROI)
    assert later.future.exception(0) is not None and other_executor.tasks == []


def test_a_transient_failure_frees_the_block_for_the_next_waiter(world):
    owner, owner_executor = world.gateway(A)
    other, other_executor = world.gateway(A)
    mine, theirs = owner.request("Probabilities", ROI), other.request("Probabilities", ROI)
    owner_executor.finish(owner_executor.tasks[0], error=TransientError("worker lost"))
    with pytest.raises(TransientError):
        mine.result(0)
    world.cache.deliver()  # the abandon notice: the waiter claims and computes it
    other_executor.finish(other_executor.tasks[0])
    assert np.array_equal(theirs.result(0), filled(A))


def test_notices_lost_with_the_channel_are_made_up_for_when_it_is_back(world):
    owner, owner_executor = world.gateway(A)
    other, _ = world.gateway(A)
    owner.request("Probabilities", ROI)
    theirs = other.request("Probabilities", ROI)
    owner_executor.finish(owner_executor.tasks[0])
    world.cache.lose_notices()  # the completion notice is gone with the channel
    assert not theirs.future.done()
    world.cache.notices_back()
    assert np.array_equal(theirs.result(0), filled(A))


def test_closing_fails_every_waiter_and_frees_every_claim(world):
    gateway, executor = world.gateway(A)
    requests = [gateway.request("Probabilities", Roi((0, 0, 0, 0), (1, 4, 32, 32))) for _ in range(2)]
    keys = [key for key in requests[0].pending]
    assert len(keys) == 8 and all(world.cache.leased(k) for k in keys)
    gateway.close()
    world.gateways.remove(gateway)
    for request in requests:
        assert isinstance(request.future.exception(0), CacheUnavailable)
    assert not any(world.cache.leased(k) for k in keys)
    assert all(job.future.cancelled() for job in executor.tasks)


def completed(world, key: str) -> int:
    return world.cache.calls.count(("complete", key))


def test_a_lost_lease_hands_the_block_to_its_new_holder_and_our_late_result_is_ignored(world):
    owner, owner_executor = world.gateway(A)
    taker, taker_executor = world.gateway(A)
    mine, theirs = owner.request("Probabilities", ROI), taker.request("Probabilities", ROI)
    owner_executor.start(owner_executor.tasks[0])  # on a worker: it cannot be taken back
    world.clock.advance(LEASE_S + 1)  # the owner stalled past its lease
    taker.claims.check()  # taken over
    owner.claims.renew()  # the owner hears that its lease is lost
    assert owner.table.states(owned=True) == [] and len(owner.table.states(owned=False)) == 1
    owner_executor.finish(owner_executor.tasks[0])  # its late result is neither stored nor delivered
    key = owner.snapshot.key("Probabilities", ROI)
    assert not mine.future.done() and completed(world, key) == 0 and owner.status().computed == 0
    taker_executor.finish(taker_executor.tasks[0])
    world.cache.deliver()  # the new holder's notice reaches the old owner's waiters
    assert np.array_equal(mine.result(0), filled(A)) and np.array_equal(theirs.result(0), filled(A))
    assert completed(world, key) == 1 and owner.status().hits == 1


def test_a_lost_lease_nobody_took_is_claimed_again(world):
    gateway, executor = world.gateway(A)
    request = gateway.request("Probabilities", ROI)
    world.clock.advance(LEASE_S + 1)  # lapsed while this process stalled; nobody else wanted the block
    gateway.claims.renew()
    assert executor.tasks[0].future.cancelled()  # queued: taken back
    gateway.claims.check()  # nobody holds it: claimed and computed again
    assert len(executor.tasks) == 2 and len(gateway.table.states(owned=True)) == 1
    executor.finish(executor.tasks[1])
    assert np.array_equal(request.result(0), filled(A))


def test_a_claim_given_up_as_a_renewal_round_starts_is_left_alone(world, monkeypatch):
    gateway, executor = world.gateway(A)
    gateway.request("Probabilities", Roi((0, 0, 0, 0), (1, 4, 16, 16)))  # two blocks, both ours
    first, second = gateway.table.states(owned=True)
    listed = gateway.table.states

    def listed_then_given_up(owned=None):
        states = listed(owned)
        first.token = None  # given up (by a cancellation) just after it was listed
        return states

    monkeypatch.setattr(gateway.table, "states", listed_then_given_up)
    gateway.claims.renew()
    assert world.cache.calls[-1] == ("renew", second.key) and ("renew", first.key) not in world.cache.calls
    assert not any(job.future.cancelled() for job in executor.tasks) and second.token


class SlowSource(ArraySource):
    """An image whose reads wait, once ``slow`` is set, until ``go`` is set (a hung network disk)."""

    def __init__(self, array: np.ndarray):
        super().__init__(array, "zyx")
        self.slow, self.reading, self.go = threading.Event(), threading.Event(), threading.Event()

    def _read_native(self, index):
        if self.slow.is_set():
            self.reading.set()
            self.go.wait(30)
        return super()._read_native(index)


def test_leases_are_renewed_while_the_watchdog_reads_raw_data_to_take_a_block_over():
    """The watchdog's own threads run here (a lease of 0.3 s: rounds every 0.1 s); the fake clock stands still,
    so only renewals that really happen count."""
    clock = FakeClock()
    cache = FakeCache(clock, CacheConfig(lease_s=0.3))
    source = SlowSource(np.arange(4 * 32 * 32, dtype=np.uint8).reshape(4, 32, 32))
    gateway = Gateway(source, A, FakeExecutor(), cache, GatewayConfig(BLOCK), clock=clock)
    try:
        other = gateway.snapshot.key("Probabilities", Roi((0, 2, 0, 0), (1, 4, 16, 16)))
        assert cache.claim(other, "another process")
        gateway.request("Probabilities", Roi((0, 2, 0, 0), (1, 4, 16, 16)))  # waits for that owner
        gateway.request("Probabilities", ROI)  # ours: claimed, its raw data read at once
        source.slow.set()
        cache.release(other, "another process")  # it gives up without a word...
        clock.advance(0.2)  # ...and the watchdog takes the block over, reading its raw data (within our lease)
        wait_for(source.reading.is_set, 10, message="the watchdog never took the block over")
        renewed = cache.calls.count(("renew", gateway.snapshot.key("Probabilities", ROI)))
        wait_for(lambda: cache.calls.count(("renew", gateway.snapshot.key("Probabilities", ROI))) >= renewed + 3,
                 10, message="no renewal while the watchdog reads")
    finally:
        source.go.set()
        gateway.close()


def test_waiters_get_an_error_when_a_holder_renews_but_never_delivers(world):
    """Leases alone cannot tell a holder that is alive but stuck: every block has a deadline."""
    world.cache.config = CacheConfig(lease_s=LEASE_S, block_deadline_s=60)
    holder, holder_executor = world.gateway(A)
    waiter, _ = world.gateway(A)
    held, waiting = holder.request("Probabilities", ROI), waiter.request("Probabilities", ROI)
    for _ in range(19):  # 57 s: the holder renews all the time, never delivers
        world.clock.advance(LEASE_S)
        holder.claims.renew()
        holder.claims.check()
        waiter.claims.check()
    assert not held.future.done() and not waiting.future.done()
    world.clock.advance(LEASE_S + 1)
    waiter.claims.check()
    assert isinstance(waiting.future.exception(0), BlockOverdue)
    holder.claims.check()  # its own stuck computation: dropped, its claim freed for others
    assert isinstance(held.future.exception(0), BlockOverdue) and holder_executor.tasks[0].future.cancelled()
    assert not world.cache.leased(holder.snapshot.key("Probabilities", ROI))
    assert holder.status().blocks_in_progress == waiter.status().blocks_in_progress == 0
