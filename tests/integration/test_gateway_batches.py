"""The gateway's bookkeeping in batches, with a real redis-server and real (instant) worker processes: a
request of many blocks costs a few round trips to the cache server, not several per block, and still
computes every block exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from backend.cache.block_cache import BlockCache
from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.compute.geometry import Roi
from backend.distributed.zmq_executor import ZmqExecutor
from backend.io.sources.arrays import ArraySource
from backend.service.gateway import BATCH, Gateway, GatewayConfig
from bench.gateway_throughput import instant_workers, trivial_pipeline

EDGE = 8
SHAPE = (32, 128, 128)  # 4 x 16 x 16 = 1024 blocks of 8^3
BLOCKS = 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batches")
    with EmbeddedRedis(RedisSettings(maxmemory_mb=256)) as server, \
            ZmqExecutor(bind=f"ipc://{folder}/w") as executor, instant_workers(executor, 2, 2):
        cache = BlockCache(server.client(socket_timeout=30))
        gateway = Gateway(ArraySource(np.zeros(SHAPE, np.uint8), "zyx"), trivial_pipeline(), executor, cache,
                          GatewayConfig(block_shape=(1, EDGE, EDGE, EDGE)))
        yield gateway
        gateway.close()


@pytest.fixture
def round_trips(monkeypatch):
    """Counts every request sent to a Redis server from now on (a pipeline or script is one)."""
    sent = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent[0] += 1
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent


def test_many_blocks_take_few_round_trips_to_the_cache_and_each_is_computed_once(gateway, round_trips):
    whole = Roi.from_shape(gateway.source.spatial_shape)
    submitted = gateway.executor.status().submitted
    values = gateway.request("Probabilities", whole, BATCH).result(timeout=120)
    assert values.shape == (1, *SHAPE, 2)
    status = gateway.status()
    assert status.computed == status.misses == BLOCKS and gateway.executor.status().submitted - submitted == BLOCKS
    assert round_trips[0] < 0.5 * BLOCKS, f"{round_trips[0]} round trips for {BLOCKS} blocks"  # were 4 per block
    assert status.blocks_in_progress == 0 and not gateway.executor.roster.queue
    assert all(not worker.in_flight for worker in gateway.executor.roster.workers.values())

    round_trips[0] = 0
    again = gateway.request("Probabilities", whole, BATCH).result(timeout=120)
    assert np.array_equal(again, values) and gateway.status().hits == BLOCKS
    assert gateway.status().computed == BLOCKS  # nothing computed twice
    assert round_trips[0] < 0.05 * BLOCKS, f"{round_trips[0]} round trips for {BLOCKS} cached blocks"


def test_the_million_block_simulation_shortened_keeps_the_gateway_flat():
    """bench/gateway_simulation.py on 20,000 blocks: each computed once, nothing left in the gateway's table
    and no lease in Redis, its memory flat from the first sample on, the Redis keys bounded by the blocks."""
    from bench.gateway_simulation import simulate

    rows, totals = simulate(20_000, 2_000, 5_000, 64)
    assert totals["computed"] == totals["submitted"] == totals["blocks"] >= 20_000
    assert totals["in_progress_at_end"] == totals["leases_at_end"] == 0
    assert totals["redis_keys_at_end"] <= totals["blocks"]
    assert rows[-1]["rss_mb"] - rows[1]["rss_mb"] < 10, rows
