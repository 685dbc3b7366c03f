"""The kernels' on-disk cache (backend/compute/kernel_cache.py): shipped compiled kernels are found after a copy
that changes modification times and in a read-only install, and never used for changed kernel sources.

Each check runs a fresh interpreter (numba reads its settings once) on a small package laid out like ours:
``fake/compute/`` with kernel_cache.py and the four kernel source files, one of which holds a tiny kernel.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from backend.compute import kernel_cache

COMPUTE = os.path.dirname(kernel_cache.__file__)
KERNEL = '''from fake.compute.kernel_cache import kernel


@kernel(nogil=True)
def add(a, b):  # pragma: no cover - compiled
    return a + b
'''
CALL = """import json
from fake.compute.filters import add
print(json.dumps({"sum": add(2, 3), "from": add._cache.loaded_from, "compiled": sum(add.stats.cache_misses.values())}))
"""


def _write_package(root) -> str:
    """The fake package under ``root``; returns its compute folder."""
    compute = os.path.join(root, "fake", "compute")
    os.makedirs(compute)
    for init in (os.path.join(root, "fake"), compute):
        open(os.path.join(init, "__init__.py"), "w").close()
    shutil.copy(os.path.join(COMPUTE, "kernel_cache.py"), compute)
    for name in kernel_cache.KERNEL_SOURCES:
        with open(os.path.join(compute, name), "w") as f:
            f.write(KERNEL if name == "filters.py" else f"# {name}: kernels would be here\n")
    return compute


def _block_writes(root) -> str:
    """No writable kernel folder: ``__pycache__`` is a file and so is the user cache's parent (nothing can be
    created below a file, even by root); returns the user cache folder to use."""
    open(os.path.join(root, "a-file"), "w").close()
    open(os.path.join(root, "fake", "compute", "__pycache__"), "w").close()
    return os.path.join(root, "a-file", "cache")


def _run(root, cache_home: str | None = None) -> dict:
    """Call the kernel in a fresh interpreter in ``root`` (by default with an empty user cache); what it reported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(XDG_CACHE_HOME=cache_home or os.path.join(root, "cache-home"), HOME=os.path.join(root, "home"))
    done = subprocess.run([sys.executable, "-c", CALL], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def _files(folder) -> set[str]:
    return {os.path.join(d, n) for d, _, names in os.walk(folder) for n in names}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A built install: the fake package with its kernel compiled for the generic x86-64 target."""
    root = str(tmp_path_factory.mktemp("built"))
    compute = _write_package(root)
    done = subprocess.run([sys.executable, "-c", "from fake.compute import kernel_cache as k; "
                           "k.build_shipped(targets=('generic',), script='from fake.compute.filters import add; "
                           "add(1, 2)')"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")})
    assert done.returncode == 0, done.stderr[-2000:]
    with open(os.path.join(compute, "kernels", kernel_cache.MANIFEST)) as f:
        assert json.load(f)["targets"] == ["generic"]
    return root


def _install(shipped, destination) -> str:
    """A copy of the built install, as pip or an unpacked bundle makes it: every file's time is new."""
    shutil.copytree(os.path.join(shipped, "fake"), os.path.join(destination, "fake"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in _files(destination):
        os.utime(path, (1e9, 1e9))
    return str(destination)


def test_a_read_only_install_without_a_user_cache_loads_the_shipped_kernel_and_writes_nothing(shipped, tmp_path):
    root = _install(shipped, tmp_path)
    cache_home = _block_writes(root)
    before = _files(root)
    assert _run(root, cache_home) == {"sum": 5, "from": "generic", "compiled": 0}
    assert _files(root) == before


def test_a_read_only_install_still_computes_when_nothing_shipped_fits(shipped, tmp_path):
    root = _install(shipped, tmp_path)
    shutil.rmtree(os.path.join(root, "fake", "compute", "kernels"))
    cache_home = _block_writes(root)
    before = _files(root)
    assert _run(root, cache_home) == {"sum": 5, "from": "", "compiled": 1}
    assert _files(root) == before


def test_the_shipped_kernel_is_used_after_a_copy_but_never_for_changed_kernel_source(shipped, tmp_path):
    root = _install(shipped, tmp_path)  # every file's modification time differs from the build's
    assert _run(root) == {"sum": 5, "from": "generic", "compiled": 0}
    with open(os.path.join(root, "fake", "compute", "eigen.py"), "a") as f:
        f.write("# another kernel file changed: the kernels are linked together, so every entry is stale\n")
    changed = _run(root)
    assert changed == {"sum": 5, "from": "", "compiled": 1}  # neither the shipped one nor ...
    assert _run(root) == {"sum": 5, "from": "host", "compiled": 0}  # ... but the one compiled for it now is
    with open(os.path.join(root, "fake", "compute", "forest.py"), "a") as f:
        f.write("# changed again\n")
    assert _run(root) == {"sum": 5, "from": "", "compiled": 1}  # the one compiled here is stale too


def test_every_module_with_a_kernel_stamps_the_cache_and_every_kernel_uses_it():
    names = [name for name in os.listdir(COMPUTE) if name.endswith(".py") and name != "kernel_cache.py"]
    with_kernels = set()
    for name in names:
        with open(os.path.join(COMPUTE, name)) as f:
            text = f.read()
        assert "numba.njit" not in text and "@njit" not in text, f"{name}: a kernel outside kernel_cache.kernel"
        if re.search(r"^@kernel\(", text, re.M):
            with_kernels.add(name)
    assert with_kernels == set(kernel_cache.KERNEL_SOURCES)


def test_the_first_start_message_only_when_the_kernels_must_be_compiled(monkeypatch, capsys):
    from ilastik_desktop.runtime import frozen

    monkeypatch.setattr(kernel_cache, "kernels_compiled", lambda: True)
    frozen.announce_first_start.cache_clear()
    frozen.announce_first_start()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(kernel_cache, "kernels_compiled", lambda: False)
    frozen.announce_first_start.cache_clear()
    frozen.announce_first_start()
    frozen.announce_first_start()  # once per run
    assert capsys.readouterr().err.count("first start: compiling the compute kernels once") == 1
    frozen.announce_first_start.cache_clear()


WARMED = """
import importlib, json
from backend.compute.kernel_cache import KERNEL_SOURCES, KernelCache
from backend.compute.warmup import warm_up
warm_up()
counts = {}
for name in KERNEL_SOURCES:
    module = importlib.import_module("backend.compute." + name[:-3])
    for attribute, value in vars(module).items():
        if isinstance(getattr(value, "_cache", None), KernelCache) and value.targetoptions.get("inline") != "always":
            counts[attribute] = len(value.signatures)
print(json.dumps(counts))
"""
CALLED_ONLY_BY_KERNELS = {"_walk_each"}  # compiled into _predict, never called from Python


def test_the_warm_up_the_shipped_kernels_are_built_from_calls_every_kernel():
    """What warm_up does not call is not shipped, and a new install compiles it on first use."""
    from tests.conftest import REPO

    result = subprocess.run([sys.executable, "-c", WARMED], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO)
    counts = json.loads(result.stdout.splitlines()[-1])
    assert {name for name, signatures in counts.items() if not signatures} == CALLED_ONLY_BY_KERNELS, counts
