"""Telling a damaged image file from one of an unsupported format: a file that starts with the signature of
PNG, JPEG, TIFF, BMP or GIF but cannot be read is damaged or incomplete (truncated by a copy, a bad chunk);
one that starts otherwise is no image of these formats. Both are one line naming the file."""

from __future__ import annotations

import os
import struct
import zlib

from backend.errors import DataError

SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
              b"II+\x00": "BigTIFF", b"MM\x00+": "BigTIFF", b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_DETAIL = 160  # characters of a reader's own message kept in the line


def image_format(path: str) -> str | None:
    """The image format ``path``'s first bytes announce (``'PNG'``, ``'TIFF'``, ...), None if none of them;
    OSError if the file cannot be read."""
    with open(path, "rb") as file:
        head = file.read(8)
    return next((name for signature, name in SIGNATURES.items() if head.startswith(signature)), None)


def png_damage(path: str) -> str | None:
    """Where a PNG file's chunks are broken (cut off, or a chunk's checksum wrong), None if they are whole."""
    with open(path, "rb") as file:
        data = file.read()
    at = len(PNG_SIGNATURE)
    while at < len(data):
        if at + 8 > len(data):
            return f"cut off at byte {len(data)}, inside a chunk header"
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        end = at + 12 + length
        name = kind.decode("latin-1")
        if end > len(data):
            return f"cut off at byte {len(data)}, inside chunk {name} that would end at byte {end}"
        if zlib.crc32(data[at + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            return f"chunk {name} at byte {at} has a wrong checksum"
        if kind == b"IEND":
            return None
        at = end
    return f"cut off at byte {len(data)}, before the end chunk"


def unreadable(path: str, error: BaseException, expected: str) -> DataError:
    """The error for ``path`` that a reader of ``expected`` formats failed on with ``error``: damaged if the
    file announces an image format, else not an image of the ``expected`` formats; the system's reason if the
    file cannot be read at all (no permission, an I/O error, a folder)."""
    try:
        found = image_format(path)
    except OSError as exc:
        return DataError(f"{path}: cannot be read ({exc.strerror or exc})")
    if found is None:
        if os.path.exists(path) and os.path.getsize(path) == 0:
            return DataError(f"{path}: the file is empty")
        return DataError(f"{path}: not a {expected} file (it does not start as one)")
    detail = (png_damage(path) if found == "PNG" else None) or first_line(error)
    return DataError(f"{path}: the file is damaged or incomplete ({found}: {detail})")


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name if it has none), cut to :data:`MAX_DETAIL`."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= MAX_DETAIL else line[:MAX_DETAIL] + "..."
