"""The settings of a run, built from the command line and passed down: what to compute, where, and (in
``config``) every timing and limit, from :mod:`backend.config`."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from backend.compute.geometry import Roi
from backend.compute.pipeline import split_kind
from backend.compute.threshold import MAX_SIGMA, ThresholdSettings, default_settings, unsupported_method, used_channels
from backend.config import Config, WorkerConfig
from backend.distributed.dask_clusters import DaskSettings
from backend.distributed.executor import default_workers
from backend.errors import UserError
from backend.io.project import Project
from backend.service.export import ExportOptions
from backend.service.object_table import OBJECT_FEATURES
from backend.service.objects import OBJECTS


@dataclass(frozen=True)
class ComputeSettings:
    """Where blocks are computed and cached."""

    workers: int | None = None  # local worker processes; None = one per core, 0 = none
    connect: tuple[tuple[str, bytes | None], ...] = ()  # (endpoint, public key) of listening remote workers
    listen: str | None = None  # accept remote workers that connect here (CurveZMQ)
    worker_keys: tuple[bytes, ...] = ()  # public keys of remote workers we accept
    redis_url: str | None = None  # None = start an embedded redis-server
    cache_mb: int = 1024
    config_dir: str | None = None
    fail_without_workers: bool = True  # fail waiting blocks after executor.worker_timeout_s with no worker (headless)
    enable_remote: bool = False  # load our key pair at start so remote workers can be added later
    dask: DaskSettings | None = None  # compute on a Dask cluster instead of our ZeroMQ workers
    config: Config = Config()  # the tunables (environment overrides applied by the command line)


@dataclass(frozen=True)
class Settings:
    """Everything a headless run needs to know."""

    project: str
    raw_data: tuple[str, ...] = ()  # files (or glob patterns) instead of the project's raw data; several: a batch
    input_axes: str | None = None
    lane: int = 0
    retrain: bool = False
    export: ExportOptions = ExportOptions()
    cutout: str | None = None
    threshold: str | None = None  # --threshold overrides, applied over the project's settings
    relabel: bool = False  # --relabel: consecutive object IDs instead of ilastik's
    compute: ComputeSettings = ComputeSettings()
    prediction_maps: tuple[str, ...] = ()  # probability maps to threshold into Objects instead of predicting


def process_limit(config: WorkerConfig) -> tuple[int, str]:
    """How many local processes this machine is given at most, and why: ``max_processes_per_core`` per usable
    core, and beyond one per core (the default) no more than its memory holds at ``process_memory_mb`` each."""
    cores = default_workers()
    memory_mb = psutil.virtual_memory().total / 2**20
    by_memory = int(memory_mb // config.process_memory_mb)
    reason = (f"{config.max_processes_per_core:g} per usable core on its {cores} cores, and "
              f"{config.process_memory_mb:g} MB each of its {memory_mb / 1024:.1f} GB memory; see "
              "worker.max_processes_per_core and worker.process_memory_mb in --show-config")
    return max(cores, min(cores * config.max_processes_per_core, by_memory)), reason


def check_process_count(count: int, given: str, config: WorkerConfig) -> int:
    """``count`` unless it exceeds what :func:`process_limit` gives this machine (UserError quoting ``given``, the
    option as the user gave it)."""
    limit, reason = process_limit(config)
    if count > limit:
        raise UserError(f"{given}: this machine runs at most {limit} processes ({reason})")
    return count


def parse_block_shape(text: str | None) -> tuple[int, int, int, int] | None:
    """``'64,128,128'`` (z,y,x) or ``'128,128'`` (y,x) as a tzyx block shape."""
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--block_shape '{text}': expected numbers like 64,128,128") from None
    if len(values) == 2:
        values = [1] + values
    if len(values) != 3 or min(values) < 1:
        raise UserError(f"--block_shape '{text}': expected z,y,x or y,x with positive sizes")
    return (1, *values)


def parse_cutout(text: str, axes: str, spatial_shape: tuple[int, ...]) -> Roi:
    """ilastik's ``--cutout_subregion "[(start...), (stop...)]"`` (raw axes order, None = full) as a tzyx ROI."""
    try:
        start, stop = ast.literal_eval(text)
        if len(start) != len(axes) or len(stop) != len(axes):
            raise ValueError
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (*start, *stop)):
            raise ValueError  # no silent truncation of 10.5, no strings
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise UserError(
            f"--cutout_subregion '{text}': expected \"[(start...), (stop...)]\" with one value per axis of "
            f"'{axes}' (whole numbers, or None for the full extent)"
        ) from None
    lo = dict(zip(axes, start))
    hi = dict(zip(axes, stop))
    begin = tuple(lo.get(a) or 0 for a in "tzyx")
    end = tuple(hi.get(a) if hi.get(a) is not None else n for a, n in zip("tzyx", spatial_shape))
    roi = Roi(begin, end) if all(a < b for a, b in zip(begin, end)) else None
    if roi is None or not Roi.from_shape(spatial_shape).contains(roi):
        raise UserError(f"--cutout_subregion '{text}' is empty or outside the image {spatial_shape}")
    return roi


