"""The fused kernel (mask + convert + nearest centroid) labels exactly as the two passes.

``predict(features, model, image=image)`` labels ``features: [bands]`` with K-means or
mean shift straight from the raw image; every test compares it with the general path
(``masked_float`` -> band selection -> ``nearest_centroid``), bit for bit.
"""

from __future__ import annotations

import dask
import dask.array
import numpy as np
import pytest
import rasterio
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

import pipeline
from pipeline.cluster import KMeansModel, fit, load_model, nearest_centroid, predict
from pipeline.cluster import _fit as fit_module
from pipeline.cluster._meanshift import MeanShiftModel
from pipeline.cluster._predict import nearest_centroid_raw
from pipeline.config import parse_config
from pipeline.errors import ModelError
from pipeline.io._mask import _masked_float_block
from pipeline.runner import run
from pipeline.testing import write_raster

_DTYPES = ["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"]


def _raw_block(rng: np.random.Generator, dtype: str, shape: tuple[int, ...],
               nodata: float | None, specials: bool) -> np.ndarray:
    """A block of small values (so nodata and equal distances occur), NaN/inf for floats."""
    dt = np.dtype(dtype)
    lo = -3 if dt.kind in "if" else 0
    block = rng.integers(lo, 6, size=shape).astype(dt)
    if dt.kind == "f":
        block += rng.random(shape).astype(dt) * dt.type(0.5)
        if specials:
            # NaN, +-inf, and (float64) a finite value that is inf once float32
            big = 1e300 if dt == np.float64 else 3e38
            pick = rng.random(shape)
            block[pick < 0.03] = np.nan
            block[(pick >= 0.03) & (pick < 0.05)] = np.inf
            block[(pick >= 0.05) & (pick < 0.07)] = -np.inf
            block[(pick >= 0.07) & (pick < 0.09)] = big
    if nodata is not None and not np.isnan(nodata):
        block[rng.random(shape) < 0.05] = dt.type(nodata)
    return block


def _nodata_for(dtype: str, choice: int) -> float | None:
    """No nodata, a value inside the data range, or the type's edge / NaN."""
    dt = np.dtype(dtype)
    if choice == 0:
        return None
    if choice == 1:
        return 2.0
    if dt.kind == "f":
        return float("nan") if choice == 2 else float(np.float32(-99999.5))
    return float(np.iinfo(dt).max if choice == 2 else np.iinfo(dt).min)


def _reference(block, nodata, bands, centroids, weights, label_nodata=255):
    """The general path on one block: masked float32, band selection, nearest_centroid."""
    masked = _masked_float_block(block, nodata)
    return nearest_centroid(masked[bands], centroids, weights, label_nodata, np.uint8)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(_DTYPES),
       nb=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 40),
       k=st.integers(1, 9), nodata_choice=st.integers(0, 3), specials=st.booleans(),
       data=st.data())
@example(seed=0, dtype="float32", nb=3, h=4, w=17, k=3, nodata_choice=2, specials=True,
         data=None)
def test_kernel_equals_mask_then_nearest(seed, dtype, nb, h, w, k, nodata_choice, specials,
                                         data):
    rng = np.random.default_rng(seed)
    nodata = _nodata_for(dtype, nodata_choice)
    block = _raw_block(rng, dtype, (nb, h, w), nodata, specials)
    if data is None:
        bands = list(range(nb))
    else:  # any selection, in any order, repeats allowed (as {bands: [...]})
        bands = data.draw(st.lists(st.integers(0, nb - 1), min_size=1, max_size=nb + 1))
    nf = len(bands)
    # integer-valued centroids give exact ties (lower class ID wins) on integer pixels
    centroids = rng.integers(-3, 7, size=(k, nf)).astype(np.float64)
    centroids[rng.random((k, nf)) < 0.5] += rng.random() * 0.5
    weights = rng.choice([0.25, 1.0, 3.7, 1e-3], size=nf)
    got = nearest_centroid_raw(block, nodata, np.array(bands), centroids, weights, 255,
                               np.dtype(np.uint8))
    np.testing.assert_array_equal(got, _reference(block, nodata, bands, centroids, weights))


def test_kernel_overflowing_distance_is_nodata_in_both_paths():
    # finite float32 features whose weighted distance overflows to inf: the general
    # path labels them nodata (inf never compares smaller); the fused one must too
    block = np.array([[[3e38, 1.0, -3e38]]], dtype=np.float32)
    cents = np.array([[-3e38], [0.0]])
    weights = np.array([1.0])
    got = nearest_centroid_raw(block, None, np.array([0]), cents, weights, 255,
                               np.dtype(np.uint8))
    np.testing.assert_array_equal(got, _reference(block, None, [0], cents, weights))
    assert got[0, 0] == 255 and got[0, 1] == 1


