"""``ilastik-worker``: serve block computations to an ilastik-desktop gateway over ZeroMQ."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from backend.executor import default_workers
from backend.worker import Worker, WorkerConfig


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ilastik-worker``."""
    p = argparse.ArgumentParser(prog="ilastik-worker", description=__doc__.split(":", 1)[1].strip())
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--connect", metavar="tcp://HOST:PORT", help="connect to a gateway listening there")
    where.add_argument("--listen", metavar="tcp://*:PORT", help="wait for a gateway to connect here")
    p.add_argument("--processes", type=int, default=default_workers(),
                   help="compute processes (default: all cores)")
    p.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds (default 1)")
    p.add_argument("--verbose", action="store_true", help="log every connection event")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: run until interrupted or terminated."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ilastik-worker: %(message)s", stream=sys.stderr)
    if args.processes < 1:
        print("ilastik-worker: error: --processes must be at least 1", file=sys.stderr)
        return 2
    config = WorkerConfig(connect=args.connect, listen=args.listen, processes=args.processes,
                          heartbeat_s=args.heartbeat)
    try:
        worker = Worker(config)
    except Exception as exc:  # zmq raises ZMQError for bad or busy endpoints
        print(f"ilastik-worker: error: cannot use {args.connect or args.listen}: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        worker.run()
    except Exception as exc:
        if "Address" in str(exc) or "endpoint" in str(exc).lower():
            print(f"ilastik-worker: error: cannot use {args.connect or args.listen}: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
