"""The demo project is written once: running the first command again keeps what the user saved into it."""

import os

from ilastik_desktop.runtime.demo import open_or_write_demo


def test_a_demo_project_written_before_is_opened_as_it_is(tmp_path):
    """--demo-project wrote a new demo.ilp over the old one on every run, losing the labels saved into it."""
    (tmp_path / "demo.ilp").write_bytes(b"labels the user saved")
    (tmp_path / "demo_raw.h5").write_bytes(b"raw")
    path, written = open_or_write_demo(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "demo.ilp") and not written
    assert (tmp_path / "demo.ilp").read_bytes() == b"labels the user saved"
