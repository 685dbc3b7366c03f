"""The block cache's contract, on the real cache (a real redis-server) and on the in-memory fake.

The gateway's unit tests run on the fake; these tests keep the fake honest: whatever the gateway relies on
(claims exclude others, leases lapse, completing or failing tells every listener, errors block claims)
behaves the same on both.
"""

from __future__ import annotations

import json
import secrets
import struct
import time
import uuid

import lz4.frame
import numpy as np
import psutil
import pytest
import redis

from backend.cache.block_cache import CACHED, CLAIMED, FAILED, HELD, MAGIC, BlockCache, decode_block, encode_block
from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.cache.signing import signing_key
from backend.config import CacheConfig
from backend.errors import UserError
from tests.fakes import FakeCache, FakeClock
from tests.helpers import wait_for

LEASE_S = 0.5
VALUES = np.arange(3 * 4 * 2, dtype=np.float32).reshape(1, 3, 4, 2)


@pytest.fixture(scope="module")
def redis_server():
    with EmbeddedRedis(RedisSettings(maxmemory_mb=64)) as server:
        yield server


class Real:
    """The real cache and a real clock: leases lapse by waiting."""

    def __init__(self, server):
        self.client = server.client(socket_timeout=5)
        self.cache = BlockCache(self.client, CacheConfig(lease_s=LEASE_S, error_ttl_s=60), secrets.token_bytes(32))

    def lapse(self, key: str) -> None:
        wait_for(lambda: not self.cache.leased(key), timeout=LEASE_S * 10, message=f"the lease of {key} never lapsed")

    def plant(self, name: str, signed_by_another: bool) -> None:
        """Write a well-formed entry (a block or ``key:error``) unsigned, or signed with another key."""
        block, error = name.removesuffix(":error"), name.endswith(":error")
        if signed_by_another:
            other = BlockCache(self.client, self.cache.config, secrets.token_bytes(32))
            other.fail(block, "ValueError: planted") if error else other.complete(block, VALUES)
        else:
            self.client.set(name, b"ValueError: planted" if error else encode_block(VALUES))


class Fake:
    """The fake cache on a clock the test moves."""

    def __init__(self, server):
        self.clock = FakeClock()
        self.cache = FakeCache(self.clock, CacheConfig(lease_s=LEASE_S, error_ttl_s=60))

    def lapse(self, key: str) -> None:
        self.clock.advance(LEASE_S * 1.5)

    def plant(self, name: str, signed_by_another: bool) -> None:
        self.cache.plant(name)


@pytest.fixture(params=[Real, Fake], ids=["redis", "fake"])
def side(request, redis_server):
    return request.param(redis_server)


@pytest.fixture
def key():
    return f"ild:v1:test:{uuid.uuid4().hex}"


def heard(cache):
    """A listener collecting the keys it hears about; returns (list of keys, listener)."""
    keys: list[str] = []
    listener = cache.listen(keys.append, lambda exc: None)
    assert listener.subscribed.wait(5)
    return keys, listener


def test_a_completed_block_is_there_with_its_shape_and_type(side, key):
    cache = side.cache
    assert cache.get(key) is None
    values = np.arange(3 * 4 * 2, dtype=np.float32).reshape(1, 3, 4, 2)
    cache.complete(key, values)
    got = cache.get(key)
    assert got.dtype == values.dtype and np.array_equal(got, values)
    cache.discard(key)
    assert cache.get(key) is None


def test_one_claim_at_a_time_and_none_once_done(side, key):
    cache = side.cache
    assert cache.claim(key, "a") and cache.leased(key)
    assert not cache.claim(key, "b")
    assert cache.renew_all({key: "a"}) == [] and cache.renew_all({key: "b"}) == [key]
    cache.release(key, "b")
    assert cache.leased(key)  # only the owner's token frees it
    cache.release(key, "a")
    assert not cache.leased(key) and cache.claim(key, "b")
    cache.complete(key, np.zeros((1, 1, 1, 1), np.uint8))
    assert not cache.leased(key) and not cache.claim(key, "c")


def test_a_lease_nobody_renews_lapses_and_another_may_claim(side, key):
    cache = side.cache
    assert cache.claim(key, "a")
    side.lapse(key)
    assert not cache.leased(key) and cache.renew_all({key: "a"}) == [key]
    assert cache.claim(key, "b")


