"""Checked reading of project files: every value read from an ``.ilp`` passes here, checked for its kind
(group or dataset), type, dimensions, size and range before it is used. Anything else is a
:class:`~backend.errors.ProjectError` naming the file, the HDF5 path and what is wrong, in one line.

Links are followed only within the file (an external link could open any file, a soft-link loop never
ends), and arrays are read only after their declared size was checked (a tiny file can declare gigabytes).
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np

from backend.errors import ProjectError
from backend.io.sources.base import axes_problem

NUMBER_KINDS = "iuf"
INTEGER_KINDS = "iu"
MAX_ELEMENTS = 1 << 24  # no value of a project is larger (a forest's tree of 16 M nodes would be absurd)
_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "S": "text", "O": "objects"}


def where(parent: h5py.HLObject, name: str = "") -> str:
    """``file: /hdf5/path`` of ``name`` in ``parent``, for messages."""
    path = parent.name.rstrip("/") + "/" + name if name else parent.name
    return f"{parent.file.filename}: {path}"


def problem(parent: h5py.HLObject, name: str, what: str) -> ProjectError:
    """The error for ``name`` in ``parent`` being wrong as ``what`` says."""
    return ProjectError(f"{where(parent, name)}: {what}")


def _node(parent: h5py.Group, name: str):
    """The object at ``name`` in ``parent``, None if there is none; refuses links that leave the file or loop."""
    try:
        link = parent.get(name, getlink=True)
        if link is None:
            return None
        if isinstance(link, h5py.ExternalLink):
            raise problem(parent, name, f"links to another file ({link.filename}), which is not followed")
        return parent.get(name)
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        raise problem(parent, name, f"cannot be read ({exc})") from None


def present(parent: h5py.Group, name: str) -> bool:
    """Whether ``parent`` holds ``name`` other than as ilastik's placeholder for "none" (``isEmpty`` set)."""
    node = _node(parent, name)
    if node is None:
        return False
    try:
        return not bool(np.all(node.attrs.get("isEmpty", False)))
    except (OSError, TypeError, ValueError) as exc:
        raise problem(parent, name, f"attribute isEmpty cannot be read ({exc})") from None


def expect_group(parent: h5py.Group, name: str, required: bool = True) -> h5py.Group | None:
    """The group ``name`` of ``parent`` (None if absent and not ``required``)."""
    return _expect(parent, name, required, h5py.Group, "should be a group but is a dataset")


def expect_dataset(parent: h5py.Group, name: str, required: bool = True) -> h5py.Dataset | None:
    """The dataset ``name`` of ``parent`` (None if absent and not ``required``)."""
    return _expect(parent, name, required, h5py.Dataset, "should be a dataset but is a group")


def _expect(parent: h5py.Group, name: str, required: bool, kind: type, otherwise: str):
    node = _node(parent, name)
    if node is None and not required:
        return None
    if not isinstance(node, kind):
        raise problem(parent, name, "is missing" if node is None else otherwise)
    return node


def _read(parent: h5py.Group, name: str, ds: h5py.Dataset, kinds: str, ndims: tuple[int, ...],
          max_size: int) -> np.ndarray:
    """The values of ``ds`` after checking its type, dimensions and size."""
    text = h5py.check_string_dtype(ds.dtype) is not None
    kind = "S" if text else ds.dtype.kind
    if kind not in kinds:
        wanted = " or ".join(sorted({_KIND_NAMES.get(k, k) for k in kinds}))
        raise problem(parent, name, f"should hold {wanted} but holds {_KIND_NAMES.get(kind, str(ds.dtype))}")
    if ds.shape is None:
        raise problem(parent, name, "is empty")
    if len(ds.shape) not in ndims:
        wanted = " or ".join(f"{n}-d" for n in ndims)
        raise problem(parent, name, f"should be {wanted} but has shape {ds.shape}")
    if math.prod(ds.shape) > max_size:
        raise problem(parent, name, f"declares {math.prod(ds.shape)} values (at most {max_size} make sense)")
    try:
        return np.asarray(ds[()])
    except (OSError, TypeError, ValueError) as exc:
        raise problem(parent, name, f"cannot be read ({exc})") from None


