"""Per-pixel feature families: hsv, lab, spectral indices, xy coordinates."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from skimage import color

from pipeline.errors import ConfigError
from pipeline.features import FeatureSpec, compute_features, get_family

_RNG = np.random.default_rng(7)
_H, _W = 29, 37
_U8 = _RNG.integers(1, 256, size=(4, _H, _W)).astype(np.uint8)
_U8[:, 3:6, 10:20] = 0          # nodata block
_U8[:, 20, 5] = 0               # a lone nodata pixel
_U8[:3, 11, 11] = 128           # a grey pixel (hue 0, a* = b* = 0)
_U8[3, 0, :] = _U8[2, 0, :]     # nir == red on row 0: NDVI exactly 0
_U16 = (_U8.astype(np.uint16) * 40).astype(np.uint16)


def _image(arr: np.ndarray, chunks=None, nodata=0, dtype_known=True) -> xr.DataArray:
    chunks = chunks or arr.shape[1:]
    data = da.from_array(arr, chunks=(arr.shape[0],) + tuple(chunks))
    im = xr.DataArray(data, dims=("band", "y", "x"),
                      coords={"y": np.arange(arr.shape[1]) + 0.5,
                              "x": np.arange(arr.shape[2]) + 0.5})
    if dtype_known:
        im.encoding["dtype"] = arr.dtype
    return im.rio.write_nodata(nodata) if nodata is not None else im


def _splits(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Random chunkings of n pixels: tiny chunks, uneven last chunks, one chunk."""
    def to_chunks(cuts: list[int]) -> tuple[int, ...]:
        edges = [0, *sorted(cuts), n]
        return tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True))
    return st.lists(st.integers(1, n - 1), unique=True, max_size=8).map(to_chunks)


def _compute(feats, chunks, arr=_U8, **kw) -> np.ndarray:
    with dask.config.set(scheduler="synchronous"):
        return compute_features(_image(arr, chunks, **kw), feats).values


def _valid(arr: np.ndarray, nodata=0) -> np.ndarray:
    return ~(arr == nodata).any(0)


def _rgb_ref(arr, order=(1, 2, 3), vmax=255.0) -> np.ndarray:
    rgb = np.stack([arr[i - 1] for i in order], -1).astype(np.float64) / vmax
    return np.clip(rgb, 0, 1)


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    """Equal to 1e-6 of the value, or of the feature's range for values near 0."""
    scale = np.nanmax(np.abs(ref)) if np.isfinite(ref).any() else 1.0
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * max(scale, 1e-12))


PER_PIXEL = [
    ["hsv"], ["lab"], [{"lab": {"rgb": [3, 2, 1]}}],
    [{"index": {"name": "ndvi", "bands": {"red": 3, "nir": 4}}}],
    [{"index": {"name": "savi", "bands": {"red": 3, "nir": 4}}}],
    [{"index": {"name": "evi", "bands": {"red": 3, "nir": 4, "blue": 1}}}],
    [{"normalized_difference": [2, 4]}], [{"xy": {"weight": 0.5, "step": 7}}],
]


@settings(max_examples=12, deadline=None)
@given(cy=_splits(_H), cx=_splits(_W), which=st.integers(0, len(PER_PIXEL) - 1))
@example(cy=(1,) * _H, cx=(36, 1), which=1)
@example(cy=(28, 1), cx=(1, 2, 3, 31), which=0)
def test_per_pixel_features_do_not_depend_on_chunking(cy, cx, which):
    feats = PER_PIXEL[which]
    ref = _compute(feats, (_H, _W))
    got = _compute(feats, (cy, cx))
    # the same bits, not just close: labels downstream must not change at seams
    np.testing.assert_array_equal(got, ref)


def test_hsv_equals_skimage_whole_image():
    got = _compute(["hsv"], (8, 9))
    ref = np.moveaxis(color.rgb2hsv(_rgb_ref(_U8)), -1, 0)
    ref[:, ~_valid(_U8)] = np.nan
    _close(got, ref)
    assert list(compute_features(_image(_U8), ["hsv"])["feature"].values) == [
        "hsv_h", "hsv_s", "hsv_v"]