def parse_threshold(text: str, base: ThresholdSettings | None, channels: int, relabel: bool = False,
                    class_names: Sequence[str] = ()) -> ThresholdSettings:
    """``'channel=1,low=0.6,min_size=20'`` applied over ``base`` (the project's settings or ilastik's defaults),
    checked against the ``channels`` (classes) the probabilities have; a channel may be named by its class in
    ``class_names`` (any case); ``relabel`` (``--relabel``) numbers the objects consecutively. The method may still
    be one ilastik-desktop does not compute (:func:`~backend.compute.threshold.unsupported_method` says so): only
    asking for objects is refused."""
    settings = dataclasses.replace(base or ThresholdSettings(), relabel=relabel)
    changes: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or name not in _THRESHOLD_RULES:
            raise UserError(f"--threshold '{item}': expected NAME=VALUE with NAME one of {', '.join(_THRESHOLD_RULES)}")
        try:
            changes[name] = _threshold_value(name, value, class_names)
        except (KeyError, ValueError):
            raise UserError(f"--threshold '{item}': {name} {_THRESHOLD_RULES[name]}") from None
    settings = dataclasses.replace(settings, **changes)
    if settings.low > settings.high and settings.method == 1:
        raise UserError(f"--threshold: low ({settings.low}) must not exceed high ({settings.high})")
    if settings.max_size < settings.min_size:
        raise UserError(f"--threshold: max_size ({settings.max_size}) is smaller than min_size ({settings.min_size})")
    for role, index in used_channels(settings):
        if index >= channels:
            name = role.replace(" ", "_")
            raise UserError(f"--threshold {name}={index}: the project has {channels} classes "
                            f"(channels 0 to {channels - 1})")
    return settings


def export_threshold(settings: Settings, project: Project, channels: int) -> ThresholdSettings:
    """The thresholding of a headless run: the project's saved settings, else ilastik's defaults on its first
    class that is not background (as the window's), with ``--threshold`` and ``--relabel`` over them; UserError
    naming the project when Objects or their features are asked for with a method ilastik-desktop does not
    compute."""
    base = project.threshold or default_settings(list(project.label_names))
    threshold = parse_threshold(settings.threshold or "", base, channels, settings.relabel, project.label_names)
    reason = unsupported_method(threshold)
    if reason is not None and set(split_kind(settings.export.kind)) & {OBJECTS, OBJECT_FEATURES}:
        raise UserError(f"{project.path}: {reason} (--threshold method=simple or method=hysteresis)")
    return threshold


def no_objects_line(empty: int, frames: int, threshold: ThresholdSettings, class_names: Sequence[str]) -> str | None:
    """The warning when ``empty`` of the ``frames`` exported have no object at all, naming the thresholded
    channel; None when every frame has objects."""
    if not empty:
        return None
    channel = threshold.channel
    name = f" '{class_names[channel]}'" if channel < len(class_names) else ""
    return (f"warning: found no objects in {empty} of {frames} frame{'s' if frames != 1 else ''} (threshold "
            f"channel {channel}{name}, low {threshold.low:g}): see --threshold")


_THRESHOLD_RULES = {
    "method": "is simple or hysteresis (ilastik's graph-cut and identity-preserving methods are not computed here)",
    "channel": "is a channel number (0, 1, ...) or a class name of the project",
    "core_channel": "is a channel number (0, 1, ...) or a class name of the project",
    "low": "is a number from 0 to 1",
    "high": "is a number from 0 to 1",
    "min_size": "is a whole number of pixels, 0 or more",
    "max_size": "is a whole number of pixels, 0 or more",
    "sigmas": f"is z:y:x, or y:x (z then as y: 2D data has no z), each a number from 0 to {MAX_SIGMA:g}",
}


def _threshold_value(name: str, value: str, class_names: Sequence[str]):
    """``value`` of setting ``name`` (KeyError or ValueError if it breaks ``_THRESHOLD_RULES``; UserError listing
    the classes for an unknown class name)."""
    if name == "method":
        return {"simple": 0, "hysteresis": 1}[value.lower()]
    if name in ("channel", "core_channel") and not value.lstrip("-").isdigit():
        return _class_channel(name, value, class_names)
    if name in ("low", "high"):
        number = float(value)
    elif name == "sigmas":
        number = tuple(float(v) for v in value.split(":"))
        number = (number[0], *number) if len(number) == 2 else number  # y:x, z as y
    else:
        number = int(value)
    if name in ("low", "high") and not 0.0 <= number <= 1.0:  # also refuses nan
        raise ValueError
    if name == "sigmas" and (len(number) != 3 or not all(0 <= v <= MAX_SIGMA for v in number)):  # nan, inf too
        raise ValueError
    if isinstance(number, int) and number < 0:
        raise ValueError
    return number


def _class_channel(name: str, value: str, class_names: Sequence[str]) -> int:
    """The channel of the class named ``value`` (any case); UserError listing the classes if there is none."""
    lowered = [class_name.lower() for class_name in class_names]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    known = ", ".join(f"'{class_name}'" for class_name in class_names) or "none"
    raise UserError(f"--threshold {name}={value}: no class of that name (the project's classes: {known}; or give "
                    "a channel number)")
