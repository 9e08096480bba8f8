"""Our numba K-means (pipeline.cluster._lloyd) against scikit-learn's, and its start-up."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from sklearn.cluster import KMeans
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus

from pipeline.cluster._kmeans import fit_sample
from pipeline.cluster._lloyd import kmeans_plusplus, lloyd, tolerance
from pipeline.testing import write_raster


def _blobs(n: int, k: int, f: int, seed: int, spread: float = 3.0) -> np.ndarray:
    """Standardised Gaussian blobs (overlapping enough for K-means to have work)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, f))
    x = centres[rng.integers(k, size=n)] + rng.normal(size=(n, f))
    return (x - x.mean(0)) / x.std(0)


def _inertia(x: np.ndarray, centres: np.ndarray) -> float:
    return float(((x[:, None, :] - centres[None]) ** 2).sum(-1).min(1).sum())


@pytest.mark.parametrize(("n", "k", "f", "seed"), [
    (20_000, 3, 4, 1),
    (100_000, 8, 5, 2),
    (200_000, 12, 6, 3),
])
def test_inertia_within_one_percent_of_sklearn(n, k, f, seed):
    x = _blobs(n, k, f, seed)
    centres, inertia, n_iter = fit_sample(x, k, seed=0)
    ref = KMeans(n_clusters=k, n_init=4, random_state=0).fit(x).inertia_
    assert inertia <= ref * 1.01, (inertia, ref)
    assert inertia == pytest.approx(_inertia(x, centres), rel=1e-9)
    assert centres.shape == (k, f) and centres.dtype == np.float64 and n_iter >= 1


def test_inertia_with_many_duplicated_points():
    # 70 % of the rows are 5 points repeated: k-means++ rarely draws a duplicate, and
    # Lloyd passes may leave clusters empty (relocated to the farthest rows)
    rng = np.random.default_rng(5)
    x = _blobs(30_000, 6, 4, 5)
    x[: 21_000] = x[rng.integers(21_000, 30_000, size=5)][rng.integers(5, size=21_000)]
    rng.shuffle(x)
    centres, inertia, _ = fit_sample(x, 8, seed=0)
    ref = KMeans(n_clusters=8, n_init=4, random_state=0).fit(x).inertia_
    assert inertia <= ref * 1.01, (inertia, ref)
    assert len(np.unique(centres, axis=0)) == 8


def test_empty_cluster_is_relocated_like_sklearn():
    # Two identical starting centres: ties go to the lower index, so the second one is
    # empty after the first assignment and takes the row farthest from its centre.
    x = _blobs(5_000, 4, 4, 6)
    init = x[[0, 1, 2, 2]].copy()
    centres, inertia, n_iter = lloyd(x, init)
    assert len(np.unique(centres, axis=0)) == 4
    assert inertia == pytest.approx(_inertia(x, centres), rel=1e-12)
    km = KMeans(n_clusters=4, init=init, n_init=1, algorithm="lloyd").fit(x)
    np.testing.assert_allclose(centres, km.cluster_centers_, rtol=0, atol=1e-9)
    assert inertia == pytest.approx(km.inertia_, rel=1e-9)
    assert n_iter == km.n_iter_


@pytest.mark.parametrize(("max_iter", "tol"), [(300, 1e-4), (300, 0.0), (2, 1e-4)])
def test_lloyd_stops_like_sklearn(max_iter, tol):
    x = _blobs(20_000, 6, 5, 7, spread=1.5)
    init = x[:6].copy()
    centres, inertia, n_iter = lloyd(x, init, max_iter=max_iter, tol=tol)
    km = KMeans(n_clusters=6, init=init, n_init=1, max_iter=max_iter, tol=tol,
                algorithm="lloyd").fit(x)
    assert n_iter == km.n_iter_ <= max_iter
    np.testing.assert_allclose(centres, km.cluster_centers_, rtol=0, atol=1e-9)
    assert inertia == pytest.approx(km.inertia_, rel=1e-9)


def test_tolerance_is_sklearns():
    x = _blobs(1_000, 3, 4, 8) * [1, 2, 3, 4]
    assert tolerance(x, 1e-4) == pytest.approx(np.var(x, axis=0).mean() * 1e-4, rel=1e-12)
    assert tolerance(x, 0) == 0