def _image(arr: np.ndarray, chunks: tuple[int, int], nodata: float | None) -> xr.DataArray:
    """An in-memory image as ``pipeline.open_image`` returns it (lazy, georeferenced)."""
    _, h, w = arr.shape
    x = 300000.0 + 30.0 * (np.arange(w) + 0.5)
    y = 4000000.0 - 30.0 * (np.arange(h) + 0.5)
    data = dask.array.from_array(arr, chunks=(-1,) + tuple(chunks))
    img = xr.DataArray(data, dims=("band", "y", "x"), coords={"y": y, "x": x})
    img = img.rio.write_crs("EPSG:32633")
    img = img.rio.write_transform(from_origin(300000.0, 4000000.0, 30.0, 30.0))
    if nodata is not None:
        img = img.rio.write_nodata(nodata, encoded=False)
    img.attrs["source"] = "memory"
    img.name = "image"
    return img


def _kmeans(feats: xr.DataArray, rng: np.random.Generator, k: int) -> KMeansModel:
    nf = feats.sizes["feature"]
    return KMeansModel(
        centroids=rng.normal(size=(k, nf)), mean=rng.uniform(0, 3, nf),
        scale=rng.uniform(0.5, 3, nf),
        features=[s.describe() for s in feats.attrs["features"]],
        feature_names=[str(n) for n in feats["feature"].values],
        n_bands=feats.attrs["n_bands"])


def _is_fused(labels: xr.DataArray) -> bool:
    return labels.data.name.startswith("nearest_centroid_raw")


def _assert_same(fused: xr.DataArray, ref: xr.DataArray) -> None:
    """Same lazy DataArray (coords, georeferencing, nodata, name, dtype, chunks) and pixels."""
    assert fused.chunks == ref.chunks
    assert fused.dtype == ref.dtype
    assert fused.rio.nodata == ref.rio.nodata
    assert fused.rio.crs == ref.rio.crs
    assert fused.rio.transform() == ref.rio.transform()
    a, b = dask.compute(fused, ref, scheduler="synchronous")
    assert a.identical(b)
    np.testing.assert_array_equal(a.values, b.values)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["uint8", "uint16", "int16",
                                                              "float32"]),
       nb=st.integers(1, 4), h=st.integers(1, 40), w=st.integers(1, 40),
       cy=st.integers(1, 40), cx=st.integers(1, 40), k=st.integers(2, 9),
       nodata_choice=st.integers(0, 3), subset=st.booleans(), data=st.data())
def test_predict_with_image_equals_general_path(seed, dtype, nb, h, w, cy, cx, k,
                                                nodata_choice, subset, data):
    rng = np.random.default_rng(seed)
    nodata = _nodata_for(dtype, nodata_choice)
    img = _image(_raw_block(rng, dtype, (nb, h, w), nodata, True), (cy, cx), nodata)
    spec = "bands"
    if subset:
        spec = {"bands": data.draw(st.lists(st.integers(1, nb), min_size=1, max_size=nb))}
    feats = pipeline.compute_features(img, [spec])
    model = _kmeans(feats, rng, k)
    fused = predict(feats, model, image=img)
    assert _is_fused(fused)
    _assert_same(fused, predict(feats, model))


@pytest.fixture(scope="module")
def tif(tmp_path_factory):
    """A 4-band uint16 GeoTIFF with nodata 0 (in one band only here and there)."""
    rng = np.random.default_rng(7)
    arr = (rng.integers(0, 4, size=(1, 150, 130)) * 5000
           + rng.integers(1, 3000, size=(4, 150, 130))).astype(np.uint16)
    arr[:, :6] = 0
    arr[2, 40:50, 30:90] = 0  # one band only: still nodata for a subset without band 3
    path = tmp_path_factory.mktemp("fused") / "img.tif"
    return write_raster(path, arr, nodata=0, tile=32)


@pytest.mark.parametrize("chunks", [32, 64, 150])
@pytest.mark.parametrize("features", [["bands"], [{"bands": [4, 1]}],
                                      [{"bands": {"bands": [2], "scale": False}}]])
def test_fitted_kmeans_on_geotiff(tif, chunks, features):
    img = pipeline.open_image(tif, chunks=chunks)
    feats = pipeline.compute_features(img, features)
    model = fit(feats, 4, seed=1, sample_size=3000)
    fused = predict(feats, model, image=img)
    assert _is_fused(fused)
    _assert_same(fused, predict(feats, model))
    labels = fused.values
    assert (labels[:6] == model.nodata).all() and (labels[40:50, 30:90] == model.nodata).all()


