#!/usr/bin/python3
"""Oracle helper run with Debian's python3 + vigra: features and forest predictions from real vigra.

    vigra_oracle.py features PROJECT RAW OUT.npy        # vigra_reference's feature matrix
    vigra_oracle.py predict  PROJECT[:GROUP] X.npy OUT.npy  # ilastik-style averaged forest output
"""
import os
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "tools"))
import vigra  # noqa: E402
import vigra_reference  # noqa: E402


def main(argv):
    mode = argv[0]
    if mode == "features":
        img = vigra_reference.load_raw(argv[2])
        with h5py.File(argv[1], "r") as f:
            X = vigra_reference.features(img, f["FeatureSelections"])
        np.save(argv[3], X.reshape(-1, X.shape[-1]))
    elif mode == "predict":
        project, _, group = argv[1].partition(":")
        group = group or "PixelClassification/ClassifierForests"
        X = np.ascontiguousarray(np.load(argv[2]), np.float32)
        with h5py.File(project, "r") as f:
            names = sorted(k for k in f[group] if k.startswith("Forest"))
        forests = [vigra.learning.RandomForest(project, group + "/" + n) for n in names]
        parts = [rf.predictProbabilities(X) * rf.treeCount() for rf in forests]
        np.save(argv[3], (sum(parts) / sum(rf.treeCount() for rf in forests)).astype(np.float32))
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main(sys.argv[1:])