def test_fit_is_bit_identical_for_the_same_seed():
    x = _blobs(60_000, 8, 4, 9)
    a = fit_sample(x, 8, seed=3)
    b = fit_sample(x.copy(), 8, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
    c = fit_sample(x, 8, seed=4)
    # another seed draws other starts (the optimum it reaches may well be the same)
    rng_a, rng_c = np.random.default_rng(3), np.random.default_rng(4)
    assert not np.array_equal(kmeans_plusplus(x[:50_000], 8, rng_a)[1],
                              kmeans_plusplus(x[:50_000], 8, rng_c)[1])
    assert c[1] <= a[1] * 1.01 and a[1] <= c[1] * 1.01


def test_fit_is_bit_identical_across_threads():
    from concurrent.futures import ThreadPoolExecutor

    x = _blobs(30_000, 5, 4, 10)
    ref = fit_sample(x, 5, seed=1)
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda _: fit_sample(x, 5, seed=1), range(4)))
    for g in got:
        np.testing.assert_array_equal(g[0], ref[0])
        assert g[1:] == ref[1:]


class _LegacyAsGenerator:
    """The Generator calls kmeans_plusplus makes, answered by a legacy RandomState."""

    def __init__(self, seed: int) -> None:
        self._rs = np.random.RandomState(seed)

    def integers(self, n):
        # scikit-learn draws the first centre with probability sample_weight / sum
        return self._rs.choice(n, p=np.ones(n) / n)

    def random(self, size):
        return self._rs.uniform(size=size)


@pytest.mark.parametrize(("k", "trials"), [(2, None), (8, None), (12, None), (8, 1), (5, 7)])
def test_kmeans_plusplus_picks_sklearns_rows(k, trials):
    # fed the same draws, the greedy seeding chooses the same rows as scikit-learn's
    x = _blobs(4_000, k, 4, 11, spread=1.0)
    for seed in range(3):
        _, ours = kmeans_plusplus(x, k, _LegacyAsGenerator(seed), n_local_trials=trials)
        _, ref = sk_kmeans_plusplus(x, k, random_state=np.random.RandomState(seed),
                                    n_local_trials=trials)
        np.testing.assert_array_equal(ours, ref)


def test_kmeans_plusplus_one_centre_per_separated_blob():
    rng = np.random.default_rng(12)
    k = 10
    centres = rng.normal(size=(k, 4)) * 100
    blob = rng.integers(k, size=20_000)
    x = centres[blob] + rng.normal(scale=0.1, size=(20_000, 4))
    for seed in range(5):
        chosen, idx = kmeans_plusplus(x, k, np.random.default_rng(seed))
        assert sorted(blob[idx]) == list(range(k))
        np.testing.assert_array_equal(chosen, x[idx])


def test_kmeans_plusplus_picks_distinct_rows_among_duplicates():
    # 5 distinct points repeated: a chosen point is at distance 0, so never drawn again
    rng = np.random.default_rng(13)
    points = rng.normal(size=(5, 3))
    x = points[rng.integers(5, size=10_000)]
    for seed in range(5):
        chosen, idx = kmeans_plusplus(x, 5, np.random.default_rng(seed))
        assert len(set(idx.tolist())) == 5
        assert {tuple(c) for c in chosen} == {tuple(p) for p in points}


def test_restarts_share_one_generator():
    # the restarts' seedings are successive draws of default_rng(seed), so fit_sample
    # with n_init=1 starts from the first of them
    x = _blobs(20_000, 4, 4, 14)
    init, _ = kmeans_plusplus(x, 4, np.random.default_rng(2))
    expected = lloyd(x, lloyd(x, init)[0])
    got = fit_sample(x, 4, seed=2, n_init=1)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]


def test_bad_arguments():
    x = _blobs(10, 2, 2, 15)
    with pytest.raises(ValueError, match="k-means"):
        kmeans_plusplus(x, 11, np.random.default_rng(0))
    with pytest.raises(ValueError, match="lloyd"):
        lloyd(x, np.zeros((11, 2)))
    with pytest.raises(ValueError, match="lloyd"):
        lloyd(x, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="max_iter"):
        lloyd(x, x[:2], max_iter=0)


_WRAPPER = textwrap.dedent("""
    import atexit, sys

    def report():
        loaded = sorted(m for m in sys.modules if m == "sklearn" or m.startswith("sklearn."))
        print("SKLEARN-MODULES:", ",".join(loaded) or "none")

    atexit.register(report)  # runs after the command's SystemExit
    sys.argv = ["tileseg", "run", sys.argv[1], "-q"]
    from pipeline.cli import console
    console()
""")


def test_default_kmeans_run_does_not_import_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.integers(0, 4, size=(48, 48)) * 1000
             + rng.integers(0, 50, size=(3, 48, 48))).astype(np.uint16)
    write_raster(tmp_path / "tiny.tif", image, tile=16)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"input": str(tmp_path / "tiny.tif"),
                                   "output": str(tmp_path / "out"), "cluster": {"k": 4}}))
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(_WRAPPER)
    proc = subprocess.run([sys.executable, str(wrapper), str(cfg)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "labels.tif").exists()
    assert "SKLEARN-MODULES: none" in proc.stdout, proc.stdout
