"""The side panel's tabs and their widgets."""

from PyQt5 import QtWidgets


def scrolled(panel: QtWidgets.QWidget) -> QtWidgets.QScrollArea:
    """``panel`` in a scroll area, so that the side panel is as wide as the user makes it, not as its
    widest field asks (it grew to 1100 px on opening another project, leaving the views 69 px)."""
    area = QtWidgets.QScrollArea(widgetResizable=True, frameShape=QtWidgets.QFrame.NoFrame)
    area.setWidget(panel)
    area.setMinimumWidth(120)
    return area
