"""Every feature family on volumes ``(band, z, y, x)``, plus ``hed`` and the mask in N-D.

Seam rule 5 for volumes: any chunking (hypothesis for texture) gives the single-chunk
result bit for bit; texture against whole-volume scipy references; anisotropic
``sigma_units`` kernels; ``hed`` against ``skimage.color.rgb2hed``; masked voxels NaN.
"""

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
from skimage import color

from pipeline.errors import ConfigError
from pipeline.features import FeatureSpec, compute_features, get_family
from pipeline.features import _texture as texture_module
from pipeline.io import masked_float, valid_mask
from pipeline.io._geometry import Geometry

_RNG = np.random.default_rng(23)
_D, _H, _W = 9, 11, 13
_VOL = _RNG.integers(1, 256, size=(4, _D, _H, _W)).astype(np.uint8)
_VOL[:, 2, 3:6, 4:8] = 0            # a nodata hole
_VOL[1, 0, 0, 0] = 0                # nodata in one band only: the voxel is invalid
_VOL[:, 5:, 9, 2] = 0               # a nodata line reaching the last slice
_VOL[:3, 4, 4, 4] = 128             # a grey voxel
_SPACING = (2.5, 1.0, 0.5)          # thick slices, fine columns
_UNEVEN = ((2, 4, 3), (5, 1, 5), (6, 7))


def _geometry(shape, spacing=_SPACING) -> Geometry:
    dims = ("z", "y", "x")[-len(shape):]
    return Geometry(dims=dims, shape=tuple(shape), kind="nifti", spacing=tuple(spacing),
                    units=("millimeter",) * len(shape))


def _volume(arr=_VOL, chunks=None, nodata=0, spacing=_SPACING) -> xr.DataArray:
    chunks = chunks or arr.shape[1:]
    dims = ("band", "z", "y", "x")[-arr.ndim:] if arr.ndim == 4 else ("band", "y", "x")
    im = xr.DataArray(da.from_array(arr, chunks=(arr.shape[0],) + tuple(chunks)), dims=dims)
    im.encoding["dtype"] = arr.dtype
    if spacing is not None:
        im.attrs["geometry"] = _geometry(arr.shape[1:], spacing)
    return im.rio.write_nodata(nodata, encoded=False) if nodata is not None else im


def _compute(feats, chunks=None, arr=_VOL, **kw) -> np.ndarray:
    with dask.config.set(scheduler="synchronous"):
        return compute_features(_volume(arr, chunks, **kw), feats).values


def _valid(arr=_VOL, nodata=0) -> np.ndarray:
    return ~(arr == nodata).any(0)


def _splits(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    def to_chunks(cuts: list[int]) -> tuple[int, ...]:
        edges = [0, *sorted(cuts), n]
        return tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True))
    return st.lists(st.integers(1, n - 1), unique=True, max_size=5).map(to_chunks)


def _close(got, ref, rtol=1e-6):
    scale = float(np.nanmax(np.abs(ref))) if np.isfinite(ref).any() else 1.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(scale, 1e-12))


# -- the mask -------------------------------------------------------------------------

def test_masked_float_and_valid_mask_on_volumes():
    arr = _VOL.astype(np.uint16) * 100
    arr[2, 7, 1, 1] = 65535  # not nodata: stays
    im = _volume(arr, _UNEVEN)
    out = masked_float(im)
    assert out.dims == im.dims and out.chunks == im.chunks and out.dtype == np.float32
    assert out.attrs["geometry"] == im.attrs["geometry"]
    want = arr.astype(np.float32)
    want[:, ~_valid(arr)] = np.nan
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(out.values, want)
        mask = valid_mask(im)
        assert mask.dims == ("z", "y", "x")
        np.testing.assert_array_equal(mask.values, _valid(arr))


def test_masked_float_of_a_float_volume_masks_nan_and_inf():
    arr = _RNG.normal(size=(2, 3, 4, 5)).astype(np.float64)
    arr[0, 1, 2, 3] = np.inf
    arr[1, 0, 0, 0] = np.nan
    with dask.config.set(scheduler="synchronous"):
        got = masked_float(_volume(arr, ((1, 2), (4,), (2, 3)), nodata=None)).values
    want = arr.astype(np.float32)
    want[:, ~np.isfinite(arr).all(0)] = np.nan
    np.testing.assert_array_equal(got, want)


# -- per-voxel families ------------------------------------------------------------

