import dataclasses

import h5py
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from backend.compute.forest import CompiledForests, _float32_ceiling
from backend.errors import ProjectError
from backend.io.forest_io import _vigra_thresholds, forest_from_sklearn, read_forest, write_forest


def _data(seed=0, n=600, f=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    y = 1 + (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.3).astype(int) + (x[:, 2] > 1).astype(int)
    return x, y


def test_float32_ceiling_keeps_comparisons_exact():
    rng = np.random.default_rng(1)
    t = rng.normal(size=2000) * 10
    t[:5] = [0.0, 1.0, -2.5, 3.4028234663852886e38, 1e-45]
    t32 = _float32_ceiling(t)
    with np.errstate(over="ignore"):  # the step above float32's largest value is inf
        x = np.concatenate([t.astype(np.float32), np.nextafter(t.astype(np.float32), np.float32(np.inf)),
                            np.nextafter(t.astype(np.float32), np.float32(-np.inf))])
    for xs in x.reshape(3, -1):
        assert np.array_equal(xs.astype(np.float64) < t, xs < t32)


def test_sklearn_threshold_conversion_is_exact():
    thresholds = np.random.default_rng(2).normal(size=500) * 5
    for thr, t in zip(thresholds, _vigra_thresholds(thresholds)):
        for x in np.float32(thr) + np.array([-1, 0, 1], np.float32) * np.spacing(np.float32(thr)):
            assert (float(x) <= thr) == (float(x) < t)


def test_written_forest_predicts_like_sklearn(tmp_path):
    x, y = _data()
    rf = RandomForestClassifier(n_estimators=15, random_state=0).fit(x, y)
    forest = forest_from_sklearn(rf, x.shape[1])
    with h5py.File(tmp_path / "f.h5", "w") as f:
        write_forest(f.create_group("Forest0000"), forest, len(y))
    with h5py.File(tmp_path / "f.h5", "r") as f:
        loaded = read_forest(f["Forest0000"])
    assert loaded.labels == (1, 2, 3) and loaded.feature_count == 6 and len(loaded.trees) == 15
    test_x, _ = _data(seed=9, n=3000)
    ours = CompiledForests.build([loaded]).predict(test_x)
    np.testing.assert_allclose(ours, rf.predict_proba(test_x), atol=1e-5)


def test_forest_averaging_and_nan_rows():
    x, y = _data()
    forests = [forest_from_sklearn(RandomForestClassifier(n_estimators=n, random_state=n).fit(x, y), 6)
               for n in (3, 5)]
    compiled = CompiledForests.build(forests)
    singles = [CompiledForests.build([f]).predict(x) for f in forests]
    expected = ((singles[0] * np.float32(3) + singles[1] * np.float32(5)) / np.float32(8)).astype(np.float32)
    got = compiled.predict(x)
    assert np.array_equal(got, expected)
    x[4, 2] = np.nan
    assert np.array_equal(compiled.predict(x[:6])[4], np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        compiled.predict(x[:, :5])


def test_unsupported_node_type_is_rejected(tmp_path):
    x, y = _data()
    forest = forest_from_sklearn(RandomForestClassifier(n_estimators=2, random_state=0).fit(x, y), 6)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        write_forest(f.create_group("Forest0000"), forest, len(y))
        topo = f["Forest0000/Tree_00/topology"]
        data = topo[()]
        data[2] = 1  # a hyperplane node
        topo[...] = data
    with h5py.File(tmp_path / "f.h5", "r") as f:
        with pytest.raises(ProjectError, match="node type 1"):
            CompiledForests.build([read_forest(f["Forest0000"])])


def _damaged(change) -> list:
    """A real two-tree forest whose first tree's topology and parameters ``change`` alters in place."""
    x, y = _data()
    forest = forest_from_sklearn(RandomForestClassifier(n_estimators=2, random_state=0).fit(x, y), 6)
    tree = forest.trees[0]
    topology, parameters = tree.topology.copy(), tree.parameters.copy()
    change(topology, parameters)
    return [dataclasses.replace(forest, trees=(type(tree)(topology, parameters), *forest.trees[1:]))]


@pytest.mark.parametrize("change,message", [
    (lambda t, p: t.__setitem__(4, t.size), "out of range"),  # the root's first child beyond the table
    (lambda t, p: t.__setitem__(5, t[4]), "reached twice"),  # both children the same node
    (lambda t, p: t.__setitem__(4, 2), "reached twice"),  # a loop back to the root
    (lambda t, p: t.__setitem__(3, p.size), "parameters out of range"),  # the root's threshold beyond the table
    (lambda t, p: t.__setitem__(3, -5), "parameters out of range"),
])
def test_damaged_vigra_trees_are_refused(change, message):
    with pytest.raises(ProjectError, match=f"damaged forest .*{message}"):
        CompiledForests.build(_damaged(change))


def test_infinite_features_walk_like_the_largest_finite_ones():
    x, y = _data()
    compiled = CompiledForests.build([forest_from_sklearn(RandomForestClassifier(n_estimators=9, random_state=1)
                                                          .fit(x, y), 6)])
    test_x, _ = _data(seed=4, n=21)  # not a multiple of 8: the lockstep walk and the walk of the rest
    test_x[::2, 0], test_x[1::3, 2] = np.inf, -np.inf
    finite = np.nan_to_num(test_x, posinf=np.finfo(np.float32).max, neginf=np.finfo(np.float32).min)
    assert np.array_equal(compiled.predict(test_x), compiled.predict(finite))
    assert np.allclose(compiled.predict(test_x).sum(axis=1), 1, atol=1e-5)  # a leaf never stepped past
