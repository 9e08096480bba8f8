"""Every clustering method: truth recovered, chunking-independent, safe model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
from dask.base import tokenize
from sklearn.metrics import adjusted_rand_score

import pipeline
from pipeline.cluster import (
    METHODS,
    ClusterModel,
    KMeansModel,
    Sample,
    agglomerate,
    draw_sample,
    fit,
    fit_on,
    load_model,
    predict,
    predict_confidence,
)
from pipeline.errors import InputError, ModelError
from pipeline.testing import assert_same_labelling

# small options that keep every fit fast on the 320 x 320 test scene
_OPTIONS = {"hierarchical": {"n_micro": 64}, "kmeans": {"n_init": 2}}
_SAMPLE = 5000


def _features(scene, chunks):
    return pipeline.compute_features(pipeline.open_image(scene.path, chunks=chunks))


def _fit(feats, method, **kw):
    k = None if METHODS[method].finds_k else 5
    return fit(feats, k, method=method, seed=2, sample_size=_SAMPLE,
               **{**_OPTIONS.get(method, {}), **kw})


def _core(model: ClusterModel) -> dict:
    d = model.to_dict()
    d.pop("versions")
    return d


@pytest.fixture(scope="module")
def truth(scene):
    return pipeline.open_image(scene.truth_path).values[0]


@pytest.fixture(scope="module")
def fitted(scene):
    """Every method fitted once on 64-pixel chunks (shared by the tests below)."""
    feats = _features(scene, 64)
    return feats, {m: _fit(feats, m) for m in METHODS}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_recovers_truth_for_any_chunking(method, scene, truth, fitted):
    feats, models = fitted
    model = models[method]
    labels = predict(feats, model).values
    other_feats = _features(scene, 100)  # uneven last chunks
    other = _fit(other_feats, method)
    assert _core(other) == _core(model)
    np.testing.assert_array_equal(predict(other_feats, other).values, labels)
    valid = truth != 255
    assert (labels[~valid] == model.nodata).all()
    assert (labels[valid] != model.nodata).all()
    assert adjusted_rand_score(truth[valid], labels[valid]) >= 0.9
    # class IDs are ordered by class centre (noise last, without a centre)
    centres = model.class_centres()
    n = model.k - (model.noise_label is not None)
    assert all(tuple(centres[i]) <= tuple(centres[i + 1]) for i in range(n - 1))
    assert model.k == (6 if method in ("dbscan", "hdbscan") else 5)


@pytest.mark.parametrize("method", list(METHODS))
def test_save_load_is_exact_and_pickle_free(method, tmp_path, fitted):
    feats, models = fitted
    model = models[method]
    path = model.save(tmp_path / "model.json")
    again = load_model(path)
    assert type(again) is type(model) and _core(again) == _core(model)
    assert tokenize(again) == tokenize(model)
    block = feats.values[:, 40:120, 30:90]
    np.testing.assert_array_equal(again.predict_block(block), model.predict_block(block))
    d = json.loads(path.read_text())
    assert d["method"] == method and d["k"] == model.k
    npz = tmp_path / "model.npz"
    if method in ("dbscan", "hdbscan"):
        assert d["arrays"]["file"] == "model.npz"
        with np.load(npz, allow_pickle=False) as z:
            assert z["core"].shape[1] == 4
        assert d["class_names"][-1] == "noise" and d["noise_label"] == model.k - 1
    else:
        assert not npz.exists() and "arrays" not in d


def test_tampered_or_missing_arrays_are_refused(tmp_path, fitted):
    model = fitted[1]["dbscan"]
    path = model.save(tmp_path / "model.json")
    npz = tmp_path / "model.npz"
    data = npz.read_bytes()
    npz.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(path)
    npz.unlink()
    with pytest.raises(ModelError, match="cannot read the model's arrays"):
        load_model(path)
    d = json.loads(path.read_text())
    d["arrays"]["file"] = "../elsewhere.npz"
    path.write_text(json.dumps(d))
    with pytest.raises(ModelError, match="file name beside the model"):
        load_model(path)
    d.pop("arrays")
    path.write_text(json.dumps({**d, "method": "spectral"}))
    with pytest.raises(ModelError, match="unknown model method 'spectral'"):
        load_model(path)


def test_generic_fit_equals_the_kmeans_fit(scene):
    from pipeline.cluster._kmeans import fit as fit_kmeans_only

    feats = _features(scene, 80)
    a = pipeline.fit(feats, 4, seed=1, sample_size=3000)
    b = fit_kmeans_only(feats, 4, seed=1, sample_size=3000)
    assert isinstance(a, KMeansModel) and _core(a) == _core(b)


@pytest.mark.parametrize("method", ["meanshift", "dbscan", "hdbscan"])
def test_methods_that_find_k_ignore_it_with_a_warning(method, fitted):
    feats, models = fitted
    with pytest.warns(UserWarning, match=f"cluster.k=5 is ignored: method '{method}'"):
        model = fit(feats, 5, method=method, seed=2, sample_size=_SAMPLE)
    assert _core(model) == _core(models[method])


def test_unknown_option_and_bad_k(fitted):
    sample = Sample.from_array(np.random.default_rng(0).normal(size=(50, 2)))
    with pytest.raises(TypeError, match="takes the options eps, min_samples"):
        fit_on(sample, method="dbscan", bandwidth=1.0)
    with pytest.raises(ValueError, match="unknown clustering method 'spectral'"):
        fit_on(sample, 3, method="spectral")
    with pytest.raises(ValueError, match="cluster.k"):
        fit_on(sample, 1)


def test_density_noise_class_and_nodata(fitted):
    model = fitted[1]["dbscan"]
    raw = model.class_centres()
    block = np.empty((4, 1, 4), np.float32)
    block[:, 0, 0] = raw[0]                      # a cluster centre
    block[:, 0, 1] = raw[0] + 50 * model.scale   # far from every core sample
    block[:, 0, 2] = np.nan                      # nodata
    block[:, 0, 3] = raw[1]
    labels = model.predict_block(block)
    assert labels.tolist() == [[0, model.noise_label, model.nodata, 1]]
    assert model.class_names[-1] == "noise" and np.isnan(raw[-1]).all()


def test_density_without_any_cluster_is_a_user_error():
    rng = np.random.default_rng(1)
    sample = Sample.from_array(rng.uniform(size=(300, 3)))
    with pytest.raises(InputError, match="dbscan found no cluster"):
        fit_on(sample, method="dbscan", eps=1e-4, min_samples=20)


def test_hierarchical_cut_coarsens_without_refit(tmp_path, fitted):
    feats, models = fitted
    model = models["hierarchical"]
    fine = predict(feats, model).values
    for k in (2, 3, 9):
        cut = model.cut(k)
        coarse = predict(feats, cut).values
        assert cut.k == k and len(np.unique(coarse[coarse != cut.nodata])) == k
        if k < model.k:  # every fine class lies inside one coarse class
            pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
            assert len(np.unique(pairs[0])) == pairs.shape[1]
        again = load_model(cut.save(tmp_path / f"cut{k}.json"))
        np.testing.assert_array_equal(again.linkage_matrix, model.linkage_matrix)
        assert again.cut(model.k).mapping.tolist() == model.mapping.tolist()
    with pytest.raises(ModelError, match="can be cut at 2 <= k <= 64"):
        model.cut(65)
    with pytest.raises(ModelError, match="cannot be cut"):
        models["gmm"].cut(3)


def test_bisecting_cut_follows_the_splits(fitted):
    feats, models = fitted
    model = models["bisecting_kmeans"]
    fine = predict(feats, model).values
    for k in (2, 3, 4):
        coarse = predict(feats, model.cut(k)).values
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]
        assert len(np.unique(coarse)) == k + 1  # + nodata
    with pytest.raises(ModelError, match="can be cut at 2 <= k <= 5"):
        model.cut(6)


@pytest.mark.parametrize("linkage", ["ward", "average", "complete"])
def test_agglomerate_with_unit_weights_matches_scipy(linkage):
    pts = np.random.default_rng(3).normal(size=(40, 3))
    ours = agglomerate(pts, np.ones(len(pts)), linkage)
    ref = sch.linkage(pts, method=linkage)
    np.testing.assert_allclose(ours[:, 2], ref[:, 2], rtol=1e-10)
    for k in (2, 5, 11):
        assert_same_labelling(sch.fcluster(ref, k, "maxclust"),
                              sch.fcluster(ours, k, "maxclust"))


def test_ward_weights_count_as_repeated_points():
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(12, 2))
    w = rng.integers(1, 4, size=12)
    weighted = agglomerate(pts, w, "ward")
    repeated = sch.linkage(np.repeat(pts, w, axis=0), method="ward")
    # the top merges of the repeated points are those of the weighted ones
    np.testing.assert_allclose(weighted[-5:, 2], repeated[-5:, 2], rtol=1e-9)


def test_gmm_confidence(fitted):
    feats, models = fitted
    conf = predict_confidence(feats, models["gmm"])
    assert conf.dtype == np.uint8 and conf.rio.nodata == 255
    vals = conf.values
    labels = predict(feats, models["gmm"]).values
    np.testing.assert_array_equal(vals == 255, labels == models["gmm"].nodata)
    ok = vals[vals != 255]
    assert ok.max() <= 100 and ok.min() >= 20 and np.median(ok) == 100
    with pytest.raises(ValueError, match="needs a gmm model"):
        predict_confidence(feats, models["kmeans"])


def test_mismatched_bands_are_refused(scene, fitted, tmp_path):
    model = fitted[1]["kmeans"]
    three = pipeline.compute_features(pipeline.open_image(scene.path), [{"bands": [1, 2, 3]}])
    with pytest.raises(ModelError, match="do not match"):
        predict(three, model)
    sample = draw_sample(three, 2000, 0)
    other = fit_on(sample, 3)
    from pipeline.testing import write_raster

    bands = np.ones((5, 32, 32), np.uint16) * np.arange(1, 6, dtype=np.uint16)[:, None, None]
    five = write_raster(tmp_path / "five.tif", bands)
    feats5 = pipeline.compute_features(pipeline.open_image(five), [{"bands": [1, 2, 3]}])
    with pytest.raises(ModelError, match="4 bands, but this image has 5"):
        predict(feats5, other)


def test_hierarchical_refine_weights_every_pixel_for_any_chunking(scene, truth):
    models = [fit(_features(scene, c), 5, method="hierarchical", sample_size=3000,
                  n_micro=32, refine=1) for c in (64, 100)]
    assert _core(models[0]) == _core(models[1])
    m = models[0]
    assert m.fit_info["micro_weights_from"] == "every pixel"
    assert m.micro_weights.sum() == (truth != 255).sum() == m.n_valid


def test_pruned_nearest_centroid_is_exact():
    from pipeline.cluster._predict import nearest_centroid_sorted

    rng = np.random.default_rng(7)
    block = rng.normal(size=(3, 40, 50)).astype(np.float32)
    block[:, 0, :4] = np.nan
    for m in (1, 2, 37):
        cents = rng.normal(size=(m, 3)) * np.array([5.0, 1.0, 0.2])
        w = rng.uniform(0.5, 2, 3)
        got = nearest_centroid_sorted(block, cents, w, 255, np.dtype(np.uint8))
        d = (w[None, :, None, None]
             * (block[None].astype(np.float64) - cents[:, :, None, None]) ** 2).sum(1)
        ref = np.argmin(np.nan_to_num(d, nan=np.inf), axis=0).astype(np.uint8)
        ref[~np.isfinite(block).all(0)] = 255
        np.testing.assert_array_equal(got, ref)
