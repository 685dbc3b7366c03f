"""The command line: ``ilastik-desktop`` (window, headless export, serve) and ``ilastik-worker``.

Option builders turn arguments into the runtime's settings; nothing here holds application logic.
"""
