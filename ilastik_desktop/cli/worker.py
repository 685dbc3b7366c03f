"""``ilastik-worker``: serve block computations to an ilastik-desktop gateway over ZeroMQ."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import zmq

from backend.distributed.executor import default_workers
from backend.distributed.security import CurveIdentity, KeyStore, check_endpoint, check_key, is_local
from backend.distributed.worker import Worker, WorkerConfig
from backend.errors import UserError
from backend.processes import watch_parent
from ilastik_desktop import __version__
from ilastik_desktop.cli.options import attach_key_values

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
    p.add_argument("--gateway-key", action="append", default=[], metavar="KEY",
                   help="public key of the gateway (required for remote endpoints; repeatable with --listen)")
    p.add_argument("--processes", type=int, default=default_workers(),
                   help="compute processes (default: all cores)")
    p.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds (default 1)")
    p.add_argument("--config-dir", metavar="DIR", help="where keys live (default: the user's config directory)")
    p.add_argument("--verbose", action="store_true", help="log every connection event")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by the app for its local workers
    return p


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    """The worker's settings from its command line (keys loaded only when CurveZMQ is used)."""
    if args.processes < 1:
        raise UserError("--processes must be at least 1")
    if args.heartbeat <= 0:
        raise UserError("--heartbeat must be positive")
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
    return WorkerConfig(connect=args.connect, listen=args.listen, processes=args.processes,
                        heartbeat_s=args.heartbeat, identity=identity,
                        server_key=keys[0] if args.connect and keys else None)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run until interrupted or terminated; user errors print one line and return 2."""
    args = build_parser().parse_args(attach_key_values(sys.argv[1:] if argv is None else argv, ("--gateway-key",)))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ilastik-worker: %(message)s", stream=sys.stderr)
    if args.parent_pid:
        watch_parent(args.parent_pid)
    try:
        if args.print_key:
            print(KeyStore(args.config_dir).keypair("worker")[0].decode())
            return 0
        worker = Worker(worker_config(args))
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
