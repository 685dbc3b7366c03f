"""Fixtures shared by all tests: the shared data folder and the vigra oracle.

Both exist beside the repository in CI; on a user's clone they may not, and the tests that need them
skip with the reason. Under CI=true a missing one is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))
DATA = os.path.join(SHARED, "data")
ORACLE = os.path.join(REPO, "tests", "oracle", "vigra_oracle.py")
SYSTEM_PYTHON = "/usr/bin/python3"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def private_config_dir(tmp_path_factory):
    """Every test run gets a configuration folder of its own (keys, journals of labels painted on read-only
    projects), never the user's: what one run leaves there cannot change another."""
    folder = str(tmp_path_factory.mktemp("config"))
    before = os.environ.get("ILASTIK_DESKTOP_CONFIG_DIR")
    os.environ["ILASTIK_DESKTOP_CONFIG_DIR"] = folder
    yield folder
    if before is None:
        os.environ.pop("ILASTIK_DESKTOP_CONFIG_DIR", None)
    else:
        os.environ["ILASTIK_DESKTOP_CONFIG_DIR"] = before


@pytest.fixture(scope="session")
def data_dir() -> str:
    """``../shared/data``: real ilastik projects and images."""
    if not os.path.isdir(DATA):
        _missing(f"shared test data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def vigra_python() -> str:
    """Debian's python3 with vigra, for oracle comparisons."""
    ok = os.path.exists(SYSTEM_PYTHON) and subprocess.run(
        [SYSTEM_PYTHON, "-c", "import vigra, h5py"], capture_output=True).returncode == 0
    if not ok:
        _missing("Debian's vigra is not installed (apt-get install -y python3-vigra python3-h5py)")
    return SYSTEM_PYTHON


@pytest.fixture(scope="session")
def vigra_reference(vigra_python) -> list[str]:
    """The command running ``../shared/tools/vigra_reference.py`` with Debian's vigra."""
    tool = os.path.join(SHARED, "tools", "vigra_reference.py")
    if not os.path.exists(tool):
        _missing(f"the vigra reference tool was not found at {tool}")
    return [vigra_python, tool]


def run_oracle(vigra_python: str, *args: str) -> None:
    """Run tests/oracle/vigra_oracle.py with real vigra."""
    subprocess.run([vigra_python, ORACLE, *args], check=True, timeout=600)


def run_cli(*args: str, cwd: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m ilastik_desktop`` and capture its output."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ilastik_desktop", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


@pytest.fixture
def copy_of(tmp_path):
    """Copy a file into the test's folder (shared data is read-only and must not be modified)."""
    def _copy(path: str) -> str:
        target = tmp_path / os.path.basename(path)
        shutil.copyfile(path, target)
        return str(target)
    return _copy


def pytest_configure(config: pytest.Config) -> None:
    """Once per run, before the test processes start (in the controller): the compute kernels compiled and
    cached, as on any machine after its first start, so that no test sees the first start's line or waits."""
    if hasattr(config, "workerinput"):
        return
    subprocess.run([sys.executable, "-c", "from backend.compute.warmup import warm_up; warm_up()"], cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=REPO), timeout=900, check=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the client matrix last: CI makes its clients' virtualenvs while the other tests run."""
    clients = os.path.join("tests", "clients") + os.sep
    items.sort(key=lambda item: clients in str(item.path))
