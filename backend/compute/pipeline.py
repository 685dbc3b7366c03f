"""One block through the classifier: raw voxels with halo -> features -> forest -> results.

A :class:`Pipeline` holds everything a worker needs; it travels as a JSON header plus arrays
(:meth:`to_message` / :meth:`from_message`) so no pickle is ever involved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from backend.checks import whole_number
from backend.compute.feature_memo import FeatureMemo, feature_key, process_memo
from backend.compute.features import FeatureSet, FeatureSpec, to_rows
from backend.compute.forest import CompiledForests
from backend.errors import ProjectError

RESULT_KINDS = ("Probabilities", "Simple Segmentation", "Uncertainty", "Features")
_FOREST_FIELDS = ("nodes", "leaf32", "leaf64", "roots", "forest_ends")


@dataclass(frozen=True)
class BlockTask:
    """Compute ``kind`` on ``target`` (global z, y, x bounds) from ``raw`` (z, y, x, c) at ``start``."""

    key: str
    kind: str
    raw: np.ndarray
    start: tuple[int, int, int]
    image: tuple[int, int, int]
    target: tuple[tuple[int, int], ...]
    pipeline: str  # fingerprint of the Pipeline that must compute it
    raw_ref: dict | None = None  # instead of raw: {spec, axes, start, stop} for workers that read the file
    lookup: np.ndarray | None = None  # Object Labels tasks: the block's local label -> final ID table
    output: dict | None = None  # write here: the chunk target (backend.io.chunk_store) the result goes into;
    # the computing process writes it there and answers with WRITTEN instead of the values


WRITTEN = np.zeros(0, np.uint8)  # the answer of a task that wrote its result into its output itself


@dataclass(frozen=True)
class Pipeline:
    """Features, forests and output layout of one classifier applied to one kind of image."""

    features: FeatureSet
    forests: CompiledForests | None
    known_labels: tuple[int, ...]
    label_count: int

    @property
    def halo(self) -> tuple[int, int, int]:
        return self.features.halo

    def channels(self, kind: str) -> int:
        """Number of output channels of a result kind (of all its parts for a combined kind)."""
        counts = {"Probabilities": self.label_count, "Features": self.features.column_count}
        return sum(counts.get(part, 1) for part in split_kind(kind))

    def dtype(self, kind: str) -> np.dtype:
        """Output dtype of a result kind (float32 for a combined kind: it holds every part exactly)."""
        return np.dtype(np.uint8 if kind == "Simple Segmentation" else np.float32)

    def run(self, task: BlockTask, workspace: dict | None = None, memo: FeatureMemo | None = None) -> np.ndarray:
        """The result of one block, shaped (z, y, x, channels).

        ``workspace`` (a dict kept by the caller between blocks) lets large buffers be reused, which
        saves the page faults of fresh allocations. A small block's features come from ``memo`` (the
        process's :func:`~backend.compute.feature_memo.process_memo` if not given) when it computed them
        before, under any classifier.
        """
        ws = {} if workspace is None else workspace
        memo = process_memo() if memo is None else memo
        shape = tuple(b - a for a, b in task.target)
        voxels, columns = int(np.prod(shape)), self.features.column_count
        planar = _buffer(ws, "planar", voxels * columns)[: voxels * columns].reshape((columns,) + shape)

        def compute(out: np.ndarray) -> None:
            self.features.compute_planar(task.raw, task.start, task.image, task.target, out=out)

        if memo.keeps(planar.nbytes):
            memo.fill(feature_key(task.raw, task.start, task.image, task.target, self._feature_fingerprint), planar,
                      compute)
        else:
            compute(planar)
        parts = split_kind(task.kind)
        if any(part not in RESULT_KINDS for part in parts):
            raise ValueError(f"unknown result kind '{task.kind}'")
        feats = None
        if "Features" in parts:  # the forest reads the planar features; only this result needs them as rows
            rows = to_rows(planar, _buffer(ws, "rows", voxels * columns)[: voxels * columns].reshape(voxels, columns))
            feats = rows.reshape(shape + (columns,))
        probs = None
        if parts != ("Features",):
            probs = self._label_columns(self._forests().predict_planar(planar.reshape(columns, voxels)))
            probs = probs.reshape(shape + (self.label_count,))
        results = [self._result(part, feats, probs) for part in parts]
        if len(results) == 1:
            return results[0].copy() if parts == ("Features",) else results[0]
        return np.concatenate([r.astype(np.float32, copy=False) for r in results], axis=-1)

    @staticmethod
    def _result(kind: str, feats: np.ndarray, probs: np.ndarray | None) -> np.ndarray:
        if kind == "Features":
            return feats
        if kind == "Probabilities":
            return probs
        return simple_segmentation(probs) if kind == "Simple Segmentation" else uncertainty(probs)

    def accepts(self, task: BlockTask, result: np.ndarray) -> bool:
        """Whether a worker's ``result`` is exactly what ``task`` asked for (dtype and shape; :data:`WRITTEN` for a
        task that names its output)."""
        if task.output is not None:
            return (result.dtype.str, result.shape) == (WRITTEN.dtype.str, WRITTEN.shape)
        shape = tuple(b - a for a, b in task.target) + (self.channels(task.kind),)
        return (result.dtype.str, result.shape) == (self.dtype(task.kind).str, shape)

    def probabilities(self, feats: np.ndarray) -> np.ndarray:
        """Per-label probabilities (ilastik's channel order) for a feature block."""
        flat = feats.reshape(-1, feats.shape[-1])
        return self._label_columns(self._forests().predict(flat)).reshape(feats.shape[:-1] + (self.label_count,))

    def _forests(self) -> CompiledForests:
        if self.forests is None:
            raise ProjectError("the project has no trained classifier")
        return self.forests

    def _label_columns(self, known: np.ndarray) -> np.ndarray:
        """The forests' class columns ``(n, classes)`` placed in ilastik's label channels ``(n, labels)``."""
        out = np.zeros((known.shape[0], self.label_count), np.float32)
        for column, label in enumerate(self.known_labels):
            if 1 <= label <= self.label_count:
                out[:, label - 1] = known[:, column]
        return out

    @cached_property
    def _feature_fingerprint(self) -> str:
        """Digest of the feature selection alone (what a block's features depend on besides its voxels)."""
        header = {k: v for k, v in self.to_message()[0].items() if k in ("specs", "named_in_2d", "channels",
                                                                           "volumetric")}
        return hashlib.sha1(json.dumps(header, sort_keys=True).encode()).hexdigest()[:20]

    def fingerprint(self) -> str:
        """Digest of everything the results depend on (features and classifier)."""
        header, arrays = self.to_message()
        h = hashlib.sha1(json.dumps(header, sort_keys=True).encode())
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:20]

    def to_message(self) -> tuple[dict, list[np.ndarray]]:
        """A JSON-able header and a list of arrays that :meth:`from_message` turns back into this."""
        fs = self.features
        header = {
            "specs": [[s.feature_id, s.scale, s.in_2d] for s in fs.specs],
            "named_in_2d": list(fs.named_in_2d),
            "channels": fs.channels,
            "volumetric": fs.volumetric,
            "known_labels": list(self.known_labels),
            "label_count": self.label_count,
            "forests": None,
        }
        arrays: list[np.ndarray] = []
        if self.forests is not None:
            header["forests"] = {"class_count": self.forests.class_count,
                                 "feature_count": self.forests.feature_count}
            arrays = [getattr(self.forests, f) for f in _FOREST_FIELDS]
        return header, arrays

    def save(self, path: str) -> None:
        """Store as ``.npz`` (JSON header plus arrays, no pickle)."""
        header, arrays = self.to_message()
        named = {f"a{i}": a for i, a in enumerate(arrays)}
        np.savez(path, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **named)

    @classmethod
    def load(cls, path: str) -> Pipeline:
        """Inverse of :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(data["header"].tobytes().decode())
            arrays = [data[f"a{i}"] for i in range(len(data.files) - 1)]
        return cls.from_message(header, arrays)

    @classmethod
    def from_message(cls, header: dict, arrays: list[np.ndarray]) -> Pipeline:
        """Inverse of :meth:`to_message`; ValueError for anything malformed (sizes, counts, forest indices)."""
        try:
            specs = tuple(FeatureSpec(str(f), _scale(s), bool(d)) for f, s, d in header["specs"])
            fs = FeatureSet(specs, whole_number(header["channels"], 1, 1024), bool(header["volumetric"]),
                            tuple(bool(n) for n in header["named_in_2d"]))
            forests = None
            if header["forests"] is not None:
                if len(arrays) != len(_FOREST_FIELDS):
                    raise ValueError(f"{len(arrays)} forest arrays instead of {len(_FOREST_FIELDS)}")
                counts = {k: whole_number(header["forests"][k], 1, 1 << 16) for k in ("class_count", "feature_count")}
                forests = CompiledForests(**dict(zip(_FOREST_FIELDS, arrays)), **counts).validate()
                if forests.feature_count != fs.column_count:
                    raise ValueError("the forest's feature count differs from the feature selection's")
            known = tuple(whole_number(v, 0, 4096) for v in header["known_labels"])
            return cls(fs, forests, known, whole_number(header["label_count"], 0, 4096))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed pipeline: {str(exc)[:200]}") from None


def combined_kind(kinds: tuple[str, ...] | list[str]) -> str:
    """One kind that computes several results from the same features (their channels side by side)."""
    return "+".join(kinds)


def split_kind(kind: str) -> tuple[str, ...]:
    """The results a (possibly combined) kind stands for."""
    return tuple(kind.split("+"))


def _scale(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        raise ValueError(f"feature scale {str(value)[:40]} out of range")
    return float(value)


def _buffer(workspace: dict, name: str, size: int) -> np.ndarray:
    """A float32 scratch buffer of at least ``size`` elements, reused between calls."""
    buf = workspace.get(name)
    if buf is None or buf.size < size:
        buf = workspace[name] = np.empty(size, np.float32)
    return buf


def simple_segmentation(probs: np.ndarray) -> np.ndarray:
    """ilastik's Simple Segmentation: the most probable label (1-based), uint8 with one channel."""
    return (np.argmax(probs, axis=-1) + 1).astype(np.uint8)[..., None]


def uncertainty(probs: np.ndarray) -> np.ndarray:
    """ilastik's uncertainty: ``1 - (p_max - p_second)``, float32 with one channel."""
    if probs.shape[-1] < 2:
        return np.ones(probs.shape[:-1] + (1,), np.float32)
    top = np.sort(probs, axis=-1)
    return (1.0 - (top[..., -1] - top[..., -2])).astype(np.float32)[..., None]
