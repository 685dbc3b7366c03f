"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from backend.cache.redis_server import EmbeddedRedis, RedisSettings


@pytest.fixture
def redis_server():
    """A real redis-server of our own on a free loopback port (256 MB), stopped after the test."""
    server = EmbeddedRedis(RedisSettings(maxmemory_mb=256)).start()
    yield server
    server.stop()
