"""Majority filter of ``(z, y, x)`` class maps: brute-force reference, tie rules,
per-axis radii, the three kernels, and chunk independence (hypothesis)."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.postprocess import majority_filter
from pipeline.postprocess._majority import majority_block
from pipeline.postprocess._majority3d import (
    _majority_boxcount3,
    _majority_direct3,
    _majority_sliding3,
)

_RNG = np.random.default_rng(17)
_D, _H, _W = 8, 10, 11


def _map(n_classes: int, dtype=np.uint8, nodata=255, shape=(_D, _H, _W), seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, n_classes, size=shape).astype(dtype)
    arr[rng.random(shape) < 0.08] = nodata     # scattered nodata
    arr[2, 3:6, 4:9] = nodata                  # a nodata slab
    arr[:, 0, :] = nodata                      # a nodata face
    return arr


_FEW = _map(3)                                  # many ties
_MANY = _map(300, np.uint16, 65535, seed=1)     # the histogram kernels


def _brute(arr: np.ndarray, radii, nodata: int) -> np.ndarray:
    """Voxel by voxel: count the window's valid classes (cut at the edge), then the rule."""
    out = arr.copy()
    for idx in np.ndindex(arr.shape):
        c = arr[idx]
        if c == nodata:
            continue
        win = arr[tuple(slice(max(i - r, 0), i + r + 1) for i, r in zip(idx, radii,
                                                                          strict=True))]
        classes, counts = np.unique(win[win != nodata], return_counts=True)
        best = counts.max()
        out[idx] = c if counts[classes == c][0] == best else classes[counts == best].min()
    return out


def _labels(arr, chunks, nodata) -> xr.DataArray:
    lab = xr.DataArray(da.from_array(arr, chunks=chunks), dims=("z", "y", "x")[-arr.ndim:],
                       name="labels")
    return lab.rio.write_nodata(nodata, encoded=False)


def _run(arr, chunks, radius, nodata=255) -> np.ndarray:
    with dask.config.set(scheduler="synchronous"):
        return majority_filter(_labels(arr, chunks, nodata), radius).values


_BRUTE = {}


def _reference(arr, radii, nodata):
    key = (id(arr), radii)
    if key not in _BRUTE:
        _BRUTE[key] = _brute(arr, radii, nodata)
    return _BRUTE[key]


@pytest.mark.parametrize("radius", [1, 2, (1, 2, 1), (0, 1, 2), (2, 0, 0)])
@pytest.mark.parametrize("which", ["few", "many"])
def test_majority_3d_equals_a_brute_force_reference(radius, which):
    arr, nodata = (_FEW, 255) if which == "few" else (_MANY, 65535)
    radii = radius if isinstance(radius, tuple) else (radius,) * 3
    got = _run(arr, ((3, 5), (4, 6), (5, 1, 5)), radius, nodata)
    np.testing.assert_array_equal(got, _reference(arr, radii, nodata))


def _splits(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    def to_chunks(cuts: list[int]) -> tuple[int, ...]:
        edges = [0, *sorted(cuts), n]
        return tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True))
    return st.lists(st.integers(1, n - 1), unique=True, max_size=5).map(to_chunks)


_RADII = st.sampled_from([1, 2, (1, 2, 1), (0, 1, 2), (2, 1, 0)])


@settings(max_examples=40, deadline=None)
@given(radius=_RADII, which=st.sampled_from(["few", "many"]), cz=_splits(_D),
       cy=_splits(_H), cx=_splits(_W))
@example(radius=2, which="few", cz=(1,) * _D, cy=(9, 1), cx=(1, 1, 9))
@example(radius=(0, 1, 2), which="many", cz=(7, 1), cy=(1,) * _H, cx=(11,))
def test_majority_3d_does_not_depend_on_chunking(radius, which, cz, cy, cx):
    arr, nodata = (_FEW, 255) if which == "few" else (_MANY, 65535)
    radii = radius if isinstance(radius, tuple) else (radius,) * 3
    got = _run(arr, (cz, cy, cx), radius, nodata)
    np.testing.assert_array_equal(got, _run(arr, arr.shape, radius, nodata))
    np.testing.assert_array_equal(got, _reference(arr, radii, nodata))