PER_VOXEL = [
    ["bands"], [{"bands": [4, 2]}], ["hsv"], ["lab"], ["hed"], [{"hed": {"rgb": [3, 2, 1]}}],
    [{"index": {"name": "ndvi", "bands": {"red": 3, "nir": 4}}}],
    [{"index": {"name": "evi", "bands": {"red": 3, "nir": 4, "blue": 1}}}],
    [{"normalized_difference": [2, 4]}], [{"xy": {"weight": 0.5, "step": 7}}],
    [{"xyz": {"physical": True}}],
]


@pytest.mark.parametrize("feats", PER_VOXEL)
@pytest.mark.parametrize("chunks", [_UNEVEN, ((1,) * _D, (11,), (12, 1))])
def test_per_voxel_families_do_not_depend_on_chunking(feats, chunks):
    single = _compute(feats)
    got = _compute(feats, chunks)
    np.testing.assert_array_equal(got, single)  # NaN where NaN, identical bits elsewhere
    assert np.isnan(got[:, ~_valid()]).all()
    assert np.isfinite(got[:, _valid()]).all()


def test_per_voxel_features_are_lazy_and_keep_dims_chunks_and_geometry_free():
    im = _volume(chunks=_UNEVEN)
    cube = compute_features(im, ["hed", "xy", {"texture": {"window": 3}}])
    assert isinstance(cube.data, da.Array)
    assert cube.dims == ("feature", "z", "y", "x")
    assert cube.chunks[1:] == im.chunks[1:]
    assert list(cube["feature"].values) == ["hed_h", "hed_e", "hed_d", "xy_x", "xy_y",
                                            "xy_z", "texture_std_w3_mean"]


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (3, 7, 8)])
def test_hed_equals_skimage(shape):
    arr = _RNG.integers(0, 256, size=(4, *shape[1:])).astype(np.uint8)
    arr[:3, ..., 0] = 255   # white: no stain
    arr[:3, ..., 1] = 1     # nearly black
    got = _compute(["hed"], arr=arr, nodata=None, spacing=None)
    rgb = np.moveaxis(arr[:3], 0, -1)
    want = np.moveaxis(color.rgb2hed(rgb), -1, 0)
    _close(got, want)
    assert (got >= 0).all()