def expect_array(parent: h5py.Group, name: str, kinds: str = NUMBER_KINDS, ndims: tuple[int, ...] = (1,),
                 max_size: int = MAX_ELEMENTS, finite: bool = True) -> np.ndarray:
    """The array ``name`` of ``parent``: its values of one of ``kinds`` (numpy kind letters, ``S`` for text),
    with a dimension count in ``ndims``, at most ``max_size`` values, all finite if numbers and ``finite``."""
    values = _read(parent, name, expect_dataset(parent, name), kinds, ndims, max_size)
    if finite and values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise problem(parent, name, "holds NaN or infinite values")
    return values


def expect_texts(parent: h5py.Group, name: str, max_size: int = MAX_ELEMENTS) -> tuple[str, ...]:
    """The strings of the 1-d text array ``name`` (at most ``max_size``)."""
    values = expect_array(parent, name, "S", (1,), max_size)
    return tuple(_decode(parent, name, v) for v in values.ravel())


def expect_text(parent: h5py.Group, name: str, default: str | None = None) -> str:
    """The string ``name`` (a scalar or a one-element array); ``default`` if absent and a default is given."""
    if default is not None and _node(parent, name) is None:
        return default
    values = expect_array(parent, name, "S", (0, 1), max_size=1)
    if values.size != 1:
        raise problem(parent, name, "should be one string but holds none")
    return _decode(parent, name, values.ravel()[0])


def _decode(parent: h5py.Group, name: str, value) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode()
    except (UnicodeDecodeError, TypeError):
        raise problem(parent, name, "is not UTF-8 text") from None


def expect_number(parent: h5py.Group, name: str, low: float, high: float, default: float | None = None,
                  integer: bool = False) -> float:
    """The number ``name`` (a scalar or a one-element array) within [low, high]; ``default`` if absent and a
    default is given. With ``integer``, it must be a whole number (returned as int)."""
    if default is not None and _node(parent, name) is None:
        return default
    values = expect_array(parent, name, NUMBER_KINDS + "b", (0, 1), max_size=1, finite=False)
    if values.size != 1:
        raise problem(parent, name, "should be one number but holds none")
    value = float(values.ravel()[0])
    if not low <= value <= high:  # also refuses NaN
        raise problem(parent, name, f"is {value:g}, outside {low:g} to {high:g}")
    if integer:
        if value != int(value):
            raise problem(parent, name, f"is {value:g}, not a whole number")
        return int(value)
    return value


def expect_integers(parent: h5py.Group, name: str, low: int, high: int, ndims: tuple[int, ...] = (1,),
                    max_size: int = MAX_ELEMENTS) -> np.ndarray:
    """The whole numbers of array ``name`` (stored as integers, or as floats holding whole numbers), all within
    [low, high], as int64."""
    values = expect_array(parent, name, NUMBER_KINDS, ndims, max_size)
    if values.size and (values.min() < low or values.max() > high):
        raise problem(parent, name, f"holds values outside {low} to {high}")
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise problem(parent, name, "holds numbers that are not whole")
    return values.astype(np.int64)


def expect_attr_text(obj: h5py.HLObject, name: str) -> str | None:
    """The text attribute ``name`` of ``obj``, None if it has none."""
    try:
        if name not in obj.attrs:
            return None
        value = obj.attrs[name]
    except (OSError, TypeError, ValueError, KeyError) as exc:
        raise problem(obj, "", f"attribute {name} cannot be read ({exc})") from None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.ravel()[0]
    if isinstance(value, (bytes, np.bytes_)):
        return _decode(obj, "", value)
    if not isinstance(value, str):
        raise problem(obj, "", f"attribute {name} should be text")
    return value


def parse_axes(parent: h5py.HLObject, name: str, text: str) -> str:
    """The axis keys (e.g. ``'zyxc'``) of vigra's JSON axistags ``text``, each of t, z, y, x, c at most once
    (whether they fit the data is checked where the data's shape is known)."""
    try:
        axes = json.loads(text)["axes"]
        keys = "".join(axis["key"] for axis in axes).lower()
    except (ValueError, KeyError, TypeError) as exc:
        raise problem(parent, name, f"axistags are not vigra's JSON ({type(exc).__name__}: {exc})") from None
    wrong = axes_problem(keys[:20])
    if wrong is not None:
        raise problem(parent, name, f"axistags: {wrong}")
    return keys
