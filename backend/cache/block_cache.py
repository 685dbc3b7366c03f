"""The Redis block cache: deterministic keys, compressed values, placeholders and completion notices.

Calls ride out short outages and refused writes (see :mod:`backend.cache.resilience`). A missing
block is claimed with a lease (``SET NX PX`` holding the owner's token) that the owner
renews while it computes. Completing a block stores the value, drops the lease and publishes the key
on one channel, atomically (one Lua script). A failed block stores a short-lived error instead. Anyone
waiting hears the notice; if the owner dies, its lease expires and a waiter claims the block again.
Values and errors are signed (see :mod:`backend.cache.signing`): an entry without our signature is a miss.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
import threading
import uuid
from collections.abc import Callable, Mapping

import lz4.frame
import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from backend.backoff import Backoff
from backend.cache.resilience import Resilient
from backend.cache.signing import Signer, signing_key
from backend.checks import whole_number
from backend.compute.geometry import Roi
from backend.config import CacheConfig

log = logging.getLogger(__name__)
PREFIX = "ild:v1"
CHANNEL = f"{PREFIX}:done"
MAGIC = b"ILD1"
MAX_BLOCK_BYTES = 1 << 31  # the protocol's largest message is 1 GiB; no cached block comes near this
MAX_ERROR_CHARS = 2000  # a recorded error is one message, not a log

_COMPLETE = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 1
"""
_COMPLETE_MANY = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1])
  redis.call('DEL', key .. ':lease')
end
redis.call('PUBLISH', ARGV[1], table.concat(KEYS, '\\n'))
return 1
"""
_FAIL = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[2], KEYS[3])
return 1
"""
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_CLAIM_MANY = """
local outcomes = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then outcomes[i] = 1
  elseif redis.call('EXISTS', key .. ':error') == 1 then outcomes[i] = 2
  elseif redis.call('SET', key .. ':lease', ARGV[i + 1], 'NX', 'PX', ARGV[1]) then outcomes[i] = 0
  else outcomes[i] = 3 end
end
return outcomes
"""
_ABANDON = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], KEYS[2])
return 1
"""
_RENEW_ALL = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then redis.call('PEXPIRE', key, ARGV[1]) else lost[#lost + 1] = i end
end
return lost
"""
_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


CLAIMED, CACHED, FAILED, HELD = 0, 1, 2, 3  # what claim_many found for each block


def block_key(data: str, pipeline: str, kind: str, roi: Roi) -> str:
    """The cache key of one block: data fingerprint, pipeline (features + classifier), result kind, ROI."""
    bounds = ",".join(f"{a}-{b}" for a, b in zip(roi.start, roi.stop))
    return f"{PREFIX}:{data}:{pipeline}:{kind.replace(' ', '_')}:{bounds}"


def encode_block(array: np.ndarray) -> bytes:
    """``ILD1`` + header length + JSON header (dtype, shape, codec) + lz4-compressed voxels."""
    array = np.ascontiguousarray(array)
    header = json.dumps({"dtype": array.dtype.str, "shape": list(array.shape), "codec": "lz4"}).encode()
    return MAGIC + struct.pack(">I", len(header)) + header + lz4.frame.compress(array.tobytes())


