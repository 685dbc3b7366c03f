"""--slab K/N: gateways that each export one slab into one shared zarr output, sharing the cache's claims.

Two gateways run at once against one real redis-server and the same worker; their merged output equals the
ordinary export, and no block is computed twice (counted by the gateways and by the executor's finished tasks),
including the blocks on the slab border whose halo reaches into the other slab.
"""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest
import zarr

from backend.cache.block_cache import BlockCache
from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.errors import UserError
from backend.io.sources import open_source
from backend.service.export import ExportOptions, run_export
from backend.service.gateway import Gateway, GatewayConfig
from tests.conftest import run_cli
from tests.integration.test_executor import _pipeline, small_project
from tests.integration.workers import ZmqWithWorkers

pytestmark = pytest.mark.timeout(300)
BLOCK = (1, 16, 32, 32)
SHAPE = (32, 96, 128)  # 2 x 3 x 4 = 24 blocks; the slabs cut along z (2 blocks: one per slab)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(project path, raw data spec, pipeline, redis server, executor with a worker of two processes, folder)."""
    folder = tmp_path_factory.mktemp("slabs")
    path, _ = small_project(str(folder), shape=SHAPE)
    pipeline = _pipeline(path)
    server = EmbeddedRedis(RedisSettings(maxmemory_mb=256)).start()
    workers = ZmqWithWorkers(pipeline, workers=1, processes=2)
    try:
        yield path, os.path.join(folder, "raw.h5/data"), pipeline, server, workers.executor, folder
    finally:
        workers.close()
        server.stop()


def _gateway(setup, block=BLOCK) -> Gateway:
    _, raw, pipeline, server, executor, _ = setup
    return Gateway(open_source(raw), pipeline, executor, BlockCache(server.client()), GatewayConfig(block))


def _options(folder, name: str, **more) -> ExportOptions:
    return ExportOptions(fmt="zarr", progress=False, block_shape=BLOCK, filename_pattern=str(folder / name), **more)


def test_two_gateways_export_one_slab_each_into_one_output_and_compute_no_block_twice(setup):
    folder, executor = setup[5], setup[4]
    gateways = [_gateway(setup) for _ in range(3)]
    try:
        ordinary = run_export(gateways[2], "raw", _options(folder, "ordinary"), max_in_flight=8)
        done_before = executor.status().done
        results: dict[int, object] = {}

        def export(number: int) -> None:
            options = _options(folder, "slabs", shared_filesystem=True, slab=(number, 2))
            results[number] = run_export(gateways[number - 1], "raw", options, max_in_flight=64)

        threads = [threading.Thread(target=export, args=(n,)) for n in (1, 2)]
        for thread in threads:  # at once: both race to create the output, one joins the other's
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(results) == [1, 2]
        counts = [results[n].shared for n in (1, 2)]
        assert [c.blocks for c in counts] == [12, 12] and [c.computed for c in counts] == [12, 12]
        assert [c.written_before for c in counts] == [0, 0] and counts[0].waited + counts[1].waited == 0
        assert executor.status().done - done_before == 24  # the workers computed each block once
        assert results[1].path == results[2].path
        merged = zarr.open_group(results[1].path, mode="r")["0"][...]
        assert np.array_equal(merged, zarr.open_group(ordinary.path, mode="r")["0"][...])

        again = run_export(gateways[0], "raw", _options(folder, "slabs", shared_filesystem=True), max_in_flight=64)
        assert again.shared.written_before == 24 and again.shared.computed == 0  # the cache's records: all written
    finally:
        for gateway in gateways:
            gateway.close()


def test_two_gateways_on_the_same_whole_output_share_its_blocks(setup):
    """Without slabs both want every block: each computes what it claims first and waits for the others'
    "written" markers (looked at again every third of a lease), so that no block is computed twice."""
    folder, executor = setup[5], setup[4]
    gateways = [_gateway(setup) for _ in range(3)]
    try:
        ordinary = run_export(gateways[2], "raw", _options(folder, "ordinary_whole"), max_in_flight=8)
        done_before = executor.status().done
        results: dict[int, object] = {}

        def export(index: int) -> None:
            results[index] = run_export(gateways[index], "raw", _options(folder, "whole", shared_filesystem=True),
                                        max_in_flight=4)

        threads = [threading.Thread(target=export, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        counts = [results[i].shared for i in (0, 1)]
        assert sum(c.computed for c in counts) == 24 and executor.status().done - done_before == 24
        assert [c.computed + c.written_before for c in counts] == [24, 24]  # each saw every block written
        merged = zarr.open_group(results[0].path, mode="r")["0"][...]
        assert np.array_equal(merged, zarr.open_group(ordinary.path, mode="r")["0"][...])
    finally:
        for gateway in gateways:
            gateway.close()


def test_a_gateway_with_other_settings_refuses_the_shared_output(setup):
    folder = setup[5]
    first, other = _gateway(setup), _gateway(setup, block=(1, 16, 48, 32))
    try:
        run_export(first, "raw", _options(folder, "refused", shared_filesystem=True, slab=(1, 2)), max_in_flight=64)
        with pytest.raises(UserError, match="other settings.*block_shape"):
            run_export(other, "raw", ExportOptions(fmt="zarr", progress=False, block_shape=(1, 16, 48, 32),
                                                   filename_pattern=str(folder / "refused"), shared_filesystem=True,
                                                   slab=(2, 2)), max_in_flight=64)
    finally:
        first.close()
        other.close()


def test_two_headless_gateways_on_one_cache_server_write_the_two_slabs(setup, tmp_path):
    project, server = setup[0], setup[3]
    common = ["--headless", "--no-progress", "--project", project, "--output_format", "zarr", "--block_shape",
              "16,32,32", "--output_filename_format", "out", "--shared-filesystem", "--redis-url",  # relative: in cwd
              server.url, "--workers", "1"]
    results = [None, None]

    def run(index: int) -> None:
        results[index] = run_cli(*common, "--slab", f"{index + 1}/2", cwd=str(tmp_path), timeout=240)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=250)
    assert all(r is not None and r.returncode == 0 for r in results), [r and r.stderr[-1500:] for r in results]
    written = [re.search(r"(\d+) written by the workers, (\d+) written before, 0 bytes", r.stderr) for r in results]
    assert all(written) and sum(int(m.group(1)) for m in written) == 24, [r.stderr for r in results]
    output = tmp_path / "out.zarr"
    for number, result in enumerate(results, 1):
        assert f"wrote slab {number}/2 of {output} (" in result.stderr, result.stderr
        assert result.stderr.rstrip().endswith("the other slabs' gateways write the rest"), result.stderr
    refused = run_cli(*common, "--slab", "3/2")
    assert refused.returncode == 2 and "--slab '3/2'" in refused.stderr and len(refused.stderr.splitlines()) == 1
