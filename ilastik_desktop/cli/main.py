"""The ``ilastik-desktop`` command: headless export (ilastik-compatible options) and the demo project."""

from __future__ import annotations

import argparse
import sys

from backend.errors import UserError
from backend.service.export import EXPORT_SOURCES, OUTPUT_FORMATS
from ilastik_desktop import __version__
from ilastik_desktop._qt.display import check_display
from ilastik_desktop.cli.options import (
    add_compute_options,
    add_input_options,
    add_relabel_option,
    answer_at_once,
    attach_key_values,
    compute_from_args,
    project_and_raw_data,
    settings_from_args,
    window_raw_data,
)
from ilastik_desktop.runtime.frozen import announce_first_start


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ilastik-desktop``."""
    p = argparse.ArgumentParser(
        prog="ilastik-desktop",
        description="Open ilastik pixel-classification projects and compute their predictions block by block.",
        epilog="'ilastik-desktop worker [OPTIONS]' runs a compute worker, the same as 'ilastik-worker [OPTIONS]'; "
               "'ilastik-desktop serve PROJECT.ilp [OPTIONS]' serves it over HTTP (see serve --help).",
    )
    p.add_argument("project_file", nargs="?", metavar="PROJECT.ilp", help="the ilastik project to open")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--project", help="the ilastik project (same as the positional argument)")
    p.add_argument("--headless", action="store_true", help="export without a window, like ilastik --headless")
    p.add_argument("--demo-project", metavar="DIR", help="write a small synthetic 3D demo project into DIR and open "
                   "it (one written there before is opened as it is)")
    p.add_argument("--screenshot", metavar="OUT.png",
                   help="open the project, wait until the visible predictions are complete, save the window, exit")
    p.add_argument("--window-size", default="1600x1000", metavar="WxH", help="window size (default 1600x1000)")
    add_input_options(p, several=True)
    g = p.add_argument_group("export")
    g.add_argument("--export_source", action="append", choices=EXPORT_SOURCES,
                   help="what to export (default Probabilities; Objects: thresholded, labelled objects as uint32; "
                   "Object Features: a table of the objects' features, as ilastik's Export Table writes it); "
                   "repeat it to write several results from one feature computation (each to its own file: put "
                   "{result_type} in --output_filename_format)")
    g.add_argument("--output_format", default="hdf5", choices=list(OUTPUT_FORMATS),
                   help="file format (default hdf5; csv for the Object Features table)")
    g.add_argument("--output_filename_format", default="{dataset_dir}/{nickname}_{result_type}",
                   metavar="PATTERN", help="output path; placeholders {dataset_dir}, {nickname}, {result_type}; "
                   "the extension is added if missing")
    g.add_argument("--output_internal_path", default="exported_data", help="dataset name inside hdf5 output")
    g.add_argument("--cutout_subregion", metavar='"[(start..),(stop..)]"',
                   help="export only this box, one value per raw data axis, None for the full extent")
    g.add_argument("--threshold", metavar="NAME=VALUE,...",
                   help="thresholding for Objects over the project's settings (or ilastik's defaults on its "
                   "first class that is not background): method=simple|hysteresis, channel and core_channel (a "
                   "number or a class name), low, high (0 to 1), min_size, max_size, sigmas=z:y:x or y:x")
    add_relabel_option(g)
    g.add_argument("--block_shape", metavar="Z,Y,X", help="block size (default 64,128,128 in 3D, 512,512 in 2D)")
    g.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    add_compute_options(p)
    return p


def _window_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
        if width < 200 or height < 200:
            raise ValueError
    except ValueError:
        raise UserError(f"--window-size '{text}': expected WIDTHxHEIGHT, e.g. 1600x1000") from None
    return width, height


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and return 2."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:  # one program for every role (the bundle has no separate worker executable)
        from ilastik_desktop.cli.worker import main as worker_main

        return worker_main(argv[1:])
    if argv[:1] == ["serve"]:
        return _guarded(_serve, argv[1:])
    args = build_parser().parse_args(attach_key_values(argv, ("--worker-key",)))
    return _guarded(_run, args)


def _serve(argv: list[str]) -> int:
    from ilastik_desktop.cli.serve import serve

    return serve(argv)


def _guarded(function, *args) -> int:
    """Run ``function``; user errors print one line and return 2, Ctrl-C returns 130."""
    try:
        return function(*args)
    except UserError as exc:
        print(f"ilastik-desktop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ilastik-desktop: interrupted; unfinished output was removed", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    """The window, the headless export, the demo project or the key, as the options say."""
    answered = answer_at_once(args)
    if answered is not None:
        return answered
    if args.demo_project:
        from ilastik_desktop.runtime.demo import open_or_write_demo

        announce_first_start()  # writing the demo trains its forest
        path, written = open_or_write_demo(args.demo_project)
        print(f"demo project written: {path}" if written else
              f"demo project: {path} (the one written before; delete it for a new one)", file=sys.stderr)
        args.project = args.project or path
    if args.headless:
        from ilastik_desktop.cli.headless import run_headless

        return run_headless(settings_from_args(args))
    if args.slab or (args.shared_filesystem and not (args.dask or args.cluster)):  # (Dask's: raw data by path)
        raise UserError("--slab, and --shared-filesystem with our own workers, are for exports: add --headless")
    check_display()
    from ilastik_desktop._qt.app import run_gui

    return run_gui(project_and_raw_data(args)[0], window_raw_data(args), compute_from_args(args), args.screenshot,
                   _window_size(args.window_size))
