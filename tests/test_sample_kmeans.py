from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import pipeline
from pipeline.cluster import KMeansModel, load_model, nearest_centroid, pixel_keys, sample_pixels
from pipeline.errors import InputError, ModelError
from pipeline.testing import SHARED_DATA


def _cube(arr: np.ndarray, chunks) -> xr.DataArray:
    data = dask.array.from_array(arr, chunks=(arr.shape[0],) + tuple(chunks))
    return xr.DataArray(data, dims=("feature", "y", "x"),
                        coords={"feature": [f"f{i}" for i in range(arr.shape[0])],
                                "scale": ("feature", [True] * arr.shape[0])})


_RNG = np.random.default_rng(42)
_ARR = _RNG.normal(size=(3, 37, 29)).astype(np.float32)
_ARR[:, 3:9, 4:7] = np.nan


@settings(max_examples=25, deadline=None)
@given(cy=st.integers(1, 37), cx=st.integers(1, 29), size=st.integers(1, 2000),
       seed=st.integers(0, 2**32))
@example(cy=37, cx=29, size=50, seed=0)
@example(cy=1, cx=1, size=50, seed=1)
@example(cy=5, cx=7, size=5000, seed=2)
def test_sample_does_not_depend_on_chunking(cy, cx, size, seed):
    with dask.config.set(scheduler="synchronous"):
        ref, n_ref, _ = sample_pixels(_cube(_ARR, (37, 29)), size, seed).compute()
        got, n_got, _ = sample_pixels(_cube(_ARR, (cy, cx)), size, seed).compute()
    np.testing.assert_array_equal(ref, got)
    assert n_ref == n_got == np.isfinite(_ARR).all(0).sum()
    # one pass keeps the keys below an oversampled threshold: a tiny sample of a small
    # image can come up short (draw_sample then draws again from the exact count)
    assert len(ref) <= min(size, n_ref)
    assert np.isfinite(ref).all()
    sample = pipeline.cluster.draw_sample(_cube(_ARR, (cy, cx)), size, seed)
    assert len(sample.x) == min(size, n_ref)


def test_sample_is_the_smallest_keys_among_valid_pixels():
    yy, xx = np.nonzero(np.isfinite(_ARR).all(0))
    keys = pixel_keys(yy, xx, _ARR.shape[2], seed=9)
    order = np.argsort(keys)[:100]
    expected = _ARR[:, yy[order], xx[order]].T
    got, _, _ = sample_pixels(_cube(_ARR, (10, 10)), 100, 9).compute(scheduler="synchronous")
    np.testing.assert_array_equal(got, expected.astype(np.float64))


def test_sample_seed_changes_the_sample():
    a, _, _ = sample_pixels(_cube(_ARR, (10, 10)), 100, 1).compute(scheduler="synchronous")
    b, _, _ = sample_pixels(_cube(_ARR, (10, 10)), 100, 2).compute(scheduler="synchronous")
    assert not np.array_equal(a, b)


_BIG = np.random.default_rng(7).normal(size=(2, 96, 80)).astype(np.float32)
_BIG[:, 40:50, :] = np.nan


@settings(max_examples=15, deadline=None)
@given(cy=st.integers(3, 96), cx=st.integers(3, 80), seed=st.integers(0, 1000))
@example(cy=16, cx=16, seed=0)
@example(cy=96, cx=80, seed=5)
def test_cell_subset_sample_does_not_depend_on_chunking(cy, cx, seed):
    kw = dict(cell=16, min_cells=6)
    with dask.config.set(scheduler="synchronous"):
        ref = sample_pixels(_cube(_BIG, (96, 80)), 40, seed, **kw).compute()
        got = sample_pixels(_cube(_BIG, (cy, cx)), 40, seed, **kw).compute()
    np.testing.assert_array_equal(ref[0], got[0])
    assert ref[1] == got[1] and ref[2] == got[2] < 1.0
    assert 0 < len(ref[0]) <= 40


def test_cell_subset_reads_only_the_chosen_cells():
    from pipeline.cluster._sample import _chosen_cells, cell_fraction

    frac = cell_fraction(96, 80, 40, 16, 6)
    chosen = _chosen_cells(96, 80, frac, 3, 16)
    assert 0 < chosen.sum() < chosen.size
    graph = sample_pixels(_cube(_BIG, (16, 16)), 40, 3, cell=16, min_cells=6)
    read = {k[1:] for k in dict(graph.__dask_graph__()) if isinstance(k, tuple)
            and str(k[0]).startswith("array")}
    assert read == {(0, int(i), int(j)) for i, j in zip(*np.nonzero(chosen), strict=True)}
    # every sampled pixel lies in a chosen cell
    x, n_valid, fraction = graph.compute(scheduler="synchronous")
    yy, xx = np.nonzero(np.isfinite(_BIG).all(0) & np.kron(chosen, np.ones((16, 16), bool)))
    assert n_valid == len(yy)
    rows = {tuple(r) for r in _BIG[:, yy, xx].T.astype(np.float64)}
    assert {tuple(r) for r in x} <= rows


def test_sparse_image_falls_back_to_every_cell():
    from pipeline.cluster._training import draw_sample

    sparse = np.full((1, 96, 80), np.nan, np.float32)
    sparse[0, 90, 70] = 1.0
    s = draw_sample(_cube(sparse, (16, 16)), 10, 0)
    assert len(s) == 1 and s.n_valid == 1
    # 2 % valid: one pass yields too few candidates, the second pass yields `size`
    sparse[0, ::7, ::7] = 2.0
    n = int(np.isfinite(sparse).sum())
    s = draw_sample(_cube(sparse, (16, 16)), 60, 0)
    assert s.n_valid == n and len(s) == 60


