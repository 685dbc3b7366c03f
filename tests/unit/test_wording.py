"""Counts in messages agree with their nouns."""

from backend.wording import counted


def test_one_is_singular_and_every_other_count_plural():
    assert [counted(n, "process") for n in (0, 1, 2)] == ["0 processes", "1 process", "2 processes"]
    assert [counted(n, "block") for n in (1, 12)] == ["1 block", "12 blocks"]
    assert counted(1, "axis", "axes") == "1 axis" and counted(4, "axis", "axes") == "4 axes"
