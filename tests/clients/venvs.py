"""The extra virtualenvs of the client matrix: clients that cannot share the test venv (zarr-python 2 cannot
live beside zarr-python 3; napari pins its own set), made once per machine and reused while their
requirements stay the same.

``python3 -m tests.clients.venvs`` makes the missing ones (CI runs it before pytest); the tests find them with
``client_python(name)``. Standard library only: CI runs it before the test venv exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

CLIENTS: dict[str, tuple[str, ...]] = {
    "zarr2": ("zarr<3", "fsspec", "aiohttp", "requests", "numcodecs"),
    "napari": ("napari", "napari-ome-zarr"),
}
REPORTED = {"zarr2": ("zarr", "numcodecs", "fsspec"), "napari": ("napari", "napari-ome-zarr", "zarr")}
READY = "ready.json"
MAKING = ".making"  # beside a venv being made: the pid of the process making it


def cache_root() -> str:
    """The folder holding the client venvs: ``$ILASTIK_DESKTOP_CLIENT_VENVS`` or a folder in the user's cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("ILASTIK_DESKTOP_CLIENT_VENVS") or os.path.join(cache, "ilastik-desktop", "client-venvs")


def venv_dir(name: str) -> str:
    """Where the venv of client ``name`` lives; its name carries a digest of its requirements."""
    digest = hashlib.sha256("\n".join(CLIENTS[name]).encode()).hexdigest()[:12]
    return os.path.join(cache_root(), f"{name}-{digest}")


def client_python(name: str) -> tuple[str, dict[str, str]] | None:
    """The interpreter of client ``name``'s venv and the versions installed in it, or None if it was not made."""
    folder = venv_dir(name)
    try:
        with open(os.path.join(folder, READY)) as file:
            versions = json.load(file)
    except (OSError, ValueError):
        return None
    python = os.path.join(folder, "bin", "python")
    return (python, versions) if os.path.exists(python) else None  # gone with the interpreter it was made from


def being_made(name: str) -> bool:
    """True while another process is making client ``name``'s venv (CI makes them while the tests start)."""
    try:
        with open(venv_dir(name) + MAKING) as file:
            os.kill(int(file.read().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def make(name: str) -> float:
    """Make client ``name``'s venv unless it is there already; the seconds it took (0 when it was there)."""
    if client_python(name) is not None:
        return 0.0
    started = time.monotonic()
    folder = venv_dir(name)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + MAKING, "w") as file:
        file.write(str(os.getpid()))
    try:
        _make(name, folder)
    finally:
        os.remove(folder + MAKING)
    return time.monotonic() - started


def _make(name: str, folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)  # a venv left half made by an interrupted run
    subprocess.run([sys.executable, "-m", "venv", folder], check=True)
    python = os.path.join(folder, "bin", "python")
    subprocess.run([python, "-m", "pip", "install", "-q", *CLIENTS[name]], check=True)
    query = ("import importlib.metadata as m, json, sys; "
             "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))")
    versions = subprocess.run([python, "-c", query, *REPORTED[name]], check=True, capture_output=True, text=True)
    with open(os.path.join(folder, READY), "w") as file:
        file.write(versions.stdout)


def main() -> None:
    """Make every missing client venv and say what each cost."""
    for name in CLIENTS:
        seconds = make(name)
        how = f"made in {seconds:.0f} s" if seconds else "reused"
        print(f"client venv {name}: {venv_dir(name)} ({how})", flush=True)


if __name__ == "__main__":
    main()