def decode_block(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode_block`; raises ValueError for anything else (a damaged or foreign entry)."""
    try:
        if blob[:4] != MAGIC:
            raise ValueError("not a cached block")
        (size,) = struct.unpack(">I", blob[4:8])
        header = json.loads(blob[8:8 + size])
        dtype = np.dtype(header["dtype"])
        shape = tuple(whole_number(n, 0, 1 << 31) for n in header["shape"])
        if dtype.kind not in "uif" or len(shape) > 8:
            raise ValueError(f"unexpected array type {dtype} {shape}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if expected > MAX_BLOCK_BYTES:
            raise ValueError(f"a block of {expected} bytes is larger than any block we store")
        # never decompress more than the header promises: an entry planted in a shared cache could expand to GBs
        data = lz4.frame.LZ4FrameDecompressor().decompress(blob[8 + size:], max_length=expected + 1)
        if len(data) != expected:
            raise ValueError(f"{len(data)} bytes of values where the header says {expected}")
        return np.frombuffer(data, dtype).reshape(shape)
    except (struct.error, KeyError, TypeError, RuntimeError, RecursionError) as exc:
        raise ValueError(f"damaged cache entry ({type(exc).__name__}: {str(exc)[:100]})") from None


def without_retries(client: redis.Redis, socket_timeout: float | None = None) -> redis.Redis:
    """A client of the same server whose calls fail at once instead of retrying by themselves (redis-py retries
    a call ten times by default, which made one call last minutes against a stalled server), with its own
    connections and, if given, another socket timeout."""
    pool = client.connection_pool
    options = dict(pool.connection_kwargs, retry=Retry(NoBackoff(), 0))
    if socket_timeout is not None:
        options.update(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **options))


class BlockCache:
    """Blocks, leases and notices in one Redis database; values and errors signed with ``key`` (default: the
    key in the user's configuration folder, see :func:`~backend.cache.signing.signing_key`).

    Calls are retried only by :class:`~backend.cache.resilience.Resilient`, for its window; the renewal of
    leases has a window (and socket timeout) of ``renew_share`` of a lease, so that it ends before they lapse.
    """

    def __init__(self, client: redis.Redis, config: CacheConfig = CacheConfig(), key: bytes | None = None):
        self.client, self.config = without_retries(client), config
        self._r = Resilient(config)
        renew_s = config.lease_s * config.renew_share
        self._renewer = Resilient(dataclasses.replace(config, retry_window_s=renew_s))
        self._renew_client = without_retries(client, renew_s)
        self._signer = Signer(signing_key() if key is None else key)
        self._rejected = 0
        self._count_lock = threading.Lock()
        self.lease_ms = int(config.lease_s * 1000)
        self.error_ms = int(config.error_ttl_s * 1000)
        self._claim = self.client.register_script(_CLAIM)
        self._claim_many = self.client.register_script(_CLAIM_MANY)
        self._complete = self.client.register_script(_COMPLETE)
        self._complete_many = self.client.register_script(_COMPLETE_MANY)
        self.batch_bytes = int(config.batch_mb * 2**20)
        self._fail = self.client.register_script(_FAIL)
        self._renew_all = self._renew_client.register_script(_RENEW_ALL)
        self._release = self.client.register_script(_RELEASE)
        self._abandon = self.client.register_script(_ABANDON)
        self._drop = self.client.register_script(_DROP)

    @property
    def rejected(self) -> int:
        """How many entries were ignored as misses: unsigned, signed with another key, or unreadable."""
        with self._count_lock:
            return self._rejected

    def get(self, key: str) -> np.ndarray | None:
        """The cached block, or None (an unsigned or damaged entry is deleted and counts as missing)."""
        return self._open_block(key, self._r.call(lambda: self.client.get(key)))

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        """The cached blocks of ``keys`` (None where missing, unsigned or damaged), in one round trip."""
        if not keys:
            return []
        blobs = self._r.call(lambda: self.client.mget(keys))
        return [self._open_block(key, blob) for key, blob in zip(keys, blobs)]

    def _open_block(self, key: str, blob: bytes | None) -> np.ndarray | None:
        """The block in a stored entry; None for no entry (an unsigned or damaged one is deleted)."""
        if blob is None:
            return None
        payload = self._signer.open(key, blob)
        if payload is None:
            return self._reject(key, blob, "not signed with this cache's key")
        try:
            return decode_block(payload)
        except ValueError as exc:
            return self._reject(key, blob, str(exc))

    def _reject(self, name: str, blob: bytes, why: str) -> None:
        """Count and delete an entry we cannot use (unless it was replaced meanwhile): it is a miss."""
        with self._count_lock:
            self._rejected += 1
            first = self._rejected == 1
        (log.warning if first else log.debug)(
            "ignoring the cache entry %s (%s)%s", name, why,
            "; runs that share a cache must share keys/cache.key of their configuration folder" if first else "")
        self._r.write(lambda: self._drop(keys=[name], args=[blob]), None)

    def discard(self, key: str) -> None:
        """Delete a cached block that turned out to be wrong (it is computed again)."""
        self._r.write(lambda: self.client.delete(key), None)

    def error(self, key: str) -> str | None:
        """The error a failed block left behind, if any (an unsigned or unreadable one is deleted: None)."""
        name = key + ":error"
        blob = self._r.call(lambda: self.client.get(name))
        if blob is None:
            return None
        payload = self._signer.open(name, blob)
        if payload is None:
            return self._reject(name, blob, "not signed with this cache's key")
        try:
            message = payload.decode()
        except UnicodeDecodeError:
            message = ""
        if not message or len(message) > MAX_ERROR_CHARS or not message.isprintable():
            return self._reject(name, blob, "not an error message")
        return message

    def claim(self, key: str, token: str) -> bool:
        """Take the lease of a missing block; False if someone else holds it or it is already done (or failed).

        One atomic step: a block finished between our look-up and our claim is never claimed again. A server
        that refuses writes lets us compute the block ourselves (True).
        """
        keys = [key, key + ":lease", key + ":error"]
        return bool(self._r.write(lambda: self._claim(keys=keys, args=[token, self.lease_ms]), True))

    def claim_many(self, leases: Mapping[str, str]) -> list[int]:
        """:meth:`claim` for every block ``leases`` maps to its token, in one atomic call: for each, in order,
        CLAIMED (ours now), CACHED (its value is there), FAILED (its error is there) or HELD (someone else's
        lease). A server that refuses writes lets us compute them all ourselves (CLAIMED)."""
        keys = list(leases)
        if not keys:
            return []
        args = [self.lease_ms, *leases.values()]
        outcomes = self._r.write(lambda: self._claim_many(keys=keys, args=args), [CLAIMED] * len(keys))
        return [int(n) for n in outcomes]

    def renew_all(self, leases: Mapping[str, str]) -> list[str]:
        """Extend the leases of the blocks ``leases`` maps to our tokens, in one call; the blocks whose lease was
        lost (lapsed, or held by another token now). Raises a RedisError after ``renew_share`` of a lease."""
        keys = list(leases)
        if not keys:
            return []
        args = [self.lease_ms, *leases.values()]
        lost = self._renewer.write(lambda: self._renew_all(keys=[k + ":lease" for k in keys], args=args), [])
        return [keys[int(i) - 1] for i in lost]

    def release(self, key: str, token: str, retry: bool = True) -> None:
        """Give up our lease without a result (e.g. the block was cancelled)."""
        self._r.write(lambda: self._release(keys=[key + ":lease"], args=[token]), None, retry)

    def abandon(self, key: str, token: str) -> None:
        """Give up our lease after a transient failure and tell everyone, so that a waiter claims it again."""
        self._r.write(lambda: self._abandon(keys=[key + ":lease", key], args=[token, CHANNEL]), None)

    def leased(self, key: str) -> bool:
        """True while someone holds the block's lease."""
        return bool(self._r.call(lambda: self.client.exists(key + ":lease")))

    def leased_many(self, keys: list[str]) -> list[bool]:
        """:meth:`leased` for each of ``keys``, in one round trip."""
        if not keys:
            return []

        def ask() -> list:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key + ":lease")
            return pipe.execute()

        return [bool(n) for n in self._r.call(ask)]

    def complete(self, key: str, array: np.ndarray) -> None:
        """Store a block, drop its lease and tell everyone (skipped, with one warning, if writes are refused)."""
        blob = self._signer.sign(key, encode_block(array))
        self._r.write(lambda: self._complete(keys=[key, key + ":lease"], args=[blob, CHANNEL]), None)

    def complete_many(self, blocks: list[tuple[str, np.ndarray]]) -> None:
        """:meth:`complete` for many (key, values) pairs: a few MB of them (``cache.batch_mb``) per call, each
        call telling everyone of its blocks in one notice."""
        signed = [(key, self._signer.sign(key, encode_block(array))) for key, array in blocks]
        while signed:
            count, size = 1, len(signed[0][1])
            while count < len(signed) and size + len(signed[count][1]) <= self.batch_bytes:
                size, count = size + len(signed[count][1]), count + 1
            batch, signed = signed[:count], signed[count:]
            keys, blobs = [key for key, _ in batch], [blob for _, blob in batch]
            self._r.write(lambda keys=keys, blobs=blobs: self._complete_many(keys=keys, args=[CHANNEL, *blobs]), None)

    def fail(self, key: str, message: str) -> None:
        """Record that a block failed (one line of ``message``), drop its lease and tell everyone."""
        keys = [key + ":error", key + ":lease", key]
        line = "".join(c if c.isprintable() else " " for c in message)[:MAX_ERROR_CHARS] or "failed"
        blob = self._signer.sign(keys[0], line.encode())
        self._r.write(lambda: self._fail(keys=keys, args=[blob, CHANNEL, self.error_ms]), None)

    def memory_mb(self) -> float | None:
        """Memory the cache server uses, in MB; None if it does not answer at once (never retried)."""
        try:
            return round(self._r.call(lambda: self.client.info("memory"), retry=False)["used_memory"] / 2**20, 1)
        except redis.RedisError:
            return None

    def stop_retrying(self) -> None:
        """From now on fail at once when the server does not answer (the owner is shutting down)."""
        self._r.closing.set()

    def listen(self, on_notice: Callable[[str], None], on_lost: Callable[[Exception], None],
               on_back: Callable[[], None] | None = None) -> NoticeListener:
        """Start calling ``on_notice(key)`` for every completed or failed block; ``on_lost`` when the
        subscription breaks, ``on_back`` when it is back (notices sent meanwhile are lost: look again)."""
        return NoticeListener(self.client, on_notice, on_lost, on_back, self.config)


class NoticeListener:
    """A thread subscribed to the completion channel; reconnects after the server comes back.

    It also listens on a channel of its own, on which :meth:`stop` wakes it at once (instead of the end of
    its half-second wait for a message)."""

    def __init__(self, client: redis.Redis, on_notice, on_lost, on_back=None, config: CacheConfig = CacheConfig()):
        self.client, self.on_notice, self.on_lost, self.on_back = client, on_notice, on_lost, on_back
        self.config = config
        self._wake_channel = f"{CHANNEL}:stop:{uuid.uuid4().hex}"
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-notices", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff, lost = Backoff(self.config.retry_first_delay_s, self.config.retry_max_delay_s), False
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CHANNEL, self._wake_channel)
                self.subscribed.set()
                backoff.reset()
                if lost and self.on_back is not None:
                    lost = False
                    self._guarded(self.on_back)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message["type"] == "message" and message["channel"] == CHANNEL.encode():
                        self._notify(message["data"])
            except redis.RedisError as exc:
                self.subscribed.clear()
                lost = True
                self._guarded(self.on_lost, exc)
                self._stop.wait(backoff.next())
            finally:
                try:
                    pubsub.close()
                except redis.RedisError:
                    pass

    def _notify(self, data: bytes) -> None:
        for key in data.decode(errors="replace").split("\n"):  # one notice may name many blocks
            self._guarded(self.on_notice, key)

    @staticmethod
    def _guarded(callback, *args) -> None:
        try:
            callback(*args)
        except Exception:  # a failing receiver must not end the notices of every other block
            log.exception("cache notice receiver failed (going on)")

    def stop(self) -> None:
        """Unsubscribe and join the thread."""
        self._stop.set()
        try:
            self.client.publish(self._wake_channel, b"")
        except redis.RedisError:  # the server is gone: the thread's wait ends by itself within half a second
            pass
        self._thread.join(timeout=5)
