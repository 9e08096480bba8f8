"""Texture features: exact halos, chunk independence, whole-image scipy references."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.features import FeatureSpec, compute_features
from pipeline.features._texture import texture_block

_RNG = np.random.default_rng(11)
_H, _W = 26, 31
_IMG = _RNG.uniform(1, 1000, size=(3, _H, _W)).astype(np.float32)
_IMG[:, 4:8, 12:16] = np.nan        # a nodata hole
_IMG[:, 0, 0] = np.nan              # a nodata corner
_IMG[:, 18:, 3] = np.nan            # a nodata line reaching the edge
_IMG[:, 20, 20] = np.nan            # a lone nodata pixel
_IMG[:, 10:13, 25:28] = np.nan
_IMG[:, 11, 26] = 500.0             # a valid pixel ringed by nodata


def _image(arr, chunks) -> xr.DataArray:
    data = da.from_array(arr, chunks=(arr.shape[0],) + tuple(chunks))
    return xr.DataArray(data, dims=("band", "y", "x"))


def _splits(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    def to_chunks(cuts: list[int]) -> tuple[int, ...]:
        edges = [0, *sorted(cuts), n]
        return tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True))
    return st.lists(st.integers(1, n - 1), unique=True, max_size=8).map(to_chunks)


def _texture(params, chunks, arr=_IMG) -> np.ndarray:
    with dask.config.set(scheduler="synchronous"):
        return compute_features(_image(arr, chunks), [{"texture": params}]).values[0]


def _source(params, arr=_IMG) -> np.ndarray:
    b = params.get("band")
    return arr[b - 1].astype(np.float64) if b else arr.astype(np.float64).mean(0)


def _gauss_kernel(sigma: float, r: int) -> np.ndarray:
    impulse = np.zeros(2 * r + 1)
    impulse[r] = 1.0
    return ndimage.gaussian_filter1d(impulse, sigma, mode="constant", radius=r)


def _reference(params, arr=_IMG) -> np.ndarray:
    """Independent whole-image reference: the statistic over the valid window pixels.

    ``generic_filter`` with NaN beyond the image edge (``mode="constant", cval=nan``)
    sees exactly the window; NaN pixels are left out.
    """
    spec = FeatureSpec.parse({"texture": params}).params
    src = _source(params, arr)
    w = spec.window
    if spec.stat in ("mean", "std"):
        func = np.nanmean if spec.stat == "mean" else np.nanstd
        weights = None
    else:
        k = _gauss_kernel(spec.gaussian_sigma, spec.radius)
        weights = np.outer(k, k).ravel()

    def stat(v: np.ndarray) -> float:
        ok = np.isfinite(v)
        if not ok.any():
            return np.nan
        if weights is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return float(func(v))
        return float((weights[ok] * v[ok]).sum() / weights[ok].sum())

    out = ndimage.generic_filter(src, stat, size=w, mode="constant", cval=np.nan)
    out[~np.isfinite(src)] = np.nan
    return out


def _close(got, ref, rtol=1e-6):
    scale = float(np.nanmax(np.abs(ref)))
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


_PARAMS = st.fixed_dictionaries(
    {"stat": st.sampled_from(["mean", "std", "gaussian", "gradient"]),
     "window": st.sampled_from([3, 5, 7, 9])},
    optional={"band": st.integers(1, 3)},
)


@settings(max_examples=30, deadline=None)
@given(params=_PARAMS, cy=_splits(_H), cx=_splits(_W))
@example(params={"stat": "std", "window": 7}, cy=(1,) * _H, cx=(30, 1))
@example(params={"stat": "gradient", "window": 9}, cy=(2, 24), cx=(3, 3, 3, 22))
@example(params={"stat": "mean", "window": 3}, cy=(25, 1), cx=(1,) * _W)
def test_texture_does_not_depend_on_chunking(params, cy, cx):
    single = _texture(params, (_H, _W))
    got = _texture(params, (cy, cx))
    # identical bits: direct window sums, the same order wherever a chunk starts
    np.testing.assert_array_equal(got, single)
    # and the whole-image scipy computation of the same definition
    spec = FeatureSpec.parse({"texture": params}).params
    whole = texture_block(_source(params), spec.stat, spec.radius, spec.gaussian_sigma)
    _close(got, whole)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(_IMG[0]))


@pytest.mark.parametrize("params", [
    {"stat": "mean", "window": 3}, {"stat": "mean", "window": 7, "band": 2},
    {"stat": "std", "window": 5}, {"stat": "std", "window": 7},
    {"stat": "gaussian", "window": 7}, {"stat": "gaussian", "window": 5, "sigma": 2.0},
])
def test_texture_equals_independent_nan_aware_reference(params):
    got = _texture(params, ((5, 9, 12), (7, 7, 17)))
    _close(got, _reference(params))


@pytest.mark.parametrize("window,sigma", [(5, None), (7, None), (9, 1.5)])
def test_gradient_equals_scipy_away_from_edges_and_nodata(window, sigma):
    arr = _RNG.uniform(0, 100, size=(1, 30, 30)).astype(np.float32)
    params = {"stat": "gradient", "window": window} | ({"sigma": sigma} if sigma else {})
    got = _texture(params, ((7, 23), (11, 19)), arr=arr)
    spec = FeatureSpec.parse({"texture": params}).params
    ref = ndimage.gaussian_gradient_magnitude(arr[0].astype(np.float64), spec.gaussian_sigma,
                                              radius=spec.radius)
    r = spec.radius
    _close(got[r:-r, r:-r], ref[r:-r, r:-r])


def test_full_windows_equal_plain_scipy_filters():
    arr = _RNG.uniform(0, 100, size=(1, 24, 24)).astype(np.float32)
    src = arr[0].astype(np.float64)
    inner = (slice(3, -3), slice(3, -3))
    mean = _texture({"stat": "mean", "window": 7}, (9, 9), arr=arr)
    _close(mean[inner], ndimage.uniform_filter(src, 7)[inner])
    gauss = _texture({"stat": "gaussian", "window": 7}, (9, 9), arr=arr)
    _close(gauss[inner], ndimage.gaussian_filter(src, 1.0, radius=3)[inner])
    std = _texture({"stat": "std", "window": 7}, (9, 9), arr=arr)
    ref = np.sqrt(ndimage.uniform_filter(src**2, 7) - ndimage.uniform_filter(src, 7) ** 2)
    _close(std[inner], ref[inner], rtol=1e-5)


def test_texture_of_a_flat_image_is_flat_and_valid_pixels_stay_valid():
    arr = np.full((2, 12, 12), 3000.0, np.float32)
    arr[:, 5, 5] = np.nan
    for stat in ("mean", "gaussian"):
        out = _texture({"stat": stat, "window": 5}, (4, 5), arr=arr)
        assert np.isnan(out[5, 5]) and np.isfinite(np.delete(out.ravel(), 5 * 12 + 5)).all()
        np.testing.assert_allclose(np.delete(out.ravel(), 5 * 12 + 5), 3000.0, rtol=1e-6)
    for stat in ("std", "gradient"):
        out = _texture({"stat": stat, "window": 5}, (4, 5), arr=arr)
        assert np.nanmax(out) < 1e-3


def test_texture_halo_comes_from_the_window():
    for w in (3, 7, 15):
        assert FeatureSpec.parse({"texture": {"window": w}}).halo == w // 2
    im = _image(_IMG, (10, 10))
    cube = compute_features(im, [{"texture": {"stat": "std", "window": 7}}])
    assert isinstance(cube.data, da.Array)
    assert cube.chunks[1:] == im.chunks[1:]
    assert list(cube["feature"].values) == ["texture_std_w7_mean"]


def test_tiny_chunks_keep_their_chunking():
    im = _image(_IMG, ((1, 2, 23), (4, 27)))
    cube = compute_features(im, [{"texture": {"window": 9}}])
    assert cube.chunks[1:] == im.chunks[1:]


def test_an_image_thinner_than_the_halo():
    arr = _IMG[:, :2, :]
    params = {"stat": "std", "window": 9}
    np.testing.assert_array_equal(_texture(params, ((1, 1), (3, 28)), arr=arr),
                                  _texture(params, ((2,), (31,)), arr=arr))
    _close(_texture(params, ((1, 1), (3, 28)), arr=arr), _reference(params, arr))


@pytest.mark.parametrize("params,match", [
    ({"window": 6}, "odd"),
    ({"window": 1}, "greater than or equal to 3"),
    ({"stat": "mean", "sigma": 2}, "sigma applies"),
    ({"stat": "median"}, "mean"),
])
def test_texture_params_are_checked(params, match):
    with pytest.raises(ValueError, match=match):
        FeatureSpec.parse({"texture": params})
