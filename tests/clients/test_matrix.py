"""The client matrix: real zarr clients, each with its version in the test id (or its major version for
those in venvs of their own, which may still be being made at collection time), read a region of the served
probabilities (float32) and objects (uint64) across block borders, equal bit for bit to the headless export.

In this process: zarr-python 3 (fsspec HTTP), ome-zarr-py's reader, tensorstore (http kvstore), dask. As
subprocesses in venvs of their own (tests/clients/venvs.py): zarr-python 2 and napari with napari-ome-zarr.
Each layout in ``LAYOUTS`` (conftest) is read by every client that knows its zarr format.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.clients.conftest import LAYOUTS, REGION, SERVED_DTYPES, SOURCES, Layout, missing, venv_python
from tests.integration.webserver import ServeProcess

pytestmark = pytest.mark.timeout(300)
HERE = os.path.dirname(os.path.abspath(__file__))


def _installed(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _region_argument() -> str:
    return ",".join(f"{bounds.start}:{bounds.stop}" for bounds in REGION)


def _url(server: ServeProcess, layout: Layout) -> str:
    """The URL of lane 0 in ``layout`` (with the server's token in its path)."""
    return server.url + layout.path + "/0"


def read_zarr_python(server: ServeProcess, layout: Layout, tmp_path: Path) -> dict[str, np.ndarray]:
    """zarr-python 3 in this process, over fsspec's HTTP store."""
    import zarr

    url = _url(server, layout)
    return {source: zarr.open_array(f"{url}/{source}/0", mode="r", zarr_format=layout.zarr_format)[(..., *REGION)]
            for source in SOURCES}


def read_ome_zarr(server: ServeProcess, layout: Layout, tmp_path: Path) -> dict[str, np.ndarray]:
    """ome-zarr-py's reader: the image it finds at each source's group, its full-resolution level."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    values = {}
    url = _url(server, layout)
    for source in SOURCES:
        image = list(Reader(parse_url(f"{url}/{source}"))())[0]
        assert any(isinstance(spec, Multiscales) for spec in image.specs), f"{source}: no image found"
        values[source] = image.data[0][(..., *REGION)].compute()
    return values


def read_tensorstore(server: ServeProcess, layout: Layout, tmp_path: Path) -> dict[str, np.ndarray]:
    """tensorstore with the layout's zarr driver over its http kvstore."""
    import tensorstore

    values = {}
    url = _url(server, layout)
    for source in SOURCES:
        spec = {"driver": layout.tensorstore_driver, "kvstore": {"driver": "http", "base_url": f"{url}/{source}/0/"}}
        array = tensorstore.open(spec, read=True).result()
        values[source] = array[(..., *REGION)].read().result()
    return values


def read_dask(server: ServeProcess, layout: Layout, tmp_path: Path) -> dict[str, np.ndarray]:
    """``dask.array.from_zarr`` on each source's full-resolution array."""
    import dask.array

    url = _url(server, layout)
    return {source: dask.array.from_zarr(f"{url}/{source}/0")[(..., *REGION)].compute() for source in SOURCES}


def _read_in_venv(venv: str, script: str, url: str, tmp_path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Run ``script`` in client venv ``venv`` and load what it saved; also what it printed."""
    result = subprocess.run([venv_python(venv), os.path.join(HERE, script), url, str(tmp_path), _region_argument(),
                             *SOURCES], capture_output=True, text=True, timeout=240,
                            env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert result.returncode == 0, result.stderr[-3000:]
    said = json.loads(result.stdout.strip().splitlines()[-1])
    return {source: np.load(tmp_path / f"{source}.npy") for source in SOURCES}, said


def read_zarr_python_2(server: ServeProcess, layout: Layout, tmp_path: Path) -> dict[str, np.ndarray]:
    """zarr-python 2 in its own venv (tests/clients/read_zarr2.py)."""
    values, said = _read_in_venv("zarr2", "read_zarr2.py", _url(server, layout), tmp_path)
    assert said["zarr"].startswith("2."), said
    return values


def read_napari(server: ServeProcess, layout: Layout, tmp_path: Path) -> dict[str, np.ndarray]:
    """napari with napari-ome-zarr in its own venv (tests/clients/read_napari.py); its probabilities
    layers must be named and coloured as the project's classes."""
    values, said = _read_in_venv("napari", "read_napari.py", _url(server, layout), tmp_path)
    classes = json.loads(server.get("/api/v1/info")[1])["classes"]
    layers = said["layers"]["probabilities"]
    assert [layer["name"].rsplit(": ", 1)[-1] for layer in layers] == [c["name"] for c in classes], said
    assert [layer["colour"] for layer in layers] == [c["color"] for c in classes], said  # one layer per class
    return values


@dataclass(frozen=True)
class Client:
    """A zarr client: its name and version, the zarr formats it reads, how it reads ``SOURCES``' region from a
    server in a layout, and the client venv it runs in (None: this process)."""

    name: str
    version: str
    formats: tuple[int, ...]
    read: Callable[[ServeProcess, Layout, Path], dict[str, np.ndarray]]
    venv: str | None = None


CLIENTS = (
    Client("zarr-python", _installed("zarr"), (2, 3), read_zarr_python),
    Client("ome-zarr-py", _installed("ome-zarr"), (2, 3), read_ome_zarr),
    Client("tensorstore", _installed("tensorstore"), (2, 3), read_tensorstore),
    Client("dask", _installed("dask"), (2, 3), read_dask),
    Client("zarr-python", "2", (2,), read_zarr_python_2, venv="zarr2"),
    Client("napari-ome-zarr", "with-napari", (2, 3), read_napari, venv="napari"),
)
MATRIX = [pytest.param(client, layout, id=f"{client.name}-{client.version}-{layout.name}")
          for client in CLIENTS for layout in LAYOUTS if layout.zarr_format in client.formats]


@pytest.mark.parametrize("client, layout", MATRIX)
def test_client_reads_values_equal_to_the_export(request, client, layout, tmp_path):
    if client.venv is not None:
        venv_python(client.venv)  # skips (fails under CI) before the server starts when the venv was not made
    elif client.version == "absent":
        missing(f"{client.name} is not installed")
    server, exported = request.getfixturevalue("matrix_server"), request.getfixturevalue("exported")
    values = client.read(server, layout, tmp_path)
    for source in SOURCES:
        expected = exported[source][(..., *REGION)]
        assert values[source].dtype == SERVED_DTYPES[source], (source, values[source].dtype)
        assert values[source].shape == expected.shape, (source, values[source].shape)
        assert np.array_equal(values[source], expected), f"{source}: values differ from the export"