def test_completing_failing_and_abandoning_tell_every_listener(side, key):
    cache = side.cache
    first, one = heard(cache)
    second, two = heard(cache)
    try:
        assert cache.claim(key, "a")
        cache.abandon(key, "a")
        assert not cache.leased(key)
        wait_for(lambda: first.count(key) == 1 and second.count(key) == 1, timeout=5)
        assert cache.claim(key, "b")
        cache.complete(key, np.ones((1, 2, 2, 1), np.float32))
        wait_for(lambda: first.count(key) == 2 and second.count(key) == 2, timeout=5)
        failed = key + ":other"
        assert cache.claim(failed, "c")
        cache.fail(failed, "ValueError: bad block")
        wait_for(lambda: failed in first and failed in second, timeout=5)
    finally:
        one.stop()
        two.stop()


def test_a_failed_block_keeps_its_error_and_cannot_be_claimed(side, key):
    cache = side.cache
    assert cache.claim(key, "a")
    cache.fail(key, "ValueError: bad block")
    assert cache.error(key) == "ValueError: bad block"
    assert not cache.leased(key) and not cache.claim(key, "b") and cache.get(key) is None


def test_completing_drops_whoever_holds_the_lease(side, key):
    cache = side.cache
    assert cache.claim(key, "owner")
    cache.complete(key, np.zeros((1, 1, 1, 1), np.float32))  # a late result of an earlier owner
    assert not cache.leased(key) and cache.renew_all({key: "owner"}) == [key]


def test_memory_is_reported(side, key):
    side.cache.complete(key, np.zeros((1, 64, 64, 2), np.float32))
    assert side.cache.memory_mb() >= 0


def test_a_cached_entry_never_expands_beyond_what_its_header_promises():
    """An entry planted in a shared cache whose values decompress to 64 MB under a header of a few bytes is
    refused before it is expanded (decode_block is what the real cache reads every entry with)."""
    values = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    assert np.array_equal(decode_block(encode_block(values)), values)
    header = json.dumps({"dtype": "<f4", "shape": [1, 1, 1, 1], "codec": "lz4"}).encode()
    bomb = MAGIC + struct.pack(">I", len(header)) + header + lz4.frame.compress(bytes(64 << 20))
    assert len(bomb) < 1 << 20
    with pytest.raises(ValueError, match="header says 4"):
        decode_block(bomb)
    huge = json.dumps({"dtype": "<f8", "shape": [1 << 20, 1 << 20], "codec": "lz4"}).encode()
    with pytest.raises(ValueError, match="larger than any block"):
        decode_block(MAGIC + struct.pack(">I", len(huge)) + huge + b"")


@pytest.mark.parametrize("signed_by_another", [False, True], ids=["unsigned", "another key"])
def test_a_planted_block_or_error_is_a_counted_miss_and_can_be_computed_again(side, key, signed_by_another):
    """Whoever can write to a shared cache cannot plant results or errors: right shape and type are not
    enough, only entries signed with this cache's key are read, the others are dropped and counted."""
    cache = side.cache
    side.plant(key, signed_by_another)
    side.plant(key + ":error", signed_by_another)
    assert cache.get(key) is None and cache.error(key) is None and cache.rejected == 2
    assert cache.claim(key, "a")  # nothing left in the way: computed again
    cache.complete(key, VALUES)
    assert np.array_equal(cache.get(key), VALUES) and cache.rejected == 2


def test_a_signed_entry_copied_under_another_key_is_refused(redis_server, key):
    """The signature covers the entry's name: a genuine block or error moved to another block is no use."""
    real = Real(redis_server)
    real.cache.complete(key, VALUES)
    real.cache.fail(key, "ValueError: genuine")
    other = f"ild:v1:test:{uuid.uuid4().hex}"
    real.client.set(other, real.client.get(key))
    real.client.set(other + ":error", real.client.get(key + ":error"))
    assert real.cache.get(other) is None and real.cache.error(other) is None and real.cache.rejected == 2
    assert np.array_equal(real.cache.get(key), VALUES) and real.cache.error(key) == "ValueError: genuine"


def test_a_recorded_error_is_one_printable_line(redis_server, key):
    real = Real(redis_server)
    real.cache.fail(key, "ValueError: two\nlines \x1b[31m" + "x" * 5000)
    message = real.cache.error(key)
    assert message.startswith("ValueError: two lines  [31m") and message.isprintable() and len(message) == 2000


def test_all_leases_are_renewed_in_one_call_that_names_the_lost_ones(side, key):
    cache = side.cache
    keys = [f"{key}:{i}" for i in range(4)]
    assert all(cache.claim(k, "mine") for k in keys)
    cache.release(keys[1], "mine")
    assert cache.claim(keys[1], "theirs")  # another owner holds it now
    cache.release(keys[2], "mine")  # nobody holds it
    cache.complete(keys[3], VALUES)  # delivered (completing drops the lease)
    assert sorted(cache.renew_all({k: "mine" for k in keys})) == sorted(keys[1:])
    assert cache.leased(keys[0]) and cache.renew_all({}) == []


