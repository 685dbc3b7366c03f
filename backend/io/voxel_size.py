"""The physical size of a voxel, and how each file format records it: TIFF resolution tags with ImageJ's
``spacing``/``unit`` (in an ImageJ or tifffile description), HDF5's ``element_size_um`` and ilastik's axistags
``resolution`` with its ``axis_units``. OME-NGFF's scale and axis units are in :mod:`backend.io.ngff`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

SPACE = "zyx"
METRES = {"km": 1e3, "m": 1.0, "cm": 1e-2, "mm": 1e-3, "µm": 1e-6, "nm": 1e-9, "Å": 1e-10, "pm": 1e-12}
NGFF_NAMES = {"km": "kilometer", "m": "meter", "cm": "centimeter", "mm": "millimeter", "µm": "micrometer",
              "nm": "nanometer", "Å": "angstrom", "pm": "picometer"}
_ALIASES = {"micron": "µm", "microns": "µm", "um": "µm", "μm": "µm", "\\u00b5m": "µm", "angstroms": "Å",
            "a": "Å"}
TIFF_UNIT_MICROMETRES = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}  # ResolutionUnit: inch, cm, mm, µm
TIFF_INCH = 2
TIFF_CENTIMETER = 3
SCREEN_DPI = (72, 96)  # resolutions image editors write by default, not a pixel size


def unit_symbol(text: object) -> str | None:
    """The symbol (``µm``, ``nm``, ...) of a length unit written as a symbol, an NGFF/UDUNITS name
    (``micrometer``), a plural, British spelling or ImageJ's ``micron``; None for anything else (pixels, time)."""
    if not isinstance(text, str):
        return None
    word = text.strip()
    if word in METRES:
        return word
    word = word.lower().replace("metre", "meter")
    for symbol, name in NGFF_NAMES.items():
        if word in (name, name + "s"):
            return symbol
    return _ALIASES.get(word, word if word in METRES else None)


@dataclass(frozen=True)
class VoxelSize:
    """The size of a voxel along the spatial axes that are known (x always; y and z when known), in one unit."""

    unit: str
    sizes: tuple[tuple[str, float], ...]  # (axis, size) pairs in z, y, x order

    @classmethod
    def checked(cls, sizes: Mapping[str, float], unit: object) -> VoxelSize | None:
        """From sizes along spatial axes and a unit; None unless the unit is a length and x has a positive size
        (non-positive sizes of other axes are left out)."""
        symbol = unit_symbol(unit)
        kept = {a: float(sizes[a]) for a in SPACE if a in sizes and _positive(sizes[a])}
        if symbol is None or "x" not in kept:
            return None
        return cls(symbol, tuple(kept.items()))

    @classmethod
    def from_units(cls, sizes: Mapping[str, tuple[float, object]]) -> VoxelSize | None:
        """From (size, unit) per axis, each unit its own (as OME-NGFF allows): all converted to x's unit; axes
        without a length unit are left out."""
        if "x" not in sizes or unit_symbol(sizes["x"][1]) is None:
            return None
        unit = unit_symbol(sizes["x"][1])
        converted = {a: size * METRES[unit_symbol(u)] / METRES[unit] for a, (size, u) in sizes.items()
                     if a in SPACE and unit_symbol(u) is not None and _positive(size)}
        return cls.checked(converted, unit)

    def along(self, axis: str) -> float | None:
        """The size along ``axis``; None if not known."""
        return dict(self.sizes).get(axis)

    def in_unit(self, unit: str) -> dict[str, float]:
        """The known sizes converted to ``unit`` (a symbol of :data:`METRES`)."""
        factor = METRES[self.unit] / METRES[unit]
        return {a: size * factor for a, size in self.sizes}

    @property
    def pixel_size(self) -> tuple[float, str]:
        """The in-plane (x) size and the unit, for a scale bar."""
        return dict(self.sizes)["x"], self.unit


def _positive(value: object) -> bool:
    try:
        return float(value) > 0 and float(value) != float("inf")
    except (TypeError, ValueError):
        return False


def from_tiff(tif) -> VoxelSize | None:
    """From an open :class:`tifffile.TiffFile`: x and y from XResolution/YResolution (pixels per ImageJ's
    ``unit`` when an ImageJ description gives one, as ImageJ reads them; else per ResolutionUnit, or per the
    tifffile description's ``unit`` when the tag gives none), z from ``spacing`` in ImageJ's or tifffile's
    description. A resolution of exactly 72 or 96 pixels per inch with no unit or spacing in a description is
    an image editor's screen default, not a pixel size: unknown."""
    tags = tif.pages[0].tags
    meta = tif.imagej_metadata or (tif.shaped_metadata or [None])[0] or {}
    code_tag = tags.get("ResolutionUnit")
    code = int(code_tag.value) if code_tag is not None else 1
    imagej_unit = unit_symbol((tif.imagej_metadata or {}).get("unit"))
    if imagej_unit is None and code in TIFF_UNIT_MICROMETRES:
        unit, per_unit = "µm", TIFF_UNIT_MICROMETRES[code]
    else:
        unit, per_unit = unit_symbol(meta.get("unit")), 1.0
    per_pixel = {}
    for axis, name in (("x", "XResolution"), ("y", "YResolution")):
        tag = tags.get(name)
        if tag is not None and len(tag.value) == 2 and tag.value[0] and tag.value[1]:
            per_pixel[axis] = tag.value[1] / tag.value[0]
    if code == TIFF_INCH and "unit" not in meta and "spacing" not in meta and _screen_default(per_pixel):
        return None
    sizes = {axis: per_unit * size for axis, size in per_pixel.items()}
    spacing_unit = unit_symbol(meta.get("unit"))
    if _positive(meta.get("spacing")) and spacing_unit is not None and unit is not None:
        sizes["z"] = float(meta["spacing"]) * METRES[spacing_unit] / METRES[unit]
    return VoxelSize.checked(sizes, unit)


def _screen_default(per_pixel: Mapping[str, float]) -> bool:
    """True if the resolutions (inches per pixel) are an image editor's 72 or 96 dpi."""
    return bool(per_pixel) and any(all(abs(v * dpi - 1) < 1e-9 for v in per_pixel.values())
                                   for dpi in SCREEN_DPI)


def from_hdf5(attrs: Mapping, axes: str) -> VoxelSize | None:
    """From a dataset's attributes, given the dataset's axes: ilastik's axistags ``resolution`` with its
    ``axis_units`` JSON, else ``element_size_um`` (as Fiji and vigra write it: one value per axis, or per
    spatial axis)."""
    tags, units = attrs.get("axistags"), attrs.get("axis_units")
    if tags is not None and units is not None:
        try:
            keys = [(axis["key"].lower(), axis.get("resolution", 0)) for axis in json.loads(_text(tags))["axes"]]
            unit_of = json.loads(_text(units))
            found = VoxelSize.from_units({key: (res, unit_of.get(key)) for key, res in keys
                                          if _positive(res) and isinstance(unit_of, dict)})
        except (ValueError, KeyError, TypeError, AttributeError):
            found = None
        if found is not None:
            return found
    element = attrs.get("element_size_um")
    try:
        values = [float(v) for v in element] if element is not None else []
    except (TypeError, ValueError):
        return None
    spatial = [a for a in axes if a in SPACE]
    if len(values) == len(axes):
        pairs = zip(axes, values)
    elif len(values) >= len(spatial):
        pairs = zip(spatial, values[len(values) - len(spatial):])
    else:
        return None
    return VoxelSize.checked({a: v for a, v in pairs if a in SPACE}, "µm")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
