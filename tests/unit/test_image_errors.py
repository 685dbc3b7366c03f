"""A damaged image (the signature of PNG, JPEG or TIFF, but cut off or with a bad chunk) is told apart from a
file of no supported format: one line naming the file, no advice to install imageio plugins; the same
line from the command line."""

import builtins
import struct
import zlib

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from backend.errors import DataError
from backend.io.sources import open_source
from tests.conftest import run_cli
from tests.integration.test_cli_errors import _assert_one_line_error

DAMAGED = "the file is damaged or incomplete"


@pytest.fixture
def png(tmp_path):
    """The bytes of a valid 64 x 64 PNG and where its IDAT chunk starts (its length field)."""
    image = (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "good.png", image)
    data = (tmp_path / "good.png").read_bytes()
    return data, data.index(b"IDAT") - 4


def _refused(path) -> str:
    with pytest.raises(DataError) as error:
        open_source(str(path))
    text = str(error.value)
    assert "\n" not in text and "pip install" not in text and text.startswith(f"{path}: "), text
    return text


def test_a_truncated_png_is_damaged(tmp_path, png):
    data, idat = png
    (tmp_path / "cut.png").write_bytes(data[:idat + 40])
    assert DAMAGED + f" (PNG: cut off at byte {idat + 40}, inside chunk IDAT" in _refused(tmp_path / "cut.png")


def test_a_png_with_a_corrupted_idat_is_damaged(tmp_path, png):
    data, idat = png
    broken = bytearray(data)
    broken[idat + 20] ^= 0xFF  # inside the compressed pixels: the chunk's CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(broken))
    assert _refused(tmp_path / "crc.png").endswith(f"{DAMAGED} (PNG: chunk IDAT at byte {idat} has a wrong checksum)")


def test_a_png_with_broken_pixels_but_right_checksums_is_damaged(tmp_path, png):
    data, idat = png
    length = struct.unpack(">I", data[idat:idat + 4])[0]
    broken = bytearray(data)
    broken[idat + 10] ^= 0xFF  # the zlib stream is broken, and the CRC computed over it again
    end = idat + 8 + length
    broken[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(broken[idat + 4:end])))
    (tmp_path / "zlib.png").write_bytes(bytes(broken))
    assert f"{DAMAGED} (PNG: " in _refused(tmp_path / "zlib.png")


def test_a_truncated_jpeg_is_damaged(tmp_path):
    iio.imwrite(tmp_path / "good.jpg", np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8))
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 3])
    assert f"{DAMAGED} (JPEG: " in _refused(tmp_path / "cut.jpg")


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_truncated_tiff_is_damaged_when_opened_not_when_read(tmp_path, compression):
    tifffile.imwrite(tmp_path / "good.tif", np.random.default_rng(3).integers(0, 255, (4, 64, 64), dtype=np.uint8),
                     compression=compression)
    data = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:len(data) // 2])
    assert f"{DAMAGED} (TIFF: cut off at byte {len(data) // 2}" in _refused(tmp_path / "cut.tif")
    assert open_source(str(tmp_path / "good.tif")).native_shape == (4, 64, 64)


def test_a_file_of_no_image_format_is_not_called_damaged(tmp_path):
    (tmp_path / "notes.png").write_text("hello, not an image")
    assert _refused(tmp_path / "notes.png").endswith("not a PNG, JPEG, BMP or GIF file (it does not start as one)")
    (tmp_path / "notes.tif").write_text("hello, not an image")
    assert _refused(tmp_path / "notes.tif").endswith("not a TIFF file (it does not start as one)")


def test_the_command_line_says_damaged_in_one_line(tmp_path, png, data_dir):
    data, idat = png
    (tmp_path / "cut.png").write_bytes(data[:idat + 40])
    result = run_cli("--headless", "--no-progress", "--project", f"{data_dir}/seed/pc.ilp", "--raw_data",
                     str(tmp_path / "cut.png"), timeout=120)
    _assert_one_line_error(result, f"{tmp_path / 'cut.png'}: {DAMAGED} (PNG: cut off at byte {idat + 40}")


def test_a_file_that_cannot_be_opened_says_why(tmp_path, monkeypatch):
    path = str(tmp_path / "locked.tif")
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):  # as a file without read permission (the tests run as root)
        if str(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    assert _refused(path) == f"{path}: cannot be read (Permission denied)"