@pytest.mark.parametrize("arr,params,vmax", [
    (_U8, {}, 255.0),
    (_U16, {}, 65535.0),
    (_U16, {"max": 10200}, 10200.0),
    (_U8, {"rgb": [3, 2, 1]}, 255.0),
])
def test_lab_equals_skimage_whole_image(arr, params, vmax):
    got = _compute([{"lab": params}], (8, 9), arr=arr)
    ref = np.moveaxis(color.rgb2lab(_rgb_ref(arr, params.get("rgb", (1, 2, 3)), vmax)), -1, 0)
    ref[:, ~_valid(arr)] = np.nan
    for g, r in zip(got, ref, strict=True):
        _close(g, r)
    assert np.isnan(got[:, 4, 12]).all() and np.isfinite(got[:, 11, 11]).all()


def test_colour_values_above_full_scale_are_clipped():
    arr = _U16.copy()
    got = _compute([{"lab": {"max": 1000}}], (8, 9), arr=arr)
    ref = np.moveaxis(color.rgb2lab(_rgb_ref(arr, vmax=1000.0)), -1, 0)
    ref[:, ~_valid(arr)] = np.nan
    for g, r in zip(got, ref, strict=True):
        _close(g, r)
    assert np.nanmax(got[0]) <= 100.0 + 1e-4


def test_colour_scales_in_memory_arrays_by_their_own_dtype():
    # masked_float records the source dtype, so an in-memory uint8 array without any
    # encoding is scaled like a uint8 file (/255), and an explicit max still wins
    plain = _compute(["lab"], (8, 9), dtype_known=False)
    np.testing.assert_array_equal(plain, _compute(["lab"], (8, 9)))
    got = _compute([{"lab": {"max": 255}}], (8, 9), dtype_known=False)
    np.testing.assert_array_equal(got, plain)


def test_colour_needs_max_when_the_source_type_is_unknown():
    from pipeline.features._colour import lab

    image = _image(_U8, dtype_known=False).astype(np.float32)  # no record of the source
    spec = FeatureSpec.parse("lab")
    with pytest.raises(ConfigError, match="max"):
        lab(image, spec.params)


def test_colour_band_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="band 5 does not exist"):
        compute_features(_image(_U8), [{"hsv": [5, 2, 1]}])


