"""The house's layers, checked by import-linter (contracts in pyproject.toml), plus module size."""

import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

MAX_LINES = 400


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    result = subprocess.run([lint, "--config", os.path.join(REPO, "pyproject.toml")], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


def test_no_module_is_over_400_lines():
    long = []
    for top in ("backend", "ilastik_desktop", "viewer"):
        for folder, _, names in os.walk(os.path.join(REPO, top)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path) as f:
                        count = sum(1 for _ in f)
                    if count > MAX_LINES:
                        long.append(f"{os.path.relpath(path, REPO)}: {count}")
    assert long == []
