"""The ``ilastik-desktop`` command: headless export (ilastik-compatible options) and the demo project."""

from __future__ import annotations

import argparse
import sys

from backend.compute.pipeline import combined_kind
from backend.distributed.dask_clusters import CLUSTERS, DaskSettings, check_address, job_script
from backend.distributed.security import KeyStore, check_endpoint, check_key, is_local
from backend.errors import UserError
from backend.io.writers import FORMATS
from backend.service.export import EXPORT_SOURCES, ExportOptions
from ilastik_desktop import __version__
from ilastik_desktop.config import ComputeSettings, Settings, parse_block_shape
from ilastik_desktop.display import check_display
from ilastik_desktop.frozen import announce_first_start
from ilastik_desktop.key_args import attach_key_values


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
    p.add_argument("--demo-project", metavar="DIR", help="write a small synthetic 3D demo project into DIR and open it")
    p.add_argument("--screenshot", metavar="OUT.png",
                   help="open the project, wait until the visible predictions are complete, save the window, exit")
    p.add_argument("--window-size", default="1600x1000", metavar="WxH", help="window size (default 1600x1000)")
    add_input_options(p)
    g = p.add_argument_group("export")
    g.add_argument("--export_source", action="append", choices=EXPORT_SOURCES,
                   help="what to export (default Probabilities; Objects: thresholded, labelled objects as uint32); "
                   "repeat it to write several results from one feature computation (each to its own file: put "
                   "{result_type} in --output_filename_format)")
    g.add_argument("--output_format", default="hdf5", choices=list(FORMATS), help="file format (default hdf5)")
    g.add_argument("--output_filename_format", default="{dataset_dir}/{nickname}_{result_type}",
                   metavar="PATTERN", help="output path; placeholders {dataset_dir}, {nickname}, {result_type}; "
                   "the extension is added if missing")
    g.add_argument("--output_internal_path", default="exported_data", help="dataset name inside hdf5 output")
    g.add_argument("--cutout_subregion", metavar='"[(start..),(stop..)]"',
                   help="export only this box, one value per raw data axis, None for the full extent")
    g.add_argument("--threshold", metavar="NAME=VALUE,...",
                   help="thresholding for Objects over the project's settings (or ilastik's defaults): "
                   "method=simple|hysteresis, channel, core_channel, low, high, min_size, max_size, sigmas=z:y:x")
    g.add_argument("--block_shape", metavar="Z,Y,X", help="block size (default 64,128,128 in 3D, 512,512 in 2D)")
    g.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    add_compute_options(p)
    return p


def add_input_options(p: argparse.ArgumentParser) -> None:
    """The options choosing the raw data (shared by the export and ``serve``)."""
    g = p.add_argument_group("input")
    g.add_argument("--raw_data", metavar="FILE[/internal/path]",
                   help="use this image instead of the project's raw data (e.g. when the project was moved)")
    g.add_argument("--input_axes", metavar="AXES", help="axes of the raw data, e.g. zyx or tyxc (from t,z,y,x,c)")
    g.add_argument("--lane", type=int, default=0, help="which input lane of the project (default 0)")
    g.add_argument("--retrain", action="store_true",
                   help="train a new classifier from the project's labels and save it in the project first")


