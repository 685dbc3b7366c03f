"""``--threshold`` values: each mistake says what is wrong with the value; channels by class name; y:x sigmas."""

from __future__ import annotations

import pytest

from backend.compute.threshold import ThresholdSettings
from backend.errors import UserError
from ilastik_desktop.runtime.settings import parse_threshold

CLASSES = ("Background", "Cells", "Debris")


def parse(text: str) -> ThresholdSettings:
    return parse_threshold(text, None, len(CLASSES), class_names=CLASSES)


@pytest.mark.parametrize("text, message", [
    ("low=1.5", "--threshold 'low=1.5': low is a number from 0 to 1"),
    ("high=x", "--threshold 'high=x': high is a number from 0 to 1"),
    ("min_size=-1", "--threshold 'min_size=-1': min_size is a whole number of pixels, 0 or more"),
    ("max_size=2.5", "--threshold 'max_size=2.5': max_size is a whole number of pixels, 0 or more"),
    ("method=graphcut", "--threshold 'method=graphcut': method is simple or hysteresis (ilastik's graph-cut and "
     "identity-preserving methods are not computed here)"),
    ("sigmas=1:2:3:4", "--threshold 'sigmas=1:2:3:4': sigmas is z:y:x, or y:x (z then as y: 2D data has no z), "
     "each a number from 0 to 50"),
    ("sigmas=1:99", "sigmas is z:y:x, or y:x"),
    ("channel=nuclei", "--threshold channel=nuclei: no class of that name (the project's classes: 'Background', "
     "'Cells', 'Debris'; or give a channel number)"),
    ("channel=-1", "channel is a channel number (0, 1, ...) or a class name of the project"),
    ("colour=1", "--threshold 'colour=1': expected NAME=VALUE with NAME one of method, channel, core_channel, low, "
     "high, min_size, max_size, sigmas"),
    ("low", "expected NAME=VALUE"),
])
def test_each_mistake_says_what_is_wrong_with_the_value(text, message):
    with pytest.raises(UserError) as caught:
        parse(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_channels_by_class_name_in_any_case_and_two_sigmas_for_2d():
    settings = parse("channel=cells, core_channel=DEBRIS, method=Hysteresis, sigmas=1.5:2")
    assert (settings.channel, settings.core_channel, settings.method) == (1, 2, 1)
    assert settings.sigmas == (1.5, 1.5, 2.0)
    assert parse("sigmas=0:1:2").sigmas == (0.0, 1.0, 2.0)
