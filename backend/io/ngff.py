"""OME-NGFF 0.4 ``multiscales`` metadata, the one place it is written (zarr export, web service) and read."""

from __future__ import annotations

from backend.io.voxel_size import NGFF_NAMES, SPACE, VoxelSize

ORDER = "tczyx"  # NGFF's axis order: time, channel, then space
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
LEVEL = "0"  # the path of the full-resolution array


def ngff_axes(axes: str) -> str:
    """``axes`` in NGFF order (t, c, z, y, x, each only where present)."""
    return "".join(a for a in ORDER if a in axes)


def multiscales(name: str, axes: str, size: VoxelSize | None) -> list[dict]:
    """The ``multiscales`` attribute of an image group with one level :data:`LEVEL` of ``axes`` (NGFF order):
    typed axes, spatial ones with their unit, and a scale that is the voxel size (1 where unknown)."""
    known = size.in_unit(size.unit) if size is not None else {}
    described = []
    for axis in axes:
        entry = {"name": axis, "type": AXIS_TYPES[axis]}
        if axis in known:
            entry["unit"] = NGFF_NAMES[size.unit]
        described.append(entry)
    scale = [known.get(axis, 1.0) for axis in axes]
    return [{"version": "0.4", "name": name, "axes": described,
             "datasets": [{"path": LEVEL, "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
             "type": "none"}]


def read_multiscales(attrs: dict) -> tuple[str, str, VoxelSize | None] | None:
    """(path of the first level, its axes, its voxel size) from a group's attributes (NGFF 0.4, or 0.5 under
    ``ome``); None without ``multiscales``. The size is the first level's scale times the image-wide one, along
    the spatial axes that have a length unit."""
    meta = attrs.get("ome", attrs)
    found = meta.get("multiscales") if isinstance(meta, dict) else None
    if not found:
        return None
    first = found[0]
    axes = first.get("axes") or []
    names = "".join(a["name"] if isinstance(a, dict) else a for a in axes).lower()
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    level = first["datasets"][0]
    scale = [1.0] * len(names)
    for transforms in (level.get("coordinateTransformations"), first.get("coordinateTransformations")):
        factors = next((t.get("scale") for t in transforms or [] if t.get("type") == "scale"), None)
        if factors is not None and len(factors) == len(names):
            scale = [s * f for s, f in zip(scale, factors)]
    size = VoxelSize.from_units({a: (s, u) for a, s, u in zip(names, scale, units) if a in SPACE and u})
    return level["path"], names, size
