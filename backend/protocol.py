"""The wire format between gateway and workers: a versioned JSON header frame plus raw array frames.

Every message is ``[header, array0, array1, ...]``; the header is a JSON object with ``v`` (protocol
version), ``type`` and ``arrays`` (dtype and shape of each following frame). Nothing is pickled, and
:func:`decode` rejects anything malformed with :class:`ProtocolError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

VERSION = 1
TYPES = ("READY", "HEARTBEAT", "PIPELINE", "TASK", "RESULT", "ERROR", "DISCONNECT")
_DTYPES = {"|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f4", "<f8", "|b1", ">u2", ">i2", ">u4", ">i4",
           ">f4", ">f8"}
MAX_HEADER = 1 << 20


class ProtocolError(ValueError):
    """A message that does not follow the protocol (it is dropped and logged, never fatal)."""


class VersionMismatch(ProtocolError):
    """A well-formed message of another protocol version."""

    def __init__(self, version):
        super().__init__(f"protocol version {version!r}, expected {VERSION}")
        self.version = version


@dataclass
class Message:
    """A decoded message: its type, its header fields and its arrays."""

    type: str
    fields: dict = field(default_factory=dict)
    arrays: list[np.ndarray] = field(default_factory=list)


def encode(kind: str, fields: dict | None = None, arrays: list[np.ndarray] | None = None) -> list[bytes]:
    """Frames for one message."""
    if kind not in TYPES:
        raise ValueError(f"unknown message type {kind}")
    arrays = [np.ascontiguousarray(a) for a in arrays or []]
    header = dict(fields or {}, v=VERSION, type=kind,
                  arrays=[{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays])
    return [json.dumps(header).encode(), *(memoryview(a).cast("B") if a.size else b"" for a in arrays)]


def decode(frames: list[bytes]) -> Message:
    """Parse frames into a :class:`Message`, or raise :class:`ProtocolError`."""
    if not frames or len(frames[0]) > MAX_HEADER:
        raise ProtocolError("missing or oversized header")
    try:
        header = json.loads(bytes(frames[0]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not an object")
    if header.get("v") != VERSION:
        raise VersionMismatch(header.get("v"))
    kind = header.get("type")
    if kind not in TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) != len(frames) - 1:
        raise ProtocolError("array descriptions do not match the frames")
    arrays = [_array(spec, bytes(frame)) for spec, frame in zip(specs, frames[1:])]
    fields = {k: v for k, v in header.items() if k not in ("v", "type", "arrays")}
    return Message(kind, fields, arrays)


def _array(spec, frame: bytes) -> np.ndarray:
    try:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(n) for n in spec["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad array description {spec!r}: {exc}") from None
    if dtype.str not in _DTYPES or any(n < 0 for n in shape):
        raise ProtocolError(f"array type {dtype.str} {shape} not allowed")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(frame):
        raise ProtocolError(f"array frame of {len(frame)} bytes does not hold {dtype.str} {shape}")
    return np.frombuffer(frame, dtype).reshape(shape)


def task_message(task) -> list[bytes]:
    """A TASK message for a :class:`~backend.pipeline.BlockTask`."""
    fields = {"key": task.key, "kind": task.kind, "start": list(task.start), "image": list(task.image),
              "target": [list(t) for t in task.target], "pipeline": task.pipeline}
    return encode("TASK", fields, [task.raw])


def task_from_message(message: Message):
    """The :class:`~backend.pipeline.BlockTask` carried by a TASK message."""
    from backend.pipeline import BlockTask

    f = message.fields
    try:
        return BlockTask(key=str(f["key"]), kind=str(f["kind"]), raw=message.arrays[0],
                         start=tuple(int(v) for v in f["start"]), image=tuple(int(v) for v in f["image"]),
                         target=tuple((int(a), int(b)) for a, b in f["target"]), pipeline=str(f["pipeline"]))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed TASK: {exc}") from None


def peer_interval(fields: dict) -> float:
    """The heartbeat interval a peer announced (READY, HEARTBEAT), clamped to 0..60 s; 0 if absent or bad."""
    try:
        value = float(fields.get("heartbeat_s", 0.0))
    except (TypeError, ValueError):
        return 0.0
    return min(max(value, 0.0), 60.0) if value == value else 0.0
