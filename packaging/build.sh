#!/usr/bin/env bash
# Build the wheel and source distribution into dist/ and check that the wheel installs and runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv /tmp/ilastik-desktop-build
. /tmp/ilastik-desktop-build/bin/activate
pip install -q build
python -m build --outdir dist .
python3 -m venv /tmp/ilastik-desktop-wheel-check
/tmp/ilastik-desktop-wheel-check/bin/pip install -q dist/*.whl
/tmp/ilastik-desktop-wheel-check/bin/ilastik-desktop --version
/tmp/ilastik-desktop-wheel-check/bin/ilastik-worker --help >/dev/null
echo "built: $(ls dist)"
