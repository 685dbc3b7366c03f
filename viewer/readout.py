"""The status bar's readout: position, raw value and the results painted at one pixel of one view."""

from __future__ import annotations

from viewer.loader import PlaneLoader
from viewer.model import OBJECTS, PROBABILITIES, RAW, UNCERTAINTY, ViewerModel
from viewer.slice_view import SliceView


def voxel_readout(model: ViewerModel, loader: PlaneLoader, view: SliceView, row: int, col: int,
                  class_names: list[str], object_ids: bool = True) -> str:
    """``x .. y .. z .. t ..  raw ..  class p ..  object ..`` for the pixel at ``row, col`` of ``view``,
    at the current slice and time, with the values painted there (none yet where nothing arrived); without
    the object's ID when ``object_ids`` is False (a line of its own says it), still saying ``background``."""
    position = list(model.position)
    position["tzyx".index(view.rows_axis)], position["tzyx".index(view.cols_axis)] = row, col
    text = "  ".join(f"{axis} {value}" for axis, value in zip("xyzt", reversed(position))
                     if axis != "z" or model.volumetric)
    raw = loader.value_at(view.plane, RAW, row, col)
    if raw is not None:
        text += f"   raw {raw[0]:g}"
    probabilities = loader.value_at(view.plane, PROBABILITIES, row, col)
    if probabilities is not None:
        text += "   " + "  ".join(f"{name} {p:.2f}" for name, p in zip(class_names, probabilities))
    uncertainty = loader.value_at(view.plane, UNCERTAINTY, row, col)
    if uncertainty is not None and model.layer("Uncertainty").visible:
        text += f"   uncertainty {uncertainty[0]:.2f}"
    objects = loader.value_at(view.plane, OBJECTS, row, col)
    if objects is not None and model.layer("Objects").visible:
        if not objects[0]:
            text += "   background"
        elif object_ids:
            text += f"   object {objects[0]}"
    return text
