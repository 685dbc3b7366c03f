"""The options shared by ``ilastik-desktop``, its ``serve`` command and ``ilastik-worker``, and the settings
they build (checked: a mistake is a :class:`~backend.errors.UserError` naming the option)."""

from __future__ import annotations

import argparse

from backend.compute.pipeline import combined_kind
from backend.config import Config, format_config, load_config
from backend.distributed.dask_clusters import (
    CLUSTERS,
    DaskSettings,
    check_address,
    check_batch,
    is_local_cluster,
    job_script,
    local_worker_count,
)
from backend.distributed.security import KeyStore, check_endpoint, check_key, is_local
from backend.errors import UserError
from backend.service.export import ExportOptions
from backend.service.shared_export import parse_slab
from ilastik_desktop.runtime.settings import ComputeSettings, Settings, check_process_count, parse_block_shape


def add_input_options(p: argparse.ArgumentParser, several: bool = False) -> None:
    """The options choosing the raw data (shared by the export and ``serve``); ``several``: ``--raw_data`` takes
    one or more files and repeats, as ilastik's headless mode does (a batch, one output per file)."""
    g = p.add_argument_group("input")
    if several:
        g.add_argument("--raw_data", action="extend", nargs="+", metavar="FILE[/internal/path]",
                       help="use this image instead of the project's raw data (e.g. when the project was moved); "
                       "with --headless, several files or a quoted glob pattern ('data/*.tif') export each "
                       "file to its own output, named from its {nickname}, skipping files that fail")
    else:
        g.add_argument("--raw_data", metavar="FILE[/internal/path]",
                       help="use this image instead of the project's raw data (e.g. when the project was moved)")
    if several:
        g.add_argument("--prediction_maps", action="extend", nargs="+", metavar="FILE[/internal/path]",
                       help="with --headless --export_source Objects and/or 'Object Features' (measured on "
                       "the --raw_data): threshold these probability maps with the "
                       "project's thresholding settings instead of predicting (no classifier needed); several "
                       "files or a quoted glob pattern give one output per map, named from its {nickname}; "
                       "--raw_data files given too are paired with the maps in order and name the outputs "
                       "(--input_axes RAW,MAPS then gives the axes of each)")
    g.add_argument("--input_axes", metavar="AXES", help="axes of the raw data, e.g. zyx or tyxc (from t,z,y,x,c)")
    g.add_argument("--lane", type=int, default=0, help="which input lane of the project (default 0)")
    g.add_argument("--retrain", action="store_true",
                   help="train a new classifier from the project's labels and save it in the project first")


def add_relabel_option(group: argparse._ArgumentGroup) -> None:
    """``--relabel`` (shared by the export and ``serve``): consecutive object IDs instead of ilastik's."""
    group.add_argument("--relabel", action="store_true",
                       help="number the objects 1..n consecutively (default: ilastik's IDs, which keep the gaps "
                       "of objects the size filter removed)")


def add_compute_options(p: argparse.ArgumentParser) -> None:
    """The options choosing workers and cache (shared by the export and ``serve``)."""
    g = p.add_argument_group("workers and cache")
    g.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: all cores; 0 = remote workers only; at most "
                   "worker.max_processes_per_core per core and one per worker.process_memory_mb of memory)")
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
    g.add_argument("--worker-timeout", type=float, metavar="SECONDS",
                   help="end a headless run with an error when no worker is registered for this long (default: "
                   "executor.worker_timeout_s, 60)")
    g.add_argument("--config-dir", metavar="DIR", help="where keys live (default: the user's config directory)")
    g.add_argument("--print-key", action="store_true", help="print this application's public key and exit")
    g.add_argument("--show-config", action="store_true",
                   help="print every timing and limit as it applies (defaults, ILASTIK_DESKTOP__* environment "
                   "variables and the options above) and exit")
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
    g.add_argument("--cluster-host", metavar="HOST",
                   help="address of this machine that the jobs reach; the scheduler listens there only, with TLS "
                   "(default: the address of this host's name, else of its default route)")
    g.add_argument("--cluster-dashboard", metavar="HOST:PORT",
                   help="serve the scheduler's (unauthenticated) dashboard there (default: no dashboard)")
    g.add_argument("--cluster-dry-run", action="store_true", help="print the job script and exit (submits nothing)")
    g.add_argument("--shared-filesystem", action="store_true",
                   help="with --headless and --output_format zarr: the workers (ours or Dask's) read their raw "
                   "blocks by path and write their results straight into the zarr output, which they must see at "
                   "the same path; the gateway only coordinates (hdf5 with our workers: they send their blocks to "
                   "one writer process on this machine; other formats, with --dask or --cluster only: the workers "
                   "read the raw data by path and send their results back)")
    g.add_argument("--slab", metavar="K/N",
                   help="with --shared-filesystem: export only the K-th of N block-aligned slabs into the shared "
                   "output (N gateways, one per slab, share the workers' cache server through --redis-url)")


