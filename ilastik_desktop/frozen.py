"""Running from the self-contained bundle (PyInstaller) as well as from a Python installation.

One executable serves every role in the bundle: ``ilastik-desktop`` (window, ``--headless``) and
``ilastik-desktop worker ...``. There ``sys.executable`` is the bundle's program and ``-m module`` does
not exist, so the app starts its local workers through :func:`worker_command`. The bundle puts its own
libraries first on the library path; programs outside it get the user's path back
(:func:`external_environment`). Compiled kernels are cached in a per-user folder, never in the bundle.
"""

from __future__ import annotations

import os
import subprocess
import sys


def is_frozen() -> bool:
    """True when running from the bundle."""
    return bool(getattr(sys, "frozen", False))


def worker_command() -> list[str]:
    """The command that runs ``ilastik-worker`` of this very installation (bundle or Python)."""
    return [sys.executable, "worker"] if is_frozen() else [sys.executable, "-m", "ilastik_desktop.worker_cli"]


def resource_path(name: str) -> str | None:
    """Path of a file of ``resources/`` (in the bundle, or next to the packages in a source checkout); None when
    this installation has none (a wheel ships code only)."""
    base = getattr(sys, "_MEIPASS", None) or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(base, "resources", name)
    return path if os.path.exists(path) else None


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


def announce_first_start() -> None:
    """In the bundle, before the first computation: say that the kernels are compiled once (it takes seconds).

    numba caches kernels of frozen programs in the user's cache folder (``~/.cache/numba`` on Linux),
    never next to the bundle's files."""
    if not is_frozen():
        return
    from platformdirs import user_cache_dir

    folder = user_cache_dir("numba")
    if not any(name.endswith(".nbi") for _, _, names in os.walk(folder) for name in names):
        print(f"ilastik-desktop: first start: compiling the compute kernels once (cached in {folder})",
              file=sys.stderr)
