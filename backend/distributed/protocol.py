"""The wire format between gateway and workers: a versioned JSON header frame plus raw array frames.

Every message is ``[header, array0, array1, ...]``; the header is a JSON object with ``v`` (protocol
version), ``type`` and ``arrays`` (dtype and shape of each following frame). Nothing is pickled, and
:func:`decode` rejects anything malformed with :class:`ProtocolError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from backend.checks import whole_number

VERSION = 1
TYPES = ("READY", "HEARTBEAT", "PIPELINE", "TASK", "RESULT", "ERROR", "DISCONNECT")
_DTYPES = {"|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f4", "<f8", "|b1", ">u2", ">i2", ">u4", ">i4",
           ">f4", ">f8"}
MAX_HEADER = 1 << 20
MAX_MESSAGE_BYTES = 1 << 30  # set as ZMQ_MAXMSGSIZE on every socket: larger frames never reach us
MAX_DIMENSION = 1 << 31


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
        header = json.loads(bytes(frames[0]), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"header is not JSON: {str(exc)[:200]}") from None
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


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _array(spec, frame: bytes) -> np.ndarray:
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list) or not isinstance(spec.get("dtype"), str):
        raise ProtocolError(f"bad array description {str(spec)[:200]}")
    if spec["dtype"] not in _DTYPES or len(spec["shape"]) > 8:
        raise ProtocolError(f"array type {spec['dtype'][:20]!r} with {len(spec['shape'])} axes not allowed")
    dtype = np.dtype(spec["dtype"])
    try:
        shape = tuple(whole_number(n, 0, MAX_DIMENSION) for n in spec["shape"])
    except ValueError as exc:
        raise ProtocolError(f"bad array shape: {exc}") from None
    size = dtype.itemsize
    for n in shape:  # Python integers: no wrap-around, however large the claimed shape
        size *= n
    if size != len(frame):
        raise ProtocolError(f"array frame of {len(frame)} bytes does not hold {dtype.str} {shape}")
    return np.frombuffer(frame, dtype).reshape(shape)


def task_message(task, deadline_s: float | None = None) -> list[bytes]:
    """A TASK message for a :class:`~backend.compute.pipeline.BlockTask` (which carries its raw data); with
    ``deadline_s``, the seconds after which the gateway gives up on it (the worker then ends its computation)."""
    fields = task_fields(task) if deadline_s is None else {**task_fields(task), "deadline_s": round(deadline_s, 3)}
    raw = [] if task.raw_ref is not None else [task.raw]  # by reference: the worker reads it itself
    return encode("TASK", fields, raw if task.lookup is None else [*raw, task.lookup])


def task_fields(task) -> dict:
    """The JSON header fields of a TASK message (everything but the raw data): with them where the raw data is
    (``raw_ref``) and where the result goes (``output``) when the task names them."""
    fields = {"key": task.key, "kind": task.kind, "start": list(task.start), "image": list(task.image),
              "target": [list(t) for t in task.target], "pipeline": task.pipeline}
    if task.raw_ref is not None:
        fields["raw_ref"] = task.raw_ref
    if task.output is not None:
        fields["output"] = task.output
    return fields


def task_from_message(message: Message):
    """The :class:`~backend.compute.pipeline.BlockTask` carried by a TASK message."""
    from backend.compute.pipeline import BlockTask
    from backend.io.chunk_store import check_target

    f = message.fields
    try:
        start = tuple(whole_number(v, 0, MAX_DIMENSION) for v in f["start"])
        image = tuple(whole_number(v, 1, MAX_DIMENSION) for v in f["image"])
        target = tuple((whole_number(a, 0, MAX_DIMENSION), whole_number(b, 0, MAX_DIMENSION)) for a, b in f["target"])
        reference = _raw_ref(f.get("raw_ref"), start)
        arrays = message.arrays if reference is None else [_placeholder(reference), *message.arrays]
        output = None if f.get("output") is None else check_target(f["output"])
        task = BlockTask(key=str(f["key"]), kind=str(f["kind"]), raw=arrays[0], start=start, image=image,
                         target=target, pipeline=str(f["pipeline"]), raw_ref=reference,
                         lookup=_lookup(arrays[1:], target), output=output)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed TASK: {str(exc)[:200]}") from None
    stop = tuple(a + n for a, n in zip(task.start, task.raw.shape))
    if not (len(task.start) == len(task.image) == len(task.target) == 3 and task.raw.ndim == 4
            and all(a <= lo < hi <= b <= n for (lo, hi), a, b, n in zip(task.target, task.start, stop, task.image))):
        raise ProtocolError("malformed TASK: its target is not inside its raw data and image")
    return task


def _raw_ref(reference, start: tuple[int, ...]) -> dict | None:
    """A TASK's raw data named by file and region (tzyx, one time step, starting at ``start``); None if absent."""
    if reference is None:
        return None
    if not isinstance(reference, dict) or not isinstance(reference.get("spec"), str) \
            or not isinstance(reference.get("axes"), str):
        raise ValueError("raw_ref must name a file and its axes")
    lo = [whole_number(v, 0, MAX_DIMENSION) for v in reference["start"]]
    hi = [whole_number(v, 0, MAX_DIMENSION) for v in reference["stop"]]
    if len(lo) != 4 or len(hi) != 4 or hi[0] != lo[0] + 1 or tuple(lo[1:]) != start or any(a > b for a, b in
                                                                                             zip(lo, hi)):
        raise ValueError("raw_ref's region must be one time step starting at the task's start")
    return {"spec": reference["spec"], "axes": reference["axes"], "start": lo, "stop": hi}


def _placeholder(reference: dict) -> np.ndarray:
    """A raw array of no bytes with the referenced region's extent (the worker reads the voxels itself)."""
    return np.empty([b - a for a, b in zip(reference["start"][1:], reference["stop"][1:])] + [0], np.uint8)


def _lookup(arrays: list[np.ndarray], target) -> np.ndarray | None:
    """A TASK's optional second array: an objects block's lookup table (uint32 or uint64, one entry per local
    label and the background, so at most one more than the target's voxels)."""
    if not arrays:
        return None
    voxels = 1
    for lo, hi in target:
        voxels *= max(hi - lo, 0)
    lookup = arrays[0]
    if len(arrays) > 1 or lookup.dtype.str not in ("<u4", "<u8") or lookup.ndim != 1 \
            or not 1 <= lookup.size <= voxels + 1:
        raise ValueError("a task's second array must be a lookup table: uint32 or uint64, 1 to voxels + 1 entries")
    return lookup


def task_deadline(fields: dict) -> float | None:
    """The deadline a TASK message gives its task, clamped to 0.5 s..1 day; None if absent or bad."""
    value = fields.get("deadline_s")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return min(max(float(value), 0.5), 86400.0)


def peer_interval(fields: dict) -> float:
    """The heartbeat interval a peer announced (READY, HEARTBEAT), clamped to 0..60 s; 0 if absent or bad."""
    value = fields.get("heartbeat_s", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0.0
    return min(max(float(value), 0.0), 60.0)
