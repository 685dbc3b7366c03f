"""Running from the self-contained bundle (PyInstaller) as well as from a Python installation.

One executable serves every role in the bundle: ``ilastik-desktop`` (window, ``--headless``) and
``ilastik-desktop worker ...``. There ``sys.executable`` is the bundle's program and ``-m module`` does
not exist, so the app starts its local workers through :func:`worker_command`. The bundle puts its own
libraries first on the library path; programs outside it get the user's path back
(:func:`external_environment`). Compiled kernels come with the bundle (``backend/compute/kernels``); any
compiled on the user's machine are cached in a per-user folder, never in the bundle.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys


def is_frozen() -> bool:
    """True when running from the bundle."""
    return bool(getattr(sys, "frozen", False))


def worker_command() -> list[str]:
    """The command that runs ``ilastik-worker`` of this very installation (bundle or Python)."""
    return [sys.executable, "worker"] if is_frozen() else [sys.executable, "-m", "ilastik_desktop.cli.worker"]


def resource_path(name: str) -> str | None:
    """Path of a file of ``resources/``: in the bundle, next to the packages in a source checkout, or where a
    wheel installed it (``<prefix>/share/ilastik-desktop``); None when there is none."""
    for folder in _resource_folders():
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    return None


def _resource_folders() -> list[str]:
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return [os.path.join(bundle, "resources")]
    checkout = os.path.join(checkout_folder(), "resources")
    import site  # the user base of ``pip install --user``

    prefixes = [sys.prefix, site.getuserbase()]
    return [checkout] + [os.path.join(prefix, "share", "ilastik-desktop") for prefix in prefixes]


def checkout_folder() -> str:
    """The folder holding our packages: the repository's root in a source checkout."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # ilastik_desktop/
    return os.path.dirname(package)


def external_environment() -> dict[str, str]:
    """The environment for programs outside the bundle: the library path as it was before the bundle started."""
    env = dict(os.environ)
    if is_frozen():
        for name in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
            original = env.pop(name + "_ORIG", None)  # saved by PyInstaller's bootloader
            if original is None:
                env.pop(name, None)
            else:
                env[name] = original
    return env


def open_externally(target: str) -> None:
    """Open a URL or a file with the desktop's default program (browser, file manager), without waiting."""
    opener = {"darwin": ["open"], "win32": ["cmd", "/c", "start", ""]}.get(sys.platform, ["xdg-open"])
    subprocess.Popen([*opener, target], env=external_environment(), stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@functools.cache  # once per run (the demo written, then opened)
def announce_first_start() -> None:
    """Before the first computation: say that the compute kernels are compiled once (it takes seconds) when
    no compiled kernel fits this install yet: none shipped for this CPU and numba, none cached before."""
    from backend.compute.kernel_cache import kernels_compiled, writable_folder

    if not kernels_compiled():
        print(f"ilastik-desktop: first start: compiling the compute kernels once (cached in {writable_folder()})",
              file=sys.stderr)
