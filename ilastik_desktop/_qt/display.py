"""Can a window be shown here? Checked before Qt starts, because Qt aborts with a plugin message and exit 0.

On Linux, Qt's X11 plugin (``libqxcb.so``) needs system libraries that minimal installations lack
(``libxcb-icccm4``, ``libxcb-xinerama0``, ...); the dynamic linker's view of that plugin (``ldd``) names
the missing ones, and the Debian/Ubuntu package names follow from them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from backend.errors import UserError

_PACKAGE_EXCEPTIONS = {"libglib-2.0.so.0": "libglib2.0-0", "libgthread-2.0.so.0": "libglib2.0-0"}


def check_display() -> None:
    """UserError (one line) when Qt could not show a window: no display, or missing X11 libraries."""
    if not sys.platform.startswith("linux"):
        return
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if not platform and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("no display found: use --headless (or set DISPLAY)")
    if platform.startswith("xcb") or (not platform and os.environ.get("DISPLAY")):
        missing = missing_libraries(xcb_plugin())
        if missing:
            raise UserError(f"Qt's X11 plugin cannot start: this system lacks {', '.join(missing)} (on Debian/Ubuntu: "
                            f"sudo apt-get install {' '.join(debian_packages(missing))}); or use --headless")


def xcb_plugin() -> str:
    """Path of the Qt X11 platform plugin of the installed PyQt5."""
    from PyQt5.QtCore import QLibraryInfo

    return os.path.join(QLibraryInfo.location(QLibraryInfo.PluginsPath), "platforms", "libqxcb.so")


def missing_libraries(library: str) -> list[str]:
    """Shared libraries that ``library`` needs and the dynamic linker cannot find (sorted, no duplicates);
    empty when ldd is not available or the library does not exist."""
    ldd = shutil.which("ldd")
    if ldd is None or not os.path.exists(library):
        return []
    try:
        out = subprocess.run([ldd, library], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted(set(re.findall(r"^\s*(\S+) => not found", out, re.MULTILINE)))


def debian_packages(sonames: list[str]) -> list[str]:
    """Debian package names for shared library sonames (libxcb-icccm.so.4 -> libxcb-icccm4)."""
    packages = []
    for soname in sonames:
        name, _, version = soname.partition(".so.")
        package = _PACKAGE_EXCEPTIONS.get(soname) or name.lower() + ("-" if name[-1].isdigit() else "") \
            + version.split(".")[0]
        if package not in packages:
            packages.append(package)
    return packages
