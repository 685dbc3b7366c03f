"""The tests' own waiting helpers: what they return, when they fail and what the failure says."""

import itertools
import time

import pytest

from tests.helpers import stays, wait_for


def test_wait_for_returns_the_first_truthy_value():
    answers = iter([0, None, [], "ready", "later"])
    assert wait_for(lambda: next(answers), 1) == "ready"


def test_wait_for_fails_after_the_timeout_saying_what_it_saw():
    counter = itertools.count()
    last = []
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"not within 0\.2 s: the count is at \d+"):
        wait_for(lambda: last.append(next(counter)), 0.2, message=lambda: f"the count is at {last[-1]}")
    assert 0.2 <= time.monotonic() - started < 2
    with pytest.raises(AssertionError, match="no file yet"):
        wait_for(lambda: False, 0.05, message="no file yet")


def test_wait_for_lets_the_predicates_errors_through_unless_told_to_ignore_them():
    def broken():
        raise KeyError("nothing there")

    with pytest.raises(KeyError):
        wait_for(broken, 1)
    with pytest.raises(AssertionError, match="nothing there") as failure:
        wait_for(broken, 0.05, ignore=(KeyError,))
    assert isinstance(failure.value.__cause__, KeyError)
    answers = iter([KeyError("not yet"), KeyError("not yet"), 42])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for(flaky, 1, ignore=(KeyError,)) == 42


def test_stays_holds_for_the_whole_period_and_fails_at_the_first_lapse():
    started = time.monotonic()
    stays(lambda: True, 0.1)
    assert time.monotonic() - started >= 0.1
    until = time.monotonic() + 0.05
    with pytest.raises(AssertionError, match="stopped holding after .* of 1 s: the worker ended"):
        stays(lambda: time.monotonic() < until, 1, message="the worker ended")
    assert time.monotonic() - started < 0.9
