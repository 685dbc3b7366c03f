"""Work deferred to the end of a batch of settled futures (backend.distributed.settling)."""

from __future__ import annotations

import threading

from backend.distributed.settling import after_settling, settle_all, settling_batch


def test_outside_a_batch_the_action_runs_at_once():
    ran = []
    after_settling(lambda: ran.append(1))
    assert ran == [1]


def test_in_a_batch_each_action_runs_once_when_it_ends_even_if_another_fails():
    ran: list[str] = []

    def write() -> None:
        ran.append("write")

    def broken() -> None:
        raise RuntimeError("a failing writer")

    def settle_one() -> None:
        after_settling(broken)
        after_settling(write)
        ran.append("settled")

    settle_all([settle_one, settle_one, settle_one])
    assert ran == ["settled", "settled", "settled", "write"]


def test_a_batch_defers_only_its_own_threads_actions():
    ran: list[str] = []
    with settling_batch():
        other = threading.Thread(target=lambda: after_settling(lambda: ran.append("other thread")))
        other.start()
        other.join()
        after_settling(lambda: ran.append("this thread"))
        with settling_batch():  # nested: still the outer batch
            after_settling(lambda: ran.append("nested"))
        assert ran == ["other thread"]
    assert ran == ["other thread", "this thread", "nested"]