def add_compute_options(p: argparse.ArgumentParser) -> None:
    """The options choosing workers and cache (shared by the export and ``serve``)."""
    g = p.add_argument_group("workers and cache")
    g.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: all cores; 0 = remote workers only)")
    g.add_argument("--connect", "--worker", action="append", default=[], metavar="tcp://HOST:PORT[,KEY]",
                   help="use a remote 'ilastik-worker --listen' there; KEY is its public key (--print-key), "
                   "required unless the endpoint is on this machine; repeatable")
    g.add_argument("--listen", metavar="tcp://*:PORT",
                   help="accept remote workers started with 'ilastik-worker --connect' here (CurveZMQ)")
    g.add_argument("--worker-key", action="append", default=[], metavar="KEY",
                   help="public key of a remote worker allowed to connect (also read from authorized_workers in "
                   "the config directory); repeatable")
    g.add_argument("--redis-url", metavar="URL",
                   help="use this Redis server as the block cache instead of starting an embedded one")
    g.add_argument("--cache-mb", type=int, default=1024, help="memory of the embedded cache in MB (default 1024)")
    g.add_argument("--worker-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="end a headless run with an error when no worker is registered for this long (default 60)")
    g.add_argument("--config-dir", metavar="DIR", help="where keys live (default: the user's config directory)")
    g.add_argument("--print-key", action="store_true", help="print this application's public key and exit")
    add_dask_options(p)


def add_dask_options(p: argparse.ArgumentParser) -> None:
    """The options that compute on a Dask cluster instead of our own workers."""
    g = p.add_argument_group("Dask and batch clusters (pip install 'ilastik-desktop[dask]')")
    g.add_argument("--dask", metavar="tcp://HOST:8786|local[:N]",
                   help="compute on this running Dask scheduler, or on a local Dask cluster of N processes")
    g.add_argument("--cluster", choices=CLUSTERS, help="start Dask workers as batch jobs (dask-jobqueue)")
    g.add_argument("--cluster-jobs", type=int, default=1, metavar="N", help="batch jobs to submit (default 1)")
    g.add_argument("--cluster-cores", type=int, default=1, metavar="C",
                   help="cores per job, each a single-threaded worker process (default 1)")
    g.add_argument("--cluster-memory", default="4GB", metavar="M", help="memory per job (default 4GB)")
    g.add_argument("--cluster-queue", metavar="Q", help="queue or partition")
    g.add_argument("--cluster-walltime", metavar="T", help="wall time per job, e.g. 01:00:00")
    g.add_argument("--cluster-account", metavar="A", help="account to charge")
    g.add_argument("--cluster-dry-run", action="store_true", help="print the job script and exit (submits nothing)")
    g.add_argument("--shared-filesystem", action="store_true",
                   help="Dask workers read the raw data by path (they must see the same file system) instead of "
                   "receiving each block's raw data")


def dask_from_args(args: argparse.Namespace) -> DaskSettings | None:
    """The Dask engine the command line asks for, checked; None for our own workers."""
    if args.dask and args.cluster:
        raise UserError("use either --dask or --cluster, not both")
    if not (args.dask or args.cluster):
        if args.shared_filesystem or args.cluster_dry_run:
            raise UserError("--shared-filesystem and --cluster-dry-run need --dask or --cluster")
        return None
    if args.connect or args.listen or args.workers is not None:
        raise UserError("--dask and --cluster replace --workers, --connect and --listen (use --dask local:N for N "
                        "local processes)")
    if args.dask:
        check_address(args.dask)
    return DaskSettings(address=args.dask, cluster=args.cluster, jobs=args.cluster_jobs, cores=args.cluster_cores,
                        memory=args.cluster_memory, queue=args.cluster_queue, walltime=args.cluster_walltime,
                        account=args.cluster_account, shared_filesystem=args.shared_filesystem)


def compute_from_args(args: argparse.Namespace) -> ComputeSettings:
    """Where blocks are computed and cached, from the command line."""
    remote = tuple(_remote_worker(text) for text in args.connect)
    if args.workers is not None and args.workers < (0 if remote or args.listen else 1):
        raise UserError("--workers must be at least 1 (or 0 together with --connect or --listen)")
    if args.listen:
        check_endpoint(args.listen, "--listen")
    if args.cache_mb < 16:
        raise UserError("--cache-mb must be at least 16")
    if not 1 <= args.worker_timeout <= 86400:
        raise UserError("--worker-timeout must be between 1 and 86400 seconds")
    return ComputeSettings(workers=args.workers, connect=remote, listen=args.listen,
                           worker_keys=tuple(check_key(k, "worker key") for k in args.worker_key),
                           redis_url=args.redis_url, cache_mb=args.cache_mb, config_dir=args.config_dir,
                           worker_timeout_s=args.worker_timeout, dask=dask_from_args(args))


def _window_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
        if width < 200 or height < 200:
            raise ValueError
    except ValueError:
        raise UserError(f"--window-size '{text}': expected WIDTHxHEIGHT, e.g. 1600x1000") from None
    return width, height


def _remote_worker(text: str) -> tuple[str, bytes | None]:
    endpoint, _, key = text.partition(",")
    check_endpoint(endpoint, "--connect")
    if not key and not is_local(endpoint):
        raise UserError(f"--connect '{text}': {endpoint} is not on this machine, so give the worker's public key "
                        "after a comma (ilastik-worker --print-key shows it)")
    return endpoint, check_key(key, "worker key") if key else None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The typed settings for a headless run."""
    project = args.project or args.project_file
    if not project:
        raise UserError("no project given: ilastik-desktop --headless --project PROJECT.ilp")
    export = ExportOptions(
        kind=combined_kind(args.export_source or ["Probabilities"]),
        fmt=args.output_format,
        filename_pattern=args.output_filename_format,
        internal_path=args.output_internal_path,
        block_shape=parse_block_shape(args.block_shape),
        progress=not args.no_progress,
    )
    return Settings(project=project, raw_data=args.raw_data, input_axes=args.input_axes, lane=args.lane,
                    threshold=args.threshold, retrain=args.retrain, export=export, cutout=args.cutout_subregion,
                    compute=compute_from_args(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and return 2."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:  # one program for every role (the bundle has no separate worker executable)
        from ilastik_desktop.worker_cli import main as worker_main

        return worker_main(argv[1:])
    if argv[:1] == ["serve"]:
        return _guarded(_serve, argv[1:])
    args = build_parser().parse_args(attach_key_values(argv, ("--worker-key",)))
    return _guarded(_run, args)


def _serve(argv: list[str]) -> int:
    from ilastik_desktop.serve import serve

    announce_first_start()
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
    if args.print_key:
        print(KeyStore(args.config_dir).keypair("gateway")[0].decode())
        return 0
    if args.cluster_dry_run:
        print(job_script(dask_from_args(args)))
        return 0
    announce_first_start()
    if args.demo_project:
        from ilastik_desktop.demo import write_demo_project

        path = write_demo_project(args.demo_project)
        print(f"demo project written: {path}", file=sys.stderr)
        args.project = args.project or path
    if args.headless:
        from ilastik_desktop.headless import run_headless

        return run_headless(settings_from_args(args))
    check_display()
    from ilastik_desktop.app import run_gui

    return run_gui(args.project or args.project_file, args.raw_data, compute_from_args(args), args.screenshot,
                   _window_size(args.window_size))
