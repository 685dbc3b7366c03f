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


def test_every_prediction_path_is_bit_identical_to_vigra(tmp_path, vigra_python):
    """Trees of up to 32 leaves and up to 64 (QuickScorer in one and two words), larger ones (walked), leaves of
    one class (votes counted) and mixed ones (leaf weights added), a chunk and a part of one: all as vigra."""
    from tests.conftest import run_oracle

    rng = np.random.default_rng(5)
    x = rng.normal(size=(1500, 6)).astype(np.float32)
    y = 1 + (x[:, 0] + 0.5 * x[:, 1] ** 2 + rng.normal(scale=0.7, size=len(x)) > 0.3).astype(int)
    test_x = rng.normal(size=(300, 6)).astype(np.float32)
    test_x[7, 3] = np.nan
    grown = {n: {"n": n} for n in (60, 400, 1500)}  # grown until pure: leaves of one class
    limited = {leaves: {"max_leaf_nodes": leaves, "min_samples_leaf": 6} for leaves in (20, 50, None)}
    for name, kinds in {"pure": grown, "mixed": limited}.items():
        fitted = [RandomForestClassifier(n_estimators=4, random_state=i, **{k: v for k, v in kind.items() if k != "n"})
                  .fit(x[:kind.get("n")], y[:kind.get("n")]) for i, kind in enumerate(kinds.values())]
        sizes = [tree.get_n_leaves() for rf in fitted for tree in rf.estimators_]
        forests = [forest_from_sklearn(rf, 6) for rf in fitted]
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            for i, forest in enumerate(forests):
                write_forest(f.create_group(f"Forests/Forest{i:04d}"), forest, len(y))
        np.save(tmp_path / "x.npy", test_x)
        run_oracle(vigra_python, "predict", f"{tmp_path / name}.h5:Forests", str(tmp_path / "x.npy"),
                   str(tmp_path / "p.npy"))
        compiled = CompiledForests.build(forests)
        assert compiled._bit_tables[-1] == (name == "pure")  # votes counted, or leaf weights added
        assert min(sizes) <= 32 < max(s for s in sizes if s <= 64) and max(sizes) > 64
        assert np.array_equal(compiled.predict(test_x), np.load(tmp_path / "p.npy"))
        assert np.array_equal(compiled.predict_planar(np.ascontiguousarray(test_x[:131].T)),
                              np.load(tmp_path / "p.npy")[:131])