def test_hed_scales_by_max_and_masks_invalid_voxels():
    arr = (_VOL.astype(np.uint16) * 200).astype(np.uint16)
    got = _compute([{"hed": {"rgb": [1, 2, 3], "max": 51000}}], _UNEVEN, arr=arr)
    rgb = np.clip(np.moveaxis(arr[:3], 0, -1) / 51000.0, 0, 1)
    want = np.moveaxis(color.rgb2hed(rgb), -1, 0)
    want[:, ~_valid(arr)] = np.nan
    _close(got, want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_hed_is_registered_with_the_colour_parameters():
    spec = FeatureSpec.parse({"hed": [3, 2, 1]})
    assert spec.params.rgb == [3, 2, 1] and spec.params.max is None
    assert spec.halo == 0
    with pytest.raises(ConfigError, match="band 5 does not exist"):
        compute_features(_volume(), [{"hed": [5, 2, 1]}])


def test_xyz_is_the_scaled_global_voxel_index():
    got = _compute([{"xy": {"weight": 2.0, "step": 8}}], _UNEVEN)
    z, y, x = np.indices((_D, _H, _W)).astype(np.float32) * np.float32(0.25)
    valid = _valid()
    for feat, ref in zip(got, (x, y, z), strict=True):
        np.testing.assert_array_equal(feat[valid], ref[valid])
    np.testing.assert_array_equal(_compute([{"xyz": {"weight": 2.0, "step": 8}}]), got)
    assert get_family("xyz").func is get_family("xy").func
    phys = _compute([{"xyz": {"weight": 2.0, "step": 8, "physical": True}}], _UNEVEN)
    for feat, ref, s in zip(phys, (x, y, z), _SPACING[::-1], strict=True):
        np.testing.assert_allclose(feat[valid], ref[valid] * s, rtol=1e-6)


def test_xy_on_a_2d_image_is_unchanged_and_physical_uses_its_geometry():
    arr = _VOL[:, 0]
    plain = _compute(["xy"], ((5, 6), (13,)), arr=arr, spacing=(3.0, 0.5))
    assert plain.shape == (2, _H, _W)
    phys = _compute([{"xy": {"physical": True}}], ((5, 6), (13,)), arr=arr,
                    spacing=(3.0, 0.5))
    np.testing.assert_allclose(phys[0], plain[0] * 0.5, rtol=1e-6)
    np.testing.assert_allclose(phys[1], plain[1] * 3.0, rtol=1e-6)
    # no geometry: spacing 1
    np.testing.assert_array_equal(
        _compute([{"xy": {"physical": True}}], arr=arr, spacing=None), plain)


# -- texture ------------------------------------------------------------------------

_FLOAT = _RNG.uniform(1, 1000, size=(2, _D, _H, _W)).astype(np.float32)
_HOLEY = _FLOAT.copy()
_HOLEY[:, 2, 3:6, 4:8] = np.nan
_HOLEY[:, 0, 0, 0] = np.nan
_HOLEY[:, 5:, 9, 2] = np.nan
_HOLEY[:, 7, 1:4, 9:12] = np.nan
_HOLEY[:, 7, 2, 10] = 500.0          # a valid voxel ringed by nodata in its slice


def _texture(params, chunks=None, arr=_HOLEY, spacing=_SPACING) -> np.ndarray:
    return _compute([{"texture": params}], chunks, arr=arr, nodata=None, spacing=spacing)[0]


def _source(params, arr) -> np.ndarray:
    b = params.get("band")
    return arr[b - 1].astype(np.float64) if b else arr.astype(np.float64).mean(0)


_TEXTURE_PARAMS = st.one_of(
    st.fixed_dictionaries({"stat": st.sampled_from(["mean", "std", "gaussian", "gradient"]),
                           "window": st.sampled_from([3, 5, [3, 5, 3], [1, 5, 7], [5, 1, 3]])},
                          optional={"band": st.integers(1, 2)}),
    st.fixed_dictionaries({"stat": st.sampled_from(["gaussian", "gradient"]),
                           "sigma_units": st.sampled_from([0.6, 1.0, 1.7])}),
)


@settings(max_examples=40, deadline=None)
@given(params=_TEXTURE_PARAMS, cz=_splits(_D), cy=_splits(_H), cx=_splits(_W))
@example(params={"stat": "gradient", "sigma_units": 1.7}, cz=(1,) * _D, cy=(3, 8),
         cx=(1, 12))
@example(params={"stat": "std", "window": [5, 1, 3]}, cz=(4, 5), cy=(10, 1), cx=(2, 2, 9))
@example(params={"stat": "mean", "window": 5}, cz=(2, 7), cy=(1,) * _H, cx=(13,))
def test_texture_on_volumes_does_not_depend_on_chunking(params, cz, cy, cx):
    single = _texture(params)
    got = _texture(params, (cz, cy, cx))
    # identical bits: direct window sums, axis after axis, wherever a chunk starts
    np.testing.assert_array_equal(got, single)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(_HOLEY[0]))


def _normalised(x, w, filt):
    return filt(x) / filt(w)


