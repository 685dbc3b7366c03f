"""The labels overlay: the painted labels of the plane each view shows, in the classes' colours."""

from __future__ import annotations

import numpy as np

from backend.compute.geometry import Roi
from backend.service.labels import LabelStore
from viewer.model import LABELS
from viewer.slice_view import SliceView
from viewer.slicing import AXES, plane_roi

LABELS_ORDER = 500  # above every result overlay (their order is their place among the layers)


def paint_labels(view: SliceView, store: LabelStore, position: list[int], colors: list[tuple[int, int, int]],
                 opacity: float = 0.8, within: Roi | None = None) -> None:
    """Show the labels of the plane through ``position`` in ``view`` (class n in ``colors[n - 1]``); only those
    inside ``within`` (tzyx) when given, the rest of the overlay as it was (a stroke being painted)."""
    rows, cols = view.shape
    roi = plane_roi(tuple(position), view.rows_axis, view.cols_axis, (0, rows, 0, cols))
    if within is not None:
        roi = roi.intersect(within)
        if roi is None:
            return
    axes = [a for a in AXES if a in (view.rows_axis, view.cols_axis)]
    plane = store.region(roi).reshape([roi.shape[AXES.index(a)] for a in axes])
    if axes != [view.rows_axis, view.cols_axis]:
        plane = plane.T
    lut = np.zeros((256, 4), np.uint8)
    for label, color in enumerate(colors, start=1):
        lut[label] = (*color[:3], round(255 * opacity))
    r, c = AXES.index(view.rows_axis), AXES.index(view.cols_axis)
    view.overlay(LABELS, LABELS_ORDER)[roi.start[r]:roi.stop[r], roi.start[c]:roi.stop[c]] = lut[plane]
    view.refresh(LABELS)