def test_meanshift_model_is_fused_too(tif):
    img = pipeline.open_image(tif, chunks=64)
    feats = pipeline.compute_features(img, ["bands"])
    rng = np.random.default_rng(3)
    nf = feats.sizes["feature"]
    model = MeanShiftModel(centroids=rng.normal(size=(3, nf)), mean=np.full(nf, 6000.0),
                           scale=np.full(nf, 4000.0), features=[{"bands": {}}],
                           feature_names=list(feats["feature"].values), n_bands=4)
    fused = predict(feats, model, image=img)
    assert _is_fused(fused)
    _assert_same(fused, predict(feats, model))


@pytest.mark.parametrize("features", [["hsv"], ["bands", "xy"], [{"bands": [1]}, "bands"],
                                      [{"normalized_difference": [4, 3]}]])
def test_other_features_take_the_general_path(tif, features):
    img = pipeline.open_image(tif, chunks=64)
    feats = pipeline.compute_features(img, features)
    model = fit(feats, 3, seed=0, sample_size=2000)
    labels = predict(feats, model, image=img)
    assert not _is_fused(labels)
    a, b = dask.compute(labels, predict(feats, model), scheduler="synchronous")
    assert a.identical(b)


def test_other_models_take_the_general_path(tif):
    img = pipeline.open_image(tif, chunks=64)
    feats = pipeline.compute_features(img, ["bands"])
    model = fit(feats, 3, method="bisecting_kmeans", seed=0, sample_size=2000)
    labels = predict(feats, model, image=img)
    assert not _is_fused(labels)
    np.testing.assert_array_equal(labels.values, predict(feats, model).values)


def test_chunkings_that_would_differ_take_the_general_path(tif):
    img = pipeline.open_image(tif, chunks=64)
    feats = pipeline.compute_features(img, ["bands"])
    model = fit(feats, 3, seed=0, sample_size=2000)
    ref = predict(feats, model).values
    # features rechunked after compute_features: the labels keep the features' chunks
    refeats = feats.chunk({"y": 50, "x": 40})
    labels = predict(refeats, model, image=img)
    assert not _is_fused(labels) and labels.chunks == refeats.chunks[1:]
    np.testing.assert_array_equal(labels.values, ref)
    # bands split over chunks: masked_float masks each band chunk on its own
    split = img.chunk({"band": 2})
    sfeats = pipeline.compute_features(split, ["bands"])
    labels = predict(sfeats, model, image=split)
    assert not _is_fused(labels)
    np.testing.assert_array_equal(labels.values, predict(sfeats, model).values)
    # an image of another grid than the features'
    shifted = img.assign_coords(x=img["x"] + 1.0)
    assert not _is_fused(predict(feats, model, image=shifted))


def test_other_dtypes_take_the_general_path():
    # open_image refuses int8 and int64 files, but an in-memory image may hold them
    arr = np.arange(2 * 20 * 30, dtype=np.int64).reshape(2, 20, 30) % 7
    img = _image(arr, (16, 16), 3)
    feats = pipeline.compute_features(img, ["bands"])
    model = fit(feats, 2, seed=0, sample_size=500)
    labels = predict(feats, model, image=img)
    assert not _is_fused(labels)
    np.testing.assert_array_equal(labels.values, predict(feats, model).values)


def test_mismatched_model_raises_with_or_without_image(tif):
    img = pipeline.open_image(tif, chunks=64)
    feats = pipeline.compute_features(img, ["bands"])
    model = fit(pipeline.compute_features(img, [{"bands": [1, 2]}]), 2, seed=0,
                sample_size=500)
    for kw in ({}, {"image": img}):
        with pytest.raises(ModelError, match="do not match"):
            predict(feats, model, **kw)


def test_run_writes_the_same_labels(tmp_path, scene, monkeypatch):
    taken = []
    fused_labels = fit_module._fused_labels

    def spy(*args):
        out = fused_labels(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(fit_module, "_fused_labels", spy)
    cfg = {"input": str(scene.path), "output": str(tmp_path / "fused"), "chunks": 100,
           "cluster": {"k": 5, "seed": 3, "sample_size": 5000}}
    res = run(parse_config(cfg))
    assert taken == [True]
    with rasterio.open(res.output / "labels.tif") as ds:
        got = ds.read(1)
    # the general path, directly, with the model the run wrote
    model = load_model(res.output / "model.json")
    img = pipeline.open_image(scene.path, chunks=100)
    ref = predict(pipeline.compute_features(img, ["bands"]), model).values
    np.testing.assert_array_equal(got, ref)
    # and a run forced onto the general path writes the same file contents
    monkeypatch.setattr(fit_module, "_fused_labels", lambda *args: None)
    res2 = run(parse_config({**cfg, "output": str(tmp_path / "general")}))
    with rasterio.open(res2.output / "labels.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), got)
    assert res2.report["classes"] == res.report["classes"]