def test_renewing_many_leases_is_one_round_trip(redis_server, key):
    real = Real(redis_server)
    leases = {f"{key}:{i}": "mine" for i in range(50)}
    assert all(real.cache.claim(k, t) for k, t in leases.items()) and real.cache.renew_all(leases) == []

    def scripts_run() -> int:
        return real.client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    before = scripts_run()
    assert real.cache.renew_all(leases) == []
    assert scripts_run() - before == 1


def test_claiming_many_blocks_says_for_each_what_it_found(side, key):
    cache = side.cache
    fresh, done, failed, theirs = (f"{key}:{i}" for i in range(4))
    cache.complete(done, VALUES)
    assert cache.claim(failed, "x")
    cache.fail(failed, "ValueError: bad block")
    assert cache.claim(theirs, "theirs")
    leases = {fresh: "mine", done: "mine", failed: "mine", theirs: "mine"}
    assert cache.claim_many(leases) == [CLAIMED, CACHED, FAILED, HELD]
    assert cache.leased_many([fresh, done, failed, theirs]) == [True, False, False, True]
    assert cache.renew_all({fresh: "mine"}) == [] and cache.claim_many({fresh: "again"}) == [HELD]
    assert cache.claim_many({}) == [] and cache.leased_many([]) == []


def test_many_blocks_are_completed_and_read_together_and_listeners_hear_each(side, key):
    cache = side.cache
    keys = [f"{key}:{i}" for i in range(3)]
    assert cache.claim_many({k: "mine" for k in keys}) == [CLAIMED] * 3
    first, listener = heard(cache)
    try:
        cache.complete_many([(k, VALUES + i) for i, k in enumerate(keys)])
        wait_for(lambda: sorted(first) == keys, timeout=5, message=lambda: f"heard {first}")
    finally:
        listener.stop()
    got = cache.get_many([*keys, key + ":missing"])
    assert all(np.array_equal(g, VALUES + i) for i, g in enumerate(got[:3])) and got[3] is None
    assert cache.leased_many(keys) == [False] * 3 and cache.get_many([]) == []


def test_claiming_completing_and_reading_many_blocks_take_one_call_each(redis_server, key):
    real = Real(redis_server)
    keys = [f"{key}:{i}" for i in range(100)]

    def calls(command: str) -> int:
        return real.client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)

    real.cache.claim_many({key: "warm"})  # the server learns both scripts (EVALSHA, then EVAL once)
    real.cache.complete_many([(key, VALUES)])
    scripts, reads = calls("evalsha"), calls("mget")
    assert real.cache.claim_many({k: "mine" for k in keys}) == [CLAIMED] * 100
    real.cache.complete_many([(k, VALUES) for k in keys])
    got = real.cache.get_many(keys)
    assert calls("evalsha") - scripts == 2 and calls("mget") - reads == 1
    assert all(np.array_equal(g, VALUES) for g in got)


def test_renewing_gives_up_on_a_stalled_server_before_the_leases_lapse(redis_server, key):
    """A stalled server (swapping, SIGSTOP) must not hold the renewal past the leases: it fails in time and the
    next round tries again (redis-py by itself retried each call ten times, Resilient for 20 s)."""
    real = Real(redis_server)
    assert real.cache.claim(key, "mine")
    server = psutil.Process(redis_server.pid)
    server.suspend()
    try:
        started = time.monotonic()
        with pytest.raises(redis.RedisError):
            real.cache.renew_all({key: "mine"})
        assert time.monotonic() - started < LEASE_S * 0.9
    finally:
        server.resume()
    assert real.cache.renew_all({key: "mine"}) == []


def test_the_signing_key_is_made_once_private_and_refused_when_others_can_read_it(tmp_path):
    key = signing_key(str(tmp_path))
    path = tmp_path / "keys" / "cache.key"
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600 and signing_key(str(tmp_path)) == key
    path.chmod(0o644)
    with pytest.raises(UserError, match="chmod 600"):
        signing_key(str(tmp_path))
    path.chmod(0o600)
    path.write_text("not hex\n")
    with pytest.raises(UserError, match="cache.key is unreadable"):
        signing_key(str(tmp_path))
    (tmp_path / "a file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        signing_key(str(tmp_path / "a file"))
