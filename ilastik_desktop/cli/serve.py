"""``ilastik-desktop serve``: a project's raw data and results over HTTP (OME-Zarr, ROI endpoints, a viewer page).

Usage: ``ilastik-desktop serve PROJECT.ilp [--host 127.0.0.1] [--port 8000] [compute options]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading

from backend.compute.threshold import unsupported_method
from backend.errors import UserError
from backend.io.dataset import open_lane
from backend.io.project import Project, open_project
from backend.web.catalog import Lane
from backend.web.server import WebServer, WebSettings
from ilastik_desktop import __version__
from ilastik_desktop.cli.options import (
    add_compute_options,
    add_input_options,
    add_relabel_option,
    answer_at_once,
    attach_key_values,
    compute_from_args,
)
from ilastik_desktop.runtime.frozen import announce_first_start
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.serving import describe_project, open_served_lane, viewer_url
from ilastik_desktop.runtime.settings import parse_block_shape


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ilastik-desktop serve``."""
    p = argparse.ArgumentParser(prog="ilastik-desktop serve", description=__doc__.split("\n\n")[0])
    p.add_argument("project", metavar="PROJECT.ilp", help="the ilastik project to serve")
    g = p.add_argument_group("web service")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only, answering to loopback names "
                   "only)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    g.add_argument("--token", help="require this token (8 or more ASCII letters, digits, '.', '_', '~', '-'; "
                   "default: a new one, printed in the URL)")
    g.add_argument("--no-token", action="store_true",
                   help="require no token (loopback only: any program and web page on this machine can then read)")
    g.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="let browser viewers from this origin read (e.g. https://neuroglancer-demo.appspot.com, "
                   "or '*'); repeatable")
    g.add_argument("--max-roi-mb", type=float, default=1024.0, help="largest region the ROI API answers (MB)")
    g.add_argument("--chunk-memory-mb", type=float, default=256.0,
                   help="encoded zarr chunks kept in memory for repeated reads (MB, default 256; 0 = none)")
    g.add_argument("--threshold", metavar="NAME=VALUE,...", help="thresholding of 'objects' (as for the export)")
    add_relabel_option(g)
    g.add_argument("--block_shape", metavar="Z,Y,X",
                   help="block (and zarr chunk) size (default 64,128,128 in 3D, 512,512 in 2D)")
    add_input_options(p)
    add_compute_options(p)
    return p


def open_lanes(project: Project, services: Services, args: argparse.Namespace) -> list[Lane]:
    """Every lane of the project on its own gateway; a lane whose data does not open is listed with the reason."""
    classifier = None
    if args.retrain:
        from backend.io.training import retrain_project

        source = open_lane(project, args.lane, args.raw_data, args.input_axes)
        classifier = retrain_project(project, source, args.lane, progress=True)
    lanes = [open_served_lane(project, index, services, args.raw_data if index == args.lane else None,
                              args.input_axes, args.threshold or "", parse_block_shape(args.block_shape), classifier,
                              relabel=args.relabel)
             for index in range(len(project.lanes))]
    if not any(lane.gateway for lane in lanes):
        raise UserError(lanes[0].error if lanes else f"{project.path}: the project has no input lanes")
    reason = unsupported_method(next(lane for lane in lanes if lane.gateway).threshold)
    if reason is not None:  # the other sources are served; 'objects' answers with this line
        print(f"{project.path}: {reason} (--threshold method=simple or method=hysteresis); 'objects' is not served",
              file=sys.stderr)
    return lanes


def web_settings(args: argparse.Namespace) -> WebSettings:
    """The web service's settings, checked."""
    settings = WebSettings(host=args.host, port=args.port, token=args.token, no_token=args.no_token,
                           cors=tuple(args.cors), max_roi_mb=args.max_roi_mb, chunk_memory_mb=args.chunk_memory_mb)
    settings.check()
    return settings


def announce(server: WebServer) -> None:
    """Print where the service is and how to use it (the links carry the token)."""
    url, link = server.url, server.link
    print(f"serving at {link}/ (docs: {link}/doc)", file=sys.stderr)
    if server.token is not None:
        print(f"token: {server.token} (in the links above, or send 'Authorization: Bearer TOKEN' or ?token=TOKEN "
              f"to {url})", file=sys.stderr)
    else:
        print("no token (--no-token): any program or web page on this machine can read", file=sys.stderr)
    print(f"viewer: {viewer_url(server)} (any browser; ?lane=N for another lane)", file=sys.stderr)
    print(f"zarr3: {link}/zarr3/0/probabilities (OME-Zarr 0.5, zarr v3)", file=sys.stderr)
    print(f"zarr: {link}/zarr/0/probabilities", file=sys.stderr)


def serve(argv: list[str]) -> int:
    """Run the web service until interrupted; returns the exit code."""
    args = build_parser().parse_args(attach_key_values(argv, ("--worker-key",)))
    answered = answer_at_once(args)
    if answered is not None:
        return answered
    settings = web_settings(args)
    compute = dataclasses.replace(compute_from_args(args), fail_without_workers=True)
    project = open_project(args.project)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with Services(compute) as services:
        if services.compiling_kernels:
            announce_first_start()
        if services.listen_address:
            print(services.accepting_line(), file=sys.stderr)
        services.wait_for_workers()
        lanes = open_lanes(project, services, args)
        server = WebServer(lanes, describe_project(project), dataclasses.replace(settings, limits=services.config.web),
                           __version__)
        try:
            server.start()
            announce(server)
            stop.wait()
            print("stopping the web service", file=sys.stderr)
        finally:
            server.stop()
            for lane in lanes:
                if lane.gateway is not None:
                    lane.gateway.close()
    return 0
