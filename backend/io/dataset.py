"""Open a project lane's raw data: resolve its path as ilastik does, or use the user's override."""

from __future__ import annotations

import glob
import os

from backend.errors import DataError, RawDataMissing
from backend.io.project import Project, RawDataInfo
from backend.io.sources import DataSource, open_source, split_internal_path


def resolve_raw_path(project: Project, info: RawDataInfo) -> str:
    """The raw data spec of a lane with relative paths made absolute (internal paths kept)."""
    if info.location == "ProjectInternal":
        return f"{os.path.abspath(project.path)}/Input Data/local_data/{info.dataset_id}"
    parts = info.file_path.split(os.pathsep) if os.pathsep in info.file_path else [info.file_path]
    resolved = [p if os.path.isabs(p) else os.path.join(project.directory, p) for p in parts]
    return os.pathsep.join(resolved)


def open_lane(project: Project, lane: int = 0, raw_data: str | None = None,
              input_axes: str | None = None) -> DataSource:
    """The raw data of ``lane`` (or the ``raw_data`` override) with its axes reconciled."""
    if not 0 <= lane < len(project.lanes):
        raise DataError(f"{project.path}: no lane {lane} (the project has {len(project.lanes)})")
    info = project.lanes[lane]
    spec = raw_data or resolve_raw_path(project, info)
    file_path, internal = split_internal_path(spec)
    beside = os.path.join(project.directory, os.path.basename(file_path))
    if raw_data is None and os.pathsep not in spec and not os.path.exists(file_path) and os.path.exists(beside):
        spec = beside + (f"/{internal}" if internal else "")  # moved together with the project, as ilastik looks
    elif raw_data is None and os.pathsep not in spec and not os.path.exists(file_path):
        raise RawDataMissing(
            f"{project.path}: raw data of lane {lane} not found at {file_path} "
            f"(recorded as '{info.file_path}'); pass --raw_data FILE to use another file", file_path)
    source = open_source(spec, axes=input_axes)
    if input_axes is None and source.axes_guessed and info.axes:
        fitted = _fit_axes(info.axes, len(source.native_shape))
        if fitted:
            source.reinterpret(fitted)
    check_fits_lane(project, lane, source)
    return source


def check_fits_lane(project: Project, lane: int, source: DataSource) -> None:
    """DataError if the image cannot be the lane's data: 2D for a 3D project (or the other way), other channels."""
    info = project.lanes[lane]
    if not info.axes or not info.shape or len(info.axes) != len(info.shape):
        return  # the project does not say
    recorded = dict(zip(info.axes, info.shape))
    volumetric, was_volumetric = source.spatial_shape[1] > 1, recorded.get("z", 1) > 1
    problems = []
    if volumetric != was_volumetric:
        problems.append(f"it is {'3D' if volumetric else '2D'} but the project was trained on "
                        f"{'3D' if was_volumetric else '2D'} data")
    if source.channels != recorded.get("c", 1):
        problems.append(f"it has {source.channels} channels but the project's data has {recorded.get('c', 1)}")
    if problems:
        raise DataError(f"{source.description}: does not fit {os.path.basename(project.path)} lane {lane}: "
                        + "; ".join(problems))


def _fit_axes(axes: str, ndim: int) -> str | None:
    """The project's axes adapted to an array that may lack the singleton channel axis."""
    if len(axes) == ndim:
        return axes
    if len(axes) == ndim + 1 and "c" in axes:
        return axes.replace("c", "")
    return None


GLOB_CHARACTERS = "*?["


def is_pattern(spec: str) -> bool:
    """True if ``spec`` is a glob pattern (it has ``*``, ``?`` or ``[`` and no file of that name exists)."""
    return any(ch in spec for ch in GLOB_CHARACTERS) and not os.path.exists(spec)


def nickname_of(spec: str) -> str:
    """ilastik's nickname of a raw data spec (``DatasetInfo.create_nickname``): the file's name without its
    extension, with the internal path appended (``raw.h5/volume/data`` -> ``raw-volume-data``); for a stack,
    the files' common prefix."""
    paths = [p for p in spec.split(os.pathsep) if p]
    expanded = sorted(glob.glob(spec)) if is_pattern(spec) else paths
    parts = [split_internal_path(p) for p in expanded or paths]
    external = os.path.commonprefix([os.path.splitext(file)[0] for file, _ in parts])
    name = os.path.basename(external) if external else ""
    if not name:
        name = "stack_at-" + os.path.splitext(os.path.basename(parts[0][0]))[0]
    internal = os.path.commonprefix([inner or "" for _, inner in parts]).strip("/")
    return name + ("-" + internal.replace("/", "-") if internal else "")
