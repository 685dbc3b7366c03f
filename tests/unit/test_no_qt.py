import pkgutil
import subprocess
import sys

import backend
from tests.conftest import REPO


def test_backend_imports_without_qt():
    modules = [m.name for m in pkgutil.walk_packages(backend.__path__, "backend.")]
    code = (
        "import sys\n"
        "for name in ('PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qasync', 'pyqtgraph'):\n"
        "    sys.modules[name] = None\n"
        f"for m in {modules!r}:\n"
        "    __import__(m)\n"
        "print(len([m for m in sys.modules if m.startswith('backend')]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= len(modules) > 10