def _nd(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(a + b == 0, 0.0, (a - b) / (a + b))
    return out


@pytest.mark.parametrize("name,roles,formula", [
    ("ndvi", {"red": 3, "nir": 4}, lambda r: _nd(r["nir"], r["red"])),
    ("gndvi", {"green": 2, "nir": 4}, lambda r: _nd(r["nir"], r["green"])),
    ("ndwi", {"green": 2, "nir": 4}, lambda r: _nd(r["green"], r["nir"])),
    ("mndwi", {"green": 2, "swir1": 3}, lambda r: _nd(r["green"], r["swir1"])),
    ("ndbi", {"swir1": 3, "nir": 4}, lambda r: _nd(r["swir1"], r["nir"])),
    ("ndmi", {"swir1": 3, "nir": 4}, lambda r: _nd(r["nir"], r["swir1"])),
    ("nbr", {"swir2": 1, "nir": 4}, lambda r: _nd(r["nir"], r["swir2"])),
    ("savi", {"red": 3, "nir": 4},
     lambda r: 1.5 * (r["nir"] - r["red"]) / (r["nir"] + r["red"] + 0.5)),
    ("evi", {"red": 3, "nir": 4, "blue": 1},
     lambda r: 2.5 * (r["nir"] - r["red"]) / (r["nir"] + 6 * r["red"] - 7.5 * r["blue"] + 1)),
])
def test_index_presets_match_their_formulas(name, roles, formula):
    arr = _U16
    got = _compute([{"index": {"name": name, "bands": roles, "max": 10000}}], (10, 10), arr=arr)
    refl = {role: arr[n - 1].astype(np.float64) / (10000.0 if name in ("savi", "evi") else 1)
            for role, n in roles.items()}
    ref = formula(refl)
    ref[~_valid(arr)] = np.nan
    assert got.shape == (1, _H, _W)
    _close(got[0], ref)
    assert str(compute_features(_image(arr), [{"index": {"name": name, "bands": roles}}])
               ["feature"].values[0]) == name


def test_normalized_difference_shorthand_and_zero_denominator():
    arr = np.stack([np.full((4, 5), 7, np.int16), np.full((4, 5), -7, np.int16)])
    arr[:, 0, 0] = [3, 1]
    im = _image(arr, nodata=None)
    cube = compute_features(im, [{"normalized_difference": [1, 2]}])
    assert list(cube["feature"].values) == ["nd_b1_b2"]
    vals = cube.values[0]
    assert vals[0, 0] == pytest.approx(0.5)
    # a + b == 0 gives 0, not NaN: the pixel stays valid
    assert (vals.ravel()[1:] == 0).all()


@pytest.mark.parametrize("params,match", [
    ({"name": "ndvi", "bands": {"red": 3}}, "missing nir"),
    ({"name": "ndvi", "bands": {"red": 3, "nir": 4, "blue": 1}}, "unexpected blue"),
    ({"name": "nope", "bands": {"red": 3}}, "ndvi"),
])
def test_index_params_are_checked(params, match):
    with pytest.raises(ValueError, match=match):
        FeatureSpec.parse({"index": params})


def test_index_band_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="band 9 does not exist"):
        compute_features(_image(_U8), [{"index": {"name": "ndvi", "bands": {"red": 9, "nir": 4}}}])


def test_xy_is_the_scaled_global_pixel_index():
    got = _compute([{"xy": 0.5}], ((5, 20, 4), (1, 36)))
    yy, xx = np.mgrid[:_H, :_W].astype(np.float64)
    valid = _valid(_U8)
    np.testing.assert_array_equal(got[0][valid], (xx * 0.005).astype(np.float32)[valid])
    np.testing.assert_array_equal(got[1][valid], (yy * 0.005).astype(np.float32)[valid])
    assert np.isnan(got[:, ~valid]).all()
    cube = compute_features(_image(_U8), [{"xy": 0.5}])
    assert list(cube["feature"].values) == ["xy_x", "xy_y"]
    assert not cube["scale"].values.any()


def test_xy_refuses_scale():
    with pytest.raises(ValueError, match="scale must be false"):
        FeatureSpec.parse({"xy": {"weight": 1, "scale": True}})


def test_per_pixel_families_are_lazy_keep_chunks_and_have_no_halo():
    im = _image(_U8, ((10, 19), (30, 7)))
    for feats in PER_PIXEL:
        cube = compute_features(im, feats)
        assert isinstance(cube.data, da.Array)
        assert cube.chunks[1:] == im.chunks[1:]
        assert FeatureSpec.parse(feats[0]).halo == 0
    for name in ("hsv", "lab", "index", "normalized_difference", "xy"):
        assert get_family(name).func.__doc__


def test_feature_names_are_unique_and_describe_parameters():
    feats = ["lab", "hsv", {"index": {"name": "ndvi", "bands": {"red": 3, "nir": 4}}},
             {"texture": {"stat": "std", "window": 7}}, {"texture": {"stat": "mean", "band": 2}},
             {"xy": 0.5}]
    cube = compute_features(_image(_U8), feats)
    names = [str(n) for n in cube["feature"].values]
    assert len(set(names)) == len(names)
    assert "texture_std_w7_mean" in names and "texture_mean_w7_b2" in names
    described = [s.describe() for s in cube.attrs["features"]]
    # the descriptions rebuild the same features (a model applied to another scene)
    again = compute_features(_image(_U8), described)
    assert [str(n) for n in again["feature"].values] == names
    assert described[2] == {"index": {"scale": True, "name": "ndvi",
                                      "bands": {"red": 3, "nir": 4}, "soil": 0.5, "max": None}}
