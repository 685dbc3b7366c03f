"""``ilastik-worker``: serve block computations to an ilastik-desktop gateway over ZeroMQ."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys

import zmq

from backend.config import Config, format_config, load_config
from backend.distributed.executor import default_workers
from backend.distributed.security import CurveIdentity, KeyStore, check_endpoint, check_key, is_local
from backend.distributed.worker import Worker, WorkerOptions, announce
from backend.errors import UserError
from backend.processes import watch_parent
from ilastik_desktop import __version__
from ilastik_desktop.cli.options import attach_key_values
from ilastik_desktop.runtime.settings import check_process_count

EPILOG = """\
Endpoints that are not on this machine are encrypted and authenticated with CurveZMQ. The worker's
key pair is created on first use in the configuration directory; --print-key shows its public key,
which the gateway must be given. Gateways are trusted when their key is passed with --gateway-key
or listed in authorized_gateways in the configuration directory (one key per line).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ilastik-worker``."""
    p = argparse.ArgumentParser(prog="ilastik-worker", description=__doc__.split(":", 1)[1].strip(), epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--connect", metavar="tcp://HOST:PORT", help="connect to a gateway listening there")
    where.add_argument("--listen", metavar="tcp://*:PORT", help="wait for a gateway to connect here")
    where.add_argument("--print-key", action="store_true", help="print this worker's public key and exit")
    where.add_argument("--show-config", action="store_true",
                       help="print every timing and limit as it applies (ILASTIK_DESKTOP__* environment variables) "
                       "and exit")
    p.add_argument("--gateway-key", action="append", default=[], metavar="KEY",
                   help="public key of the gateway (required for remote endpoints; repeatable with --listen)")
    p.add_argument("--processes", type=int, default=default_workers(),
                   help="compute processes (default: all cores; at most worker.max_processes_per_core per core "
                   "and one per worker.process_memory_mb of memory)")
    p.add_argument("--heartbeat", type=float, metavar="SECONDS",
                   help="heartbeat interval in seconds (default: worker.heartbeat_s, 1)")
    p.add_argument("--config-dir", metavar="DIR", help="where keys live (default: the user's config directory)")
    p.add_argument("--verbose", action="store_true", help="log every connection event")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by the app for its local workers
    return p


def worker_options(args: argparse.Namespace, config: Config) -> WorkerOptions:
    """The worker's settings from its command line and the configuration (keys loaded only for CurveZMQ)."""
    if args.processes < 1:
        raise UserError("--processes must be at least 1")
    check_process_count(args.processes, f"--processes {args.processes}", config.worker)
    timing = config.worker
    if args.heartbeat is not None:
        if not 0.01 <= args.heartbeat <= 60:
            raise UserError("--heartbeat must be between 0.01 and 60 seconds")
        timing = dataclasses.replace(timing, heartbeat_s=args.heartbeat)
    endpoint = check_endpoint(args.connect or args.listen, "--connect" if args.connect else "--listen")
    keys = [check_key(k, "gateway key") for k in args.gateway_key]
    store = KeyStore(args.config_dir)
    if args.listen:
        keys += sorted(store.authorized("gateway"))
    if args.connect and len(keys) > 1:
        raise UserError("--connect takes one --gateway-key (the key of the gateway it connects to)")
    if not keys and not is_local(endpoint):
        raise UserError(f"{endpoint} is not on this machine, so the connection is encrypted: give the gateway's "
                        "public key with --gateway-key KEY (ilastik-desktop shows it in Connect workers)")
    identity = None
    if keys:
        public, secret = store.keypair("worker")
        identity = CurveIdentity(public, secret, set(keys) if args.listen else set())
    return WorkerOptions(connect=args.connect, listen=args.listen, processes=args.processes, timing=timing,
                         identity=identity, server_key=keys[0] if args.connect and keys else None)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run until interrupted or terminated; user errors print one line and return 2."""
    args = build_parser().parse_args(attach_key_values(sys.argv[1:] if argv is None else argv, ("--gateway-key",)))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ilastik-worker: %(message)s", stream=sys.stderr)
    announce.setLevel(logging.INFO)  # "listening at ..." once it is up, also without --verbose
    try:
        config = load_config()
        if args.parent_pid:
            watch_parent(args.parent_pid, config.worker.parent_poll_s)
        if args.show_config:
            print(format_config(config))
            return 0
        if args.print_key:
            print(KeyStore(args.config_dir).keypair("worker")[0].decode())
            return 0
        worker = Worker(worker_options(args, config))
    except (UserError, ValueError) as exc:
        print(f"ilastik-worker: error: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        worker.run()
        code = 0
    except zmq.ZMQError as exc:
        print(f"ilastik-worker: error: cannot use {args.connect or args.listen}: {exc}", file=sys.stderr)
        code = 2
    # The compute processes are ended (see LocalExecutor.close). Leave without the interpreter's exit hooks:
    # one joins the process pool's manager thread, which a process killed while writing a result leaves
    # blocked for good.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
