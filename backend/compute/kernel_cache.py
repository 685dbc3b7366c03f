"""The compute kernels' on-disk cache: compiled kernels shipped with the install, found after any copy.

numba compiles each kernel on its first call and caches the machine code. Out of the box a new install
compiles all of them, in every compute process at once (13 s of a first export). The :func:`kernel` decorator
gives each kernel a cache that

- is stamped with the content of all kernel source files together (:data:`KERNEL_SOURCES`): a copy that changes
  modification times keeps the cache valid, any change of any kernel's source (kernels call one another and
  are linked together) makes every entry stale;
- looks first in a writable folder for code compiled for this very CPU (``__pycache__`` next to the sources,
  else the user's cache folder; ``NUMBA_CACHE_DIR`` if set), then in the read-only folder shipped with the
  install (:data:`SHIPPED_FOLDER`) for code compiled for a portable x86-64 level this CPU supports
  (:data:`SHIPPED_TARGETS`), written at build time by ``python -m backend.compute.kernel_cache``;
- never writes into a read-only install: without a writable folder it only loads.

An entry is used only when numba's version, the Python version, the function's bytecode, the kernel sources
and the target all match; anything else compiles as numba always does. The files are numba's own cache
format, read only from the install itself and the folders above, as numba's default cache does.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

import numba
from numba.core import config as numba_config
from numba.core.caching import CompileResultCacheImpl, FunctionCache, IndexDataCacheFile, _CacheLocator
from numba.core.dispatcher import Dispatcher

log = logging.getLogger(__name__)
PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__))
KERNEL_SOURCES = ("filters.py", "features.py", "eigen.py", "forest.py", "forest_bits.py")  # every module with a @kernel
SHIPPED_FOLDER = os.path.join(PACKAGE_FOLDER, "kernels")
MANIFEST = "manifest.json"
# Portable targets shipped, best first, with the LLVM features a CPU needs to run each one's code.
SHIPPED_TARGETS = {
    "x86-64-v3": ("avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave", "popcnt", "sse4.2",
                  "ssse3", "cx16", "sahf"),
    "generic": (),
}


@functools.cache
def source_stamp(folder: str = PACKAGE_FOLDER) -> str:
    """The SHA-256 of the kernel sources in ``folder``, together: what every cache entry is valid for."""
    digest = hashlib.sha256()
    for name in KERNEL_SOURCES:
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


@functools.cache
def writable_folder() -> str | None:
    """Where kernels compiled here are cached: ``NUMBA_CACHE_DIR`` if set, else ``__pycache__`` next to the
    sources when writable (not in the bundle), else the user's cache folder; None if nothing is writable."""
    if numba_config.CACHE_DIR:
        candidates = [os.path.join(numba_config.CACHE_DIR, "ilastik-desktop-" + _folder_key())]
    else:
        from platformdirs import user_cache_dir

        in_tree = [] if getattr(sys, "frozen", False) else [os.path.join(PACKAGE_FOLDER, "__pycache__")]
        candidates = in_tree + [os.path.join(user_cache_dir("ilastik-desktop"), "kernels", _folder_key())]
    for folder in candidates:
        try:
            os.makedirs(folder, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
            return folder
        except OSError:
            continue
    return None


def _folder_key() -> str:
    """Separates the caches of installs in different folders (and of different Pythons)."""
    tag = f"{PACKAGE_FOLDER}\0{sys.version_info[0]}.{sys.version_info[1]}"
    return hashlib.sha1(tag.encode()).hexdigest()[:16]


def _host_features() -> set[str]:
    import llvmlite.binding as llvm

    return {name[1:] for name in llvm.get_host_cpu_features().flatten().split(",") if name.startswith("+")}


@functools.cache
def shipped_targets(folder: str = SHIPPED_FOLDER) -> tuple[str, ...]:
    """The shipped targets this process can use, best first: the manifest matches numba, Python, the machine
    and the kernel sources, and this CPU has the target's features. Empty when nothing shipped fits, or when
    numba is told to compile for a given CPU (``NUMBA_CPU_NAME``)."""
    if numba_config.CPU_NAME is not None:
        return ()
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return ()
    import llvmlite.binding as llvm

    expected = {"numba": numba.__version__, "python": list(sys.version_info[:2]),
                "triple": llvm.get_process_triple(), "stamp": source_stamp()}
    if any(manifest.get(key) != value for key, value in expected.items()):
        return ()
    host = _host_features()
    return tuple(t for t in manifest.get("targets", ()) if t in SHIPPED_TARGETS and set(SHIPPED_TARGETS[t]) <= host)


def kernels_compiled() -> bool:
    """True when the kernels need no compiling here: shipped ones fit, or ones compiled before are cached."""
    if shipped_targets():
        return True
    folder = writable_folder()
    return folder is not None and any(name.endswith(".nbi") for name in os.listdir(folder))


class _KernelLocator(_CacheLocator):
    """The writable folder of :func:`writable_folder`, stamped with :func:`source_stamp`."""

    def __init__(self, py_func) -> None:
        self._lineno = py_func.__code__.co_firstlineno
        self._folder = writable_folder()

    def ensure_cache_path(self) -> None:
        if self._folder is None:
            raise OSError("no writable folder for compiled kernels")
        super().ensure_cache_path()

    def get_cache_path(self) -> str:
        return self._folder or SHIPPED_FOLDER

    def get_source_stamp(self) -> str:
        return source_stamp()

    def get_disambiguator(self) -> str:
        return str(self._lineno)


class _KernelCacheImpl(CompileResultCacheImpl):
    """numba's compile-result cache with :class:`_KernelLocator` whatever numba's locator settings say."""

    def __init__(self, py_func) -> None:  # numba's __init__ would pick a locator of its own
        self._lineno = py_func.__code__.co_firstlineno
        self._locator = _KernelLocator(py_func)
        module = os.path.splitext(os.path.basename(inspect.getfile(py_func)))[0]
        self._filename_base = self.get_filename_base(f"{module}.{py_func.__qualname__}", getattr(sys, "abiflags", ""))


class KernelCache(FunctionCache):
    """A kernel's cache: code compiled for this CPU first, then the shipped portable code (module docstring)."""

    _impl_class = _KernelCacheImpl

    def __init__(self, py_func) -> None:
        super().__init__(py_func)
        self._shipped = IndexDataCacheFile(SHIPPED_FOLDER, self._impl.filename_base, source_stamp())
        self.loaded_from = ""  # where the last overload was loaded from: "host" (compiled on this machine) or
        # a shipped target; "" when it was compiled

    def _load_overload(self, sig, target_context):
        found = super()._load_overload(sig, target_context)
        if found is not None or not self._enabled:
            self.loaded_from = "host" if found is not None else ""
            return found
        codegen = target_context.codegen()
        sig_key, magic, code_hashes = self._index_key(sig, codegen)
        for target in shipped_targets():
            data = self._shipped.load((sig_key, (magic[0], target, ""), code_hashes))
            if data is not None:
                self.loaded_from = target
                return self._impl.rebuild(target_context, data)
        return None

    def save_overload(self, sig, data) -> None:
        """Save code compiled here; a read-only install without a user cache folder only loads."""
        if writable_folder() is None:
            return
        try:
            super().save_overload(sig, data)
        except OSError as exc:
            log.warning("compiled kernel not cached: %s", exc)


def kernel(**options) -> Callable[[Callable], Dispatcher]:
    """``numba.njit(**options)`` whose on-disk cache is :class:`KernelCache` (``cache`` is implied)."""
    options.pop("cache", None)

    def decorate(func: Callable) -> Dispatcher:
        dispatcher = numba.njit(**options)(func)
        dispatcher._cache = KernelCache(dispatcher.py_func)
        return dispatcher

    return decorate


WARM_UP = "from backend.compute.warmup import warm_up; warm_up()"  # calls every kernel with the export's types


def build_shipped(folder: str = SHIPPED_FOLDER, targets: tuple[str, ...] = tuple(SHIPPED_TARGETS),
                  script: str = WARM_UP) -> None:
    """Compile the kernels that ``script`` calls for each portable target into ``folder``, with its manifest
    (at build time, in the environment whose numba the install will use)."""
    import llvmlite.binding as llvm

    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith((".nbi", ".nbc")) or name == MANIFEST:
            os.remove(os.path.join(folder, name))
    for target in targets:
        with tempfile.TemporaryDirectory(prefix="kernels-") as scratch:
            env = dict(os.environ, NUMBA_CPU_NAME=target, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=scratch)
            subprocess.run([sys.executable, "-c", script], env=env, check=True,
                           cwd=os.path.dirname(os.path.dirname(PACKAGE_FOLDER)))
            _merge(scratch, folder)
    manifest = {"numba": numba.__version__, "python": list(sys.version_info[:2]), "triple": llvm.get_process_triple(),
                "stamp": source_stamp(), "targets": list(targets)}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def _merge(scratch: str, folder: str) -> None:
    """Add the entries of one target's compile in ``scratch`` to the shipped indexes in ``folder``."""
    stamp = source_stamp()
    for root, _, names in os.walk(scratch):
        for name in names:
            if name.endswith(".nbi"):
                compiled = IndexDataCacheFile(root, name[: -len(".nbi")], stamp)
                shipped = IndexDataCacheFile(folder, name[: -len(".nbi")], stamp)
                for key, data_name in compiled._load_index().items():
                    shipped.save(key, compiled._load_data(data_name))


if __name__ == "__main__":
    build_shipped()