@pytest.mark.parametrize("stat", ["mean", "std"])
@pytest.mark.parametrize("window", [3, [3, 5, 7], [1, 3, 5]])
def test_box_texture_equals_scipy_on_a_nan_free_volume(stat, window):
    """The whole-volume reference: one 3-D box correlation (not separable passes) of the
    data and of the in-volume indicator, so the edges see only voxels in the volume."""
    src = _source({}, _FLOAT)
    got = _texture({"stat": stat, "window": window}, _UNEVEN, arr=_FLOAT)
    side = window if isinstance(window, list) else [window] * 3
    box = np.ones(side)

    def filt(a):
        return ndimage.correlate(a, box, mode="constant", cval=0.0)

    ones = np.ones_like(src)
    mean = _normalised(src, ones, filt)
    ref = mean if stat == "mean" else np.sqrt(np.maximum(
        _normalised(src * src, ones, filt) - mean**2, 0))
    _close(got, ref, rtol=1e-5 if stat == "std" else 1e-6)
    # inside, every window is whole: plain scipy filters
    r = [s // 2 for s in side]
    inner = tuple(slice(ri, n - ri) for ri, n in zip(r, src.shape, strict=True))
    plain = ndimage.uniform_filter(src, side)
    if stat == "std":
        plain = np.sqrt(np.maximum(ndimage.uniform_filter(src**2, side) - plain**2, 0))
    _close(got[inner], plain[inner], rtol=1e-5 if stat == "std" else 1e-6)


@pytest.mark.parametrize("params", [
    {"stat": "gaussian", "window": 5}, {"stat": "gaussian", "window": [3, 7, 5], "sigma": 1.2},
    {"stat": "gaussian", "sigma_units": 1.5}, {"stat": "gaussian", "sigma_units": 0.8},
])
def test_gaussian_texture_equals_scipy_on_a_nan_free_volume(params):
    src = _source({}, _FLOAT)
    spec = FeatureSpec.parse({"texture": params}).params
    radii, sigmas = spec.kernel(_SPACING)
    got = _texture(params, _UNEVEN, arr=_FLOAT)

    def filt(a):
        return ndimage.gaussian_filter(a, sigmas, mode="constant", cval=0.0, radius=radii)

    _close(got, _normalised(src, np.ones_like(src), filt))
    inner = tuple(slice(r, n - r) for r, n in zip(radii, src.shape, strict=True))
    _close(got[inner], ndimage.gaussian_filter(src, sigmas, radius=radii)[inner])


@pytest.mark.parametrize("params,physical", [
    ({"stat": "gradient", "window": 5}, False),
    ({"stat": "gradient", "window": [3, 5, 7]}, False),
    ({"stat": "gradient", "sigma_units": 1.5}, True),
])
def test_gradient_texture_equals_scipy_away_from_the_edges(params, physical):
    """Interior voxels: the magnitude of scipy's derivative-of-Gaussian along each axis
    (per unit length, each divided by its spacing, with ``sigma_units``)."""
    src = _source({}, _FLOAT)
    spec = FeatureSpec.parse({"texture": params}).params
    radii, sigmas = spec.kernel(_SPACING)
    got = _texture(params, _UNEVEN, arr=_FLOAT)
    parts = []
    for axis in range(3):
        order = [0, 0, 0]
        order[axis] = 1
        d = ndimage.gaussian_filter(src, sigmas, order=order, radius=radii)
        parts.append(d / _SPACING[axis] if physical else d)
    ref = np.sqrt(sum(p**2 for p in parts))
    inner = tuple(slice(r, n - r) for r, n in zip(radii, src.shape, strict=True))
    _close(got[inner], ref[inner], rtol=1e-5)


@pytest.mark.parametrize("stat", ["mean", "std"])
def test_box_texture_equals_a_nan_aware_reference_on_a_holey_volume(stat):
    src = _source({}, _HOLEY)
    func = np.nanmean if stat == "mean" else np.nanstd

    def window_stat(v: np.ndarray) -> float:
        if not np.isfinite(v).any():
            return np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(func(v))

    ref = ndimage.generic_filter(src, window_stat, size=(3, 5, 3), mode="constant",
                                 cval=np.nan)
    ref[~np.isfinite(src)] = np.nan
    _close(_texture({"stat": stat, "window": [3, 5, 3]}, _UNEVEN), ref, rtol=1e-5)


@pytest.mark.parametrize("stat", ["mean", "std", "gaussian", "gradient"])
def test_a_window_of_one_slice_is_the_2d_texture_of_each_slice(stat):
    got = _texture({"stat": stat, "window": [1, 5, 5]}, _UNEVEN)
    for k in range(_D):
        with dask.config.set(scheduler="synchronous"):
            im = xr.DataArray(_HOLEY[:, k], dims=("band", "y", "x")).chunk({"y": 4})
            flat = compute_features(im, [{"texture": {"stat": stat, "window": 5}}]).values[0]
        np.testing.assert_array_equal(got[k], flat)


def test_anisotropic_sigma_units_give_per_axis_radii_and_halos(monkeypatch):
    spec = FeatureSpec.parse({"texture": {"stat": "gradient", "sigma_units": 1.5}}).params
    radii, sigmas = spec.kernel(_SPACING)
    assert sigmas == (0.6, 1.5, 3.0)
    assert radii == (2, 5, 9)      # ceil(3 * sigma) voxels along z, y, x
    assert spec.kernel((1.0, 1.0, 1.0))[0] == (5, 5, 5)
    assert FeatureSpec.parse({"texture": spec.model_dump()}).halo == 5  # nominal
    halos = []
    real = texture_module.overlap

    def spy(data, func, halo, **kw):
        halos.append(tuple(halo))
        return real(data, func, halo, **kw)

    monkeypatch.setattr(texture_module, "overlap", spy)
    params = {"stat": "gradient", "sigma_units": 1.5}
    got = _texture(params, ((3, 3, 3), (6, 5), (10, 3)))
    assert halos == [(2, 5, 9)]
    np.testing.assert_array_equal(got, _texture(params))
    # isotropic voxels: the same sigma gives one radius
    _texture(params, spacing=(1.0, 1.0, 1.0))
    assert halos[-1] == (5, 5, 5)


def test_sigma_units_without_geometry_takes_spacing_one():
    params = {"stat": "gaussian", "sigma_units": 1.0}
    np.testing.assert_array_equal(_texture(params, spacing=None),
                                  _texture(params, spacing=(1.0, 1.0, 1.0)))
    assert not np.array_equal(_texture(params, spacing=None), _texture(params))


def test_sigma_units_on_a_2d_image_and_per_axis_windows():
    arr = _HOLEY[:, 0]
    params = {"stat": "gaussian", "sigma_units": 1.0}
    got = _texture(params, ((5, 6), (7, 6)), arr=arr, spacing=(2.0, 0.5))
    np.testing.assert_array_equal(got, _texture(params, arr=arr, spacing=(2.0, 0.5)))
    src = _source({}, arr)
    ref = _normalised(src, np.isfinite(src).astype(float), lambda a: ndimage.gaussian_filter(
        np.nan_to_num(a), (0.5, 2.0), mode="constant", radius=(2, 6)))
    ref[~np.isfinite(src)] = np.nan
    _close(got, ref)
    w = _texture({"stat": "mean", "window": [3, 7]}, ((4, 7), (13,)), arr=arr, spacing=None)
    np.testing.assert_array_equal(
        w, _texture({"stat": "mean", "window": [3, 7]}, arr=arr, spacing=None))


def test_texture_names_spell_out_the_kernel():
    names = [FeatureSpec.parse({"texture": p}) for p in (
        {"window": [1, 5, 5]}, {"stat": "gradient", "sigma_units": 2.5},
        {"stat": "gaussian", "sigma_units": 2, "truncate": 4, "band": 2})]
    cube = compute_features(_volume(), names)
    assert list(cube["feature"].values) == [
        "texture_std_w1x5x5_mean", "texture_gradient_su2.5_mean",
        "texture_gaussian_su2_t4_b2"]


def test_described_specs_parse_back_and_old_specs_are_unchanged():
    old = {"texture": {"scale": True, "stat": "std", "window": 7, "band": None, "sigma": None}}
    assert FeatureSpec.parse("texture").describe() == old
    assert FeatureSpec.parse("xy").describe() == {
        "xy": {"scale": False, "weight": 1.0, "step": 100.0}}
    for item in ({"texture": {"stat": "gradient", "sigma_units": 2.5, "truncate": 4}},
                 {"texture": {"window": [1, 3, 5]}}, {"xyz": {"physical": True}}, "hed"):
        d = FeatureSpec.parse(item).describe()
        assert FeatureSpec.parse(d).describe() == d


@pytest.mark.parametrize("params,match", [
    ({"window": [3, 4, 3]}, "odd"),
    ({"window": [3, 3, 3, 3]}, "one side per spatial axis"),
    ({"window": [1, 1, 1]}, "at least one side"),
    ({"window": [3, 0, 3]}, "greater than or equal to 1"),
    ({"stat": "std", "sigma_units": 2}, "sigma_units applies"),
    ({"stat": "gaussian", "sigma_units": 2, "window": 5}, "without window"),
    ({"stat": "gaussian", "sigma_units": 2, "sigma": 1}, "without window and sigma"),
    ({"stat": "gaussian", "truncate": 4}, "truncate applies"),
    ({"stat": "gaussian", "sigma_units": -1}, "greater than 0"),
])
def test_texture_volume_params_are_checked(params, match):
    with pytest.raises(ValueError, match=match):
        FeatureSpec.parse({"texture": params})


def test_texture_kernel_errors_name_the_problem():
    with pytest.raises(ConfigError, match="window .* has 2 sides but the image has 3"):
        compute_features(_volume(), [{"texture": {"window": [3, 5]}}])
    with pytest.raises(ConfigError, match="at most 127"):
        compute_features(_volume(spacing=(1.0, 1.0, 0.01)),
                         [{"texture": {"stat": "gaussian", "sigma_units": 1}}])
    im = _volume()
    im.attrs["geometry"] = _geometry((_H, _W), (1.0, 1.0))
    with pytest.raises(ValueError, match="geometry has dims"):
        compute_features(im, [{"texture": {"stat": "gaussian", "sigma_units": 1}}])
