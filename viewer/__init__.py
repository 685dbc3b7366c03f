"""Qt/pyqtgraph views and layers of ilastik-desktop (the only package besides the app that imports Qt)."""