def dask_from_args(args: argparse.Namespace, config: Config) -> DaskSettings | None:
    """The Dask engine the command line asks for, checked (process counts and job sizes against ``config``);
    None for our own workers."""
    if args.dask and args.cluster:
        raise UserError("use either --dask or --cluster, not both")
    if not (args.dask or args.cluster):
        if args.shared_filesystem and getattr(args, "output_format", None) not in ("zarr", "hdf5"):
            raise UserError("--shared-filesystem needs --output_format zarr, whose chunks our workers then write "
                            "themselves, or hdf5, which they send to one writer process; npy and tif outputs need "
                            "--dask or --cluster, whose workers then only read the raw data by path")
        if args.shared_filesystem and args.output_format == "hdf5" and (args.connect or args.listen):
            raise UserError("--shared-filesystem with hdf5 sends every block to a writer process that only workers "
                            "on this machine reach; with remote workers (--connect, --listen) use --output_format "
                            "zarr, whose chunks they write themselves")
        if args.cluster_dry_run or args.cluster_host or args.cluster_dashboard:
            raise UserError("--cluster-dry-run, --cluster-host and --cluster-dashboard need --dask or --cluster")
        return None
    if args.connect or args.listen or args.workers is not None:
        raise UserError("--dask and --cluster replace --workers, --connect and --listen (use --dask local:N for N "
                        "local processes)")
    if args.dask:
        check_address(args.dask)
        if is_local_cluster(args.dask) and local_worker_count(args.dask):
            check_process_count(local_worker_count(args.dask), f"--dask {args.dask}", config.worker)
    settings = DaskSettings(address=args.dask, cluster=args.cluster, jobs=args.cluster_jobs,
                            cores=args.cluster_cores, memory=args.cluster_memory, queue=args.cluster_queue,
                            walltime=args.cluster_walltime, account=args.cluster_account,
                            shared_filesystem=args.shared_filesystem, host=args.cluster_host,
                            dashboard=args.cluster_dashboard)
    if args.cluster:
        check_batch(settings, config.worker)
    elif args.cluster_host or args.cluster_dashboard:
        raise UserError("--cluster-host and --cluster-dashboard need --cluster")
    return settings