@pytest.mark.parametrize("n_classes", [2, 5, 40, 300])
@pytest.mark.parametrize("radii", [(1, 1, 1), (2, 2, 2), (0, 1, 3), (1, 0, 2)])
def test_the_three_volume_kernels_agree(n_classes, radii):
    dtype, nodata = (np.uint8, 255) if n_classes < 255 else (np.uint16, 65535)
    arr = _map(n_classes, dtype, nodata, shape=(7, 9, 12), seed=n_classes)
    nd = arr.dtype.type(nodata)
    n_bins = int(arr[arr != nd].max()) + 1
    want = _brute(arr, radii, nodata)
    counts = np.zeros(int(np.iinfo(dtype).max) + 1, dtype=np.int32)
    got = np.full_like(arr, 7)
    _majority_direct3(arr, *radii, nd, counts, got)
    np.testing.assert_array_equal(got, want)
    got = np.full_like(arr, 7)
    _majority_sliding3(arr, *radii, nd, n_bins, counts, got)
    np.testing.assert_array_equal(got, want)
    for ctype in (np.int16, np.int32):
        vol = [np.empty(arr.shape, ctype) for _ in range(3)]
        ring = np.empty((2 * radii[0] + 2, *arr.shape[1:]), ctype)
        got = np.full_like(arr, 7)
        _majority_boxcount3(arr, *radii, nd, n_bins, np.empty(arr.shape[2] + 2 * radii[2], ctype),
                            np.empty(arr.shape[1:], ctype), ring, np.empty(arr.shape[1:], ctype),
                            *vol, got)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(majority_block(arr, radii, nodata), want)


def test_tie_rules_keep_the_centre_else_the_smallest_class():
    arr = np.zeros((3, 3, 3), np.uint8) + 255
    arr[1, 1, 1] = 7                   # centre
    arr[0, :, :2] = 7                  # 6 more 7s: 7 x 7
    arr[2, :, :2] = 4                  # 6 x 4
    arr[1, 0, :] = 4                   # +3: 9 x 4
    arr[2, :, 2] = 2                   # 3 x 2
    arr[0, :, 2] = 2                   # +3: 6 x 2
    got = majority_block(arr, 1, 255)
    assert got[1, 1, 1] == 4           # 4 is the most frequent
    arr[1, 0, :] = 7                   # now 7 x 10 ... centre 7 wins alone
    assert majority_block(arr, 1, 255)[1, 1, 1] == 7
    row = np.array([[[9, 4, 7, 4, 9]]], np.uint8)   # voxel 2: 9 x 2, 4 x 2, 7 x 1
    assert majority_block(row, (0, 0, 2), 255)[0, 0, 2] == 4      # the smallest of 4, 9
    row[0, 0, 3] = 7                                      # 9 x 2, 7 x 2: centre 7 kept
    assert majority_block(row, (0, 0, 2), 255)[0, 0, 2] == 7
    # three classes once each, or a cut window: the centre is among the most frequent
    np.testing.assert_array_equal(
        majority_block(np.array([[[5, 8, 3, 5]]], np.uint8), (0, 0, 1), 255)[0, 0],
        [5, 8, 3, 5])


def test_nodata_stays_and_is_never_counted_and_the_edge_is_not_counted():
    arr = np.full((5, 5, 5), 1, np.uint8)
    arr[:, :, 0] = 2                   # the face x = 0
    arr[2] = 0                         # nodata 0 here: a slab
    got = _run(arr, ((2, 3), (5,), (1, 4)), 1, nodata=0)
    assert (got[2] == 0).all()
    # at x = 0 the window has 2 columns in the volume: class 2 and class 1 tie (centre 2)
    assert (got[[0, 1, 3, 4], :, 0] == 2).all()
    assert (got[[0, 1, 3, 4], :, 1:] == 1).all()


def test_per_slice_radii_equal_the_2d_filter_of_each_slice():
    got = _run(_FEW, ((3, 5), (10,), (4, 7)), (0, 2, 2))
    for k in range(_D):
        np.testing.assert_array_equal(got[k], _run(_FEW[k], ((6, 4), (11,)), 2))


def test_anisotropic_radii_on_a_2d_map():
    arr = _FEW[3]
    got = _run(arr, ((4, 6), (3, 8)), (1, 2))
    np.testing.assert_array_equal(got, _brute(arr, (1, 2), 255))
    np.testing.assert_array_equal(_run(arr, arr.shape, (2, 2)), _run(arr, arr.shape, 2))


def test_majority_3d_is_lazy_and_keeps_dims_chunks_and_nodata():
    lab = _labels(_FEW, ((3, 5), (4, 6), (11,)), 255).assign_coords(z=np.arange(_D) * 2.5)
    out = majority_filter(lab, (1, 2, 2))
    assert isinstance(out.data, da.Array)
    assert out.dims == ("z", "y", "x") and out.chunks == lab.chunks
    assert out.dtype == np.uint8 and out.rio.nodata == 255
    np.testing.assert_array_equal(out["z"], lab["z"])


@pytest.mark.parametrize("radius,match", [
    ((1, 1), "one radius per axis"), ((1, -1, 1), "radius must be"),
    ((0, 0, 0), "radius must be"), (0, "radius must be"), (1.5, "radius must be"),
])
def test_majority_3d_radius_is_checked(radius, match):
    with pytest.raises(ValueError, match=match):
        majority_filter(_labels(_FEW, _FEW.shape, 255), radius)


def test_majority_refuses_4d_labels():
    lab = xr.DataArray(np.zeros((2, 2, 2, 2), np.uint8), dims=("t", "z", "y", "x"))
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        majority_filter(lab, 1, nodata=255)
