"""Ctrl-C that Python swallows (it landed in a gc callback, as a Dask client's can) still ends a headless export."""

from __future__ import annotations

import signal

import pytest

from backend.service import export
from ilastik_desktop.cli import headless
from ilastik_desktop.cli.main import build_parser
from ilastik_desktop.cli.options import settings_from_args
from tests.integration.test_executor import small_project


@pytest.mark.timeout(120)
def test_an_interrupt_whose_exception_was_swallowed_still_cancels_the_export(tmp_path, monkeypatch):
    path, _ = small_project(str(tmp_path), shape=(8, 32, 32))
    seen = []

    def export_interrupted_in_a_gc_callback(gateway, nickname, options, max_in_flight=8, on_progress=None,
                                            cancel=None):
        try:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # the handler run, its exception ignored
        except KeyboardInterrupt:
            pass
        seen.append(cancel is not None and cancel.is_set())
        raise export.ExportCancelled("the export was cancelled")  # what run_export does once it sees the flag

    monkeypatch.setattr(headless, "run_export", export_interrupted_in_a_gc_callback)
    before = signal.getsignal(signal.SIGINT)
    args = build_parser().parse_args(["--headless", "--no-progress", "--project", path, "--workers", "1",
                                      "--output_format", "npy", "--output_filename_format", str(tmp_path / "out")])
    with pytest.raises(KeyboardInterrupt):  # the command line turns it into exit code 130 and one line
        headless.run_headless(settings_from_args(args))
    assert seen == [True]
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are put back
