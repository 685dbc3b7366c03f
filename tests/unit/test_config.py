"""The one configuration tree: documented defaults, environment overrides, refusals that name the variable."""

import dataclasses
import os
import subprocess
import sys

import pytest

from backend.config import Config, entries, environment, format_config, load_config, variable_name
from backend.errors import UserError
from tests.conftest import REPO, run_cli


def test_every_value_has_a_default_a_description_and_a_variable():
    rows = entries(Config())
    assert len(rows) >= 25 and len({row.key for row in rows}) == len(rows)
    for row in rows:
        assert row.doc and row.value == row.default
        assert row.variable == variable_name(*row.key.split("."))


def test_the_environment_overrides_values_and_child_processes_see_the_same():
    config = load_config({"ILASTIK_DESKTOP__EXECUTOR__HEARTBEAT_S": "0.25", "ILASTIK_DESKTOP__CACHE__LEASE_S": "4",
                          "OTHER": "x"})
    assert config.executor.heartbeat_s == 0.25 and config.cache.lease_s == 4.0
    assert config.executor.liveness == 3  # untouched values keep their defaults
    assert load_config(environment(config)) == config


@pytest.mark.parametrize("variable, value, says", [
    ("ILASTIK_DESKTOP__EXECUTOR__HEARTBEAT", "1", "unknown setting ILASTIK_DESKTOP__EXECUTOR__HEARTBEAT"),
    ("ILASTIK_DESKTOP__NOPE__X", "1", "sections: cache, executor"),
    ("ILASTIK_DESKTOP__CACHE__LEASE_S", "ten", "expected a number from 0.5 to 3600"),
    ("ILASTIK_DESKTOP__CACHE__LEASE_S", "nan", "expected a number"),
    ("ILASTIK_DESKTOP__EXECUTOR__LIVENESS", "2.5", "expected a whole number"),
    ("ILASTIK_DESKTOP__EXECUTOR__LIVENESS", "0", "from 1 to 100"),
])
def test_mistakes_are_refused_naming_the_variable(variable, value, says):
    with pytest.raises(UserError, match=says):
        load_config({variable: value})


def test_replace_checks_like_the_environment():
    config = Config().replace(training__debounce_s=0.1)
    assert config.training.debounce_s == 0.1 and dataclasses.replace(config, training=Config().training) == Config()
    with pytest.raises(UserError):
        Config().replace(training__debounce_s=-1)


def test_show_config_prints_the_tree_as_it_applies(tmp_path):
    text = format_config(Config().replace(cache__lease_s=4))
    assert "cache.lease_s = 4   (default 10)" in text and "ILASTIK_DESKTOP__CACHE__LEASE_S" in text
    result = run_cli("--show-config", "--worker-timeout", "30")
    assert result.returncode == 0 and "executor.worker_timeout_s = 30   (default 60)" in result.stdout
    result = run_cli("worker", "--show-config")
    assert result.returncode == 0 and "worker.heartbeat_s = 1" in result.stdout


def test_a_bad_environment_value_is_one_line_and_exit_2():
    env = dict(os.environ, ILASTIK_DESKTOP__CACHE__LEASE_S="forever", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-m", "ilastik_desktop", "--show-config"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "ILASTIK_DESKTOP__CACHE__LEASE_S='forever'" in result.stderr
