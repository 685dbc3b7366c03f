"""The Qt window: the application, main window, menus, dialogs and panels. Only this package (and
``viewer/``) imports Qt; the logic it shows lives in :mod:`ilastik_desktop.runtime`."""
