"""The label journal's file: where it lives, its framed records, and reading one back.

A journal is ``<project>.journal`` beside the project (or, where that folder is not writable, a file named
after the project's path in ``<config dir>/journals``). It starts with a magic line, then frames: a
little-endian ``uint32`` payload length, the payload's ``crc32``, the payload. The first payload is the
header (``H`` + JSON: the project's size and modification time when the labels were last saved); then
``B`` records (a lane, a label block's index, its shape and its zlib-compressed uint8 labels, or none:
the block is empty), ``C`` records (the classes' names and colours, as JSON) and ``L`` records (a lane added
since the save: its index, image and axes, as JSON). Records hold whole
blocks, so the last record of a block is its state. Reading stops at the first frame that is short or
whose checksum is wrong: a record torn by a kill during its write is ignored, the records before it kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"ILASTIK-DESKTOP-LABEL-JOURNAL 1\n"
FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
BLOCK = struct.Struct("<I4i4IB")  # lane, block index (t, z, y, x), block shape, 1 if labels follow
MAX_PAYLOAD = 1 << 28  # a length beyond this is damage, not a record
SUFFIX = ".journal"

Index = tuple[int, int, int, int]


def journal_paths(project_path: str, fallback_dir: str) -> list[str]:
    """Where the journal of the project at ``project_path`` may be: beside it first, else in ``fallback_dir``."""
    project_path = os.path.abspath(project_path)
    digest = hashlib.sha256(project_path.encode()).hexdigest()[:16]
    return [project_path + SUFFIX,
            os.path.join(fallback_dir, "journals", f"{os.path.basename(project_path)}-{digest}{SUFFIX}")]


def project_state(project_path: str) -> dict[str, int]:
    """What identifies the saved state of the project file: its size and modification time."""
    status = os.stat(project_path)
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def frame(payload: bytes) -> bytes:
    """``payload`` framed with its length and checksum."""
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def header_payload(project_path: str, state: dict[str, int]) -> bytes:
    """The header record: the project and the saved state the records apply to."""
    return b"H" + json.dumps({"project": os.path.abspath(project_path), **state}).encode()


def block_payload(lane: int, index: Index, shape: tuple[int, ...], labels: np.ndarray | None) -> bytes:
    """A block record: ``labels`` (uint8, shaped ``shape``) of block ``index`` of ``lane``, or None: empty."""
    head = b"B" + BLOCK.pack(lane, *index, *shape, labels is not None)
    return head if labels is None else head + zlib.compress(np.ascontiguousarray(labels, np.uint8).tobytes(), 1)


def classes_payload(names: list[str], colors: list[tuple[int, int, int]]) -> bytes:
    """A classes record: every class's name and colour, class 1 first."""
    return b"C" + json.dumps({"names": list(names), "colors": [list(map(int, c)) for c in colors]}).encode()


def lane_payload(lane: int, image: str, axes: str | None) -> bytes:
    """A lane record: lane ``lane`` was added, showing ``image`` read with ``axes``."""
    return b"L" + json.dumps({"lane": lane, "image": os.path.abspath(image), "axes": axes}).encode()


@dataclass
class JournalContents:
    """What a journal holds: its header, the last state of each block and the last classes."""

    path: str
    header: dict
    blocks: dict[tuple[int, Index], np.ndarray | None] = field(default_factory=dict)  # (lane, index) -> labels
    classes: tuple[list[str], list[tuple[int, int, int]]] | None = None
    lanes: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # added lanes: image and axes
    records: int = 0
    torn_bytes: int = 0  # bytes after the last whole record (a write cut short), ignored

    def belongs_to(self, project_path: str) -> bool:
        """True if the project is still in the saved state these records were painted over."""
        try:
            state = project_state(project_path)
        except OSError:
            return False
        return all(self.header.get(key) == value for key, value in state.items())

    def lane_blocks(self, lane: int) -> dict[Index, np.ndarray | None]:
        """The blocks of ``lane``: index -> labels, or None where the block was emptied."""
        return {index: labels for (of, index), labels in self.blocks.items() if of == lane}

    def payloads(self) -> list[bytes]:
        """The records that give this state again (the classes, then each block once)."""
        records = [lane_payload(lane, *added) for lane, added in sorted(self.lanes.items())]
        records += [] if self.classes is None else [classes_payload(*self.classes)]
        for (lane, index), labels in sorted(self.blocks.items()):
            shape = (0, 0, 0, 0) if labels is None else labels.shape
            records.append(block_payload(lane, index, shape, labels))
        return records


def read_journal(path: str) -> JournalContents | None:
    """The journal at ``path``, or None if there is none, it cannot be read or not even its header is whole."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if not data.startswith(MAGIC):
        return None
    frames = _frames(data, len(MAGIC))
    first = next(frames, None)
    if first is None or first[0][:1] != b"H":
        return None
    try:
        contents = JournalContents(path, json.loads(first[0][1:]))
    except ValueError:
        return None
    end = first[1]
    for payload, end in frames:  # noqa: B007 - the end of the last whole record is wanted after the loop
        if not _apply(contents, payload):
            break
        contents.records += 1
    contents.torn_bytes = len(data) - end
    return contents


def _frames(data: bytes, offset: int) -> Iterator[tuple[bytes, int]]:
    """Each whole frame's payload and the offset after it, until the first short or damaged one."""
    while offset + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, offset)
        start = offset + FRAME.size
        if length > MAX_PAYLOAD or start + length > len(data):
            return
        payload = data[start:start + length]
        if zlib.crc32(payload) != crc:
            return
        offset = start + length
        yield payload, offset


def _apply(contents: JournalContents, payload: bytes) -> bool:
    """Apply one record; False if it cannot be understood (it and what follows are ignored)."""
    kind, body = payload[:1], payload[1:]
    try:
        if kind == b"B":
            lane, *rest = BLOCK.unpack_from(body)
            index, shape, present = tuple(rest[:4]), tuple(rest[4:8]), rest[8]
            labels = None
            if present:
                raw = zlib.decompress(body[BLOCK.size:])
                labels = np.frombuffer(raw, np.uint8).reshape(shape).copy()
            contents.blocks[(lane, index)] = labels
        elif kind == b"C":
            classes = json.loads(body)
            names, colors = [str(n) for n in classes["names"]], [tuple(int(v) for v in c) for c in classes["colors"]]
            if len(names) != len(colors):
                return False
            contents.classes = (names, colors)
        elif kind == b"L":
            added = json.loads(body)
            axes = added["axes"]
            contents.lanes[int(added["lane"])] = (str(added["image"]), None if axes is None else str(axes))
        else:
            return False
    except (ValueError, KeyError, TypeError, struct.error, zlib.error):
        return False
    return True


def find_journal(project_path: str, fallback_dir: str) -> JournalContents | None:
    """The journal of the project at ``project_path`` holding at least one record, beside it or in
    ``fallback_dir``; None if there is none."""
    for path in journal_paths(project_path, fallback_dir):
        contents = read_journal(path)
        if contents is not None and contents.records:
            return contents
    return None
