"""One server and one headless export for the whole client matrix, the zarr layouts the clients read, and
the extra virtualenvs of the clients that run as subprocesses."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

from tests.clients.venvs import being_made, client_python
from tests.conftest import IN_CI, run_cli
from tests.helpers import wait_for
from tests.integration.webserver import ServeProcess

SOURCES = ("probabilities", "objects")  # float32 per class, uint64 labels: one of each kind of value
SERVED_DTYPES = {"probabilities": np.float32, "objects": np.uint64}  # objects: the export writes uint32 when
# every ID fits, the server announces uint64 before any labelling; the values are the same
EXPORT_SOURCES = {"probabilities": "Probabilities", "objects": "Objects"}
REGION = (slice(20, 44), slice(16, 48), slice(0, 64))  # z, y, x: across every block border of the 32^3 blocks
BLOCK_SHAPE = "32,32,32"
VENV_WAIT_S = 900  # longest wait for a client venv another process is making


@dataclass(frozen=True)
class Layout:
    """One zarr layout the server offers: its path under the server's URL, its zarr format and the name of
    tensorstore's driver for it."""

    name: str
    path: str
    zarr_format: int
    tensorstore_driver: str


LAYOUTS = (Layout("zarr-v2", "/zarr", 2, "zarr"), Layout("zarr-v3", "/zarr3", 3, "zarr3"))


def missing(reason: str) -> None:
    """Skip with ``reason``, or fail under CI=true where every client must run."""
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def matrix_project(data_dir) -> str:
    """The shared 3D project (64^3, two classes) every client reads."""
    return os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")


@pytest.fixture(scope="session")
def matrix_server(matrix_project):
    """``serve`` of the 3D project with 2 local workers and 32^3 blocks, one for every client."""
    with ServeProcess(matrix_project, "--workers", "2", "--block_shape", BLOCK_SHAPE) as server:
        yield server


@pytest.fixture(scope="session")
def exported(matrix_project, tmp_path_factory) -> dict[str, np.ndarray]:
    """The headless export of each source in ``SOURCES``, as (c, z, y, x) like the served arrays."""
    folder = tmp_path_factory.mktemp("client-export")
    arrays = {}
    for source in SOURCES:
        result = run_cli("--headless", "--no-progress", "--project", matrix_project, "--block_shape", BLOCK_SHAPE,
                         "--export_source", EXPORT_SOURCES[source], "--output_format", "npy",
                         "--output_filename_format", str(folder / source))
        assert result.returncode == 0, result.stderr
        arrays[source] = np.moveaxis(np.load(folder / f"{source}.npy"), -1, 0)
    return arrays


def venv_python(name: str) -> str:
    """The interpreter of the client venv ``name`` (see tests/clients/venvs.py); skips or fails if not made."""
    if client_python(name) is None and being_made(name):  # CI makes them while the other tests run
        wait_for(lambda: client_python(name) or not being_made(name), VENV_WAIT_S,
                 message=f"the {name} client venv was still being made after {VENV_WAIT_S} s")
    found = client_python(name)
    if found is None:
        missing(f"the {name} client venv was not made (python3 -m tests.clients.venvs)")
    return found[0]