def compute_from_args(args: argparse.Namespace) -> ComputeSettings:
    """Where blocks are computed and cached, from the command line."""
    config = config_from_args(args)
    remote = tuple(_remote_worker(text) for text in args.connect)
    if args.workers is not None and args.workers < (0 if remote or args.listen else 1):
        raise UserError("--workers must be at least 1 (or 0 together with --connect or --listen)")
    if args.workers:
        check_process_count(args.workers, f"--workers {args.workers}", config.worker)
    if args.listen:
        check_endpoint(args.listen, "--listen")
    if args.cache_mb < 16:
        raise UserError("--cache-mb must be at least 16")
    return ComputeSettings(workers=args.workers, connect=remote, listen=args.listen,
                           worker_keys=tuple(check_key(k, "worker key") for k in args.worker_key),
                           redis_url=args.redis_url, cache_mb=args.cache_mb, config_dir=args.config_dir,
                           dask=dask_from_args(args, config), config=config)


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration: defaults, the environment's overrides, then the command line's (UserError if bad)."""
    config = load_config()
    if args.worker_timeout is not None:
        if not 1 <= args.worker_timeout <= 86400:
            raise UserError("--worker-timeout must be between 1 and 86400 seconds")
        config = config.replace(executor__worker_timeout_s=args.worker_timeout)
    return config


def _remote_worker(text: str) -> tuple[str, bytes | None]:
    endpoint, _, key = text.partition(",")
    check_endpoint(endpoint, "--connect")
    if not key and not is_local(endpoint):
        raise UserError(f"--connect '{text}': {endpoint} is not on this machine, so give the worker's public key "
                        "after a comma (ilastik-worker --print-key shows it)")
    return endpoint, check_key(key, "worker key") if key else None


def project_and_raw_data(args: argparse.Namespace) -> tuple[str | None, tuple[str, ...]]:
    """The project and the ``--raw_data`` files: a project file that ``--raw_data A B`` took as one of its
    files (``--raw_data a.h5 P.ilp``) is the project when none was given otherwise."""
    project = args.project or args.project_file
    raw_data = tuple(args.raw_data or ())
    if not project and raw_data and raw_data[-1].lower().endswith(".ilp"):
        project, raw_data = raw_data[-1], raw_data[:-1]
    return project, raw_data


def window_raw_data(args: argparse.Namespace) -> str | None:
    """The one ``--raw_data`` file the window opens (UserError for several: that is a headless batch)."""
    _, raw_data = project_and_raw_data(args)
    if len(raw_data) > 1:
        raise UserError(f"--raw_data: {len(raw_data)} files given; the window opens one (several are a batch: "
                        "add --headless, or use File > Batch processing in the window)")
    return raw_data[0] if raw_data else None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The typed settings for a headless run."""
    project, raw_data = project_and_raw_data(args)
    if not project:
        raise UserError("no project given: ilastik-desktop --headless --project PROJECT.ilp")
    maps = tuple(getattr(args, "prediction_maps", None) or ())  # their export sources: check_map_sources
    export = ExportOptions(
        kind=combined_kind(args.export_source or ["Objects" if maps else "Probabilities"]),
        fmt=args.output_format,
        filename_pattern=args.output_filename_format,
        internal_path=args.output_internal_path,
        block_shape=parse_block_shape(args.block_shape),
        progress=not args.no_progress,
        shared_filesystem=args.shared_filesystem and (args.output_format == "zarr" or (  # else Dask's raw data by path
            args.output_format == "hdf5" and not (args.dask or args.cluster))),
        slab=shared_slab(args),
    )
    return Settings(project=project, raw_data=raw_data, input_axes=args.input_axes, lane=args.lane,
                    threshold=args.threshold, retrain=args.retrain, export=export, cutout=args.cutout_subregion,
                    relabel=args.relabel, compute=compute_from_args(args), prediction_maps=maps)


def shared_slab(args: argparse.Namespace) -> tuple[int, int] | None:
    """``--slab K/N`` as (K, N), checked; None without it."""
    if args.slab is None:
        return None
    if not args.shared_filesystem or args.output_format != "zarr":
        raise UserError("--slab needs --shared-filesystem and --output_format zarr (the gateways of the slabs "
                        "write into one shared zarr output)")
    return parse_slab(args.slab)


def answer_at_once(args: argparse.Namespace) -> int | None:
    """Print what --show-config, --print-key or --cluster-dry-run ask for and return the exit code; None if
    none of them was given."""
    if args.show_config:
        print(format_config(config_from_args(args)))
    elif args.print_key:
        print(KeyStore(args.config_dir).keypair("gateway")[0].decode())
    elif args.cluster_dry_run:
        config = config_from_args(args)
        settings = dask_from_args(args, config)
        if settings.cluster is None:
            raise UserError("--cluster-dry-run needs --cluster")
        print(job_script(settings, config.worker))
    else:
        return None
    return 0


def attach_key_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``--option VALUE`` as ``--option=VALUE`` for key options: a Z85 key may begin with '-', which
    argparse would otherwise take for an option."""
    joined: list[str] = []
    values = iter(argv)
    for arg in values:
        value = next(values, None) if arg in options else None
        joined.append(arg if value is None else f"{arg}={value}")
    return joined
