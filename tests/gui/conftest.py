"""GUI tests run offscreen unless a platform was chosen explicitly."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
