"""ilastik-desktop: open ilastik pixel-classification projects and compute their predictions fast."""

__version__ = "0.1.0"