def test_nearest_centroid_kernel_matches_numpy():
    rng = np.random.default_rng(1)
    block = rng.normal(size=(4, 50, 60)).astype(np.float32)
    block[:, 0, :5] = np.nan
    block[2, 1, 1] = np.nan
    cents = rng.normal(size=(7, 4)).astype(np.float32)
    w = rng.uniform(0.5, 2, 4).astype(np.float32)
    got = nearest_centroid(block, cents, w, 255, np.dtype(np.uint8))
    d = (w[None, :, None, None] * (block[None] - cents[:, :, None, None]) ** 2).sum(1)
    ref = np.argmin(np.nan_to_num(d, nan=np.inf), axis=0).astype(np.uint8)
    ref[~np.isfinite(block).all(0)] = 255
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.uint8
    u16 = nearest_centroid(block, cents, w, 65535, np.dtype(np.uint16))
    assert u16.dtype == np.uint16 and u16[0, 0] == 65535


def _inertia(x, centroids):
    return ((x[:, None, :] - centroids[None]) ** 2).sum(-1).min(1).sum()


def _check_inertia_against_sklearn(image):
    feats = pipeline.compute_features(image, ["bands"])
    model = pipeline.fit(feats, k=8, seed=0, sample_size=20000)
    from pipeline.cluster._sample import sample_pixels as sp

    sample, _, _ = sp(feats, 20000, 0).compute()
    xs = (sample - model.mean) / model.scale
    ours = _inertia(xs, model.centroids)
    ref = KMeans(n_clusters=8, n_init=4, random_state=0).fit(xs).inertia_
    assert ours <= ref * 1.01, (ours, ref)
    assert model.inertia == pytest.approx(ours, rel=1e-9)


def test_inertia_within_one_percent_of_sklearn_synthetic(scene):
    _check_inertia_against_sklearn(pipeline.open_image(scene.path, chunks=96))


def test_inertia_within_one_percent_of_sklearn_real_multispectral():
    # RGB.byte.tif is a Landsat 7 subset (3 bands, nodata collar); the 4-band
    # RGBA.uint16.tif of the same collection is constant in its colour bands.
    path = SHARED_DATA / "geotiff" / "RGB.byte.tif"
    if not path.exists():
        pytest.skip(f"optional real data not present: {path}")
    _check_inertia_against_sklearn(pipeline.open_image(path, chunks=128))


def test_ari_against_truth_and_class_order(scene):
    image = pipeline.open_image(scene.path, chunks=100)
    labels, model = pipeline.segment(image, ["bands"], k=scene.n_classes, seed=0)
    truth = pipeline.open_image(scene.truth_path).values[0]
    got = labels.values
    valid = truth != 255
    assert (got[~valid] == model.nodata).all()
    assert adjusted_rand_score(truth[valid], got[valid]) >= 0.95
    c = model.centroids_original
    assert all(tuple(c[i]) <= tuple(c[i + 1]) for i in range(len(c) - 1))
    assert labels.rio.crs == image.rio.crs and labels.rio.nodata == 255


def test_fit_is_deterministic_for_any_chunking(scene):
    models = []
    for chunks in (64, 100, 320):
        feats = pipeline.compute_features(pipeline.open_image(scene.path, chunks=chunks))
        models.append(pipeline.fit(feats, k=5, seed=4, sample_size=5000))
    for m in models[1:]:
        np.testing.assert_array_equal(m.centroids, models[0].centroids)
        np.testing.assert_array_equal(m.mean, models[0].mean)


def test_refine_is_exact_for_any_chunking(scene):
    models = []
    for chunks in (48, 320):
        feats = pipeline.compute_features(pipeline.open_image(scene.path, chunks=chunks))
        models.append(pipeline.fit(feats, k=5, seed=0, sample_size=3000, refine=2))
    np.testing.assert_array_equal(models[0].centroids, models[1].centroids)
    assert models[0].n_iter > 0


def test_model_json_round_trip_is_exact(tmp_path, scene):
    feats = pipeline.compute_features(pipeline.open_image(scene.path), [{"bands": [1, 3]}])
    model = pipeline.fit(feats, k=3, seed=1, sample_size=3000)
    path = model.save(tmp_path / "model.json")
    again = load_model(path)
    for name in ("centroids", "mean", "scale"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name))
    d = json.loads(path.read_text())
    assert d["features"] == [{"bands": {"scale": True, "bands": [1, 3]}}]
    assert d["feature_names"] == ["band1", "band3"]
    assert d["fit"]["seed"] == 1 and "scikit-learn" in d["versions"]
    assert np.allclose(d["centroids_original"], model.centroids_original)
    from dask.base import tokenize

    assert tokenize(again) == tokenize(model)


def test_model_errors(tmp_path, scene):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ModelError, match="not a tileseg model"):
        load_model(bad)
    with pytest.raises(ModelError, match="cannot read"):
        load_model(tmp_path / "none.json")
    model = KMeansModel(centroids=np.zeros((2, 2)), mean=np.zeros(2), scale=np.ones(2),
                        features=[], feature_names=["a", "b"], n_bands=2)
    feats = pipeline.compute_features(pipeline.open_image(scene.path))
    with pytest.raises(ModelError, match="do not match"):
        pipeline.predict(feats, model)


def test_all_nodata_and_too_few_pixels():
    arr = np.full((2, 20, 20), np.nan, np.float32)
    with pytest.raises(InputError, match="every pixel is nodata"):
        pipeline.fit(_cube(arr, (10, 10)), k=2)
    arr[:, 0, 0] = 1
    with pytest.raises(InputError, match="only 1 valid pixels"):
        pipeline.fit(_cube(arr, (10, 10)), k=2)
