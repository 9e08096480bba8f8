"""Majority filter: whole-image reference, tie rules, nodata, chunk independence."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.cluster import fit, predict
from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.features import compute_features
from pipeline.postprocess import majority_filter

_RNG = np.random.default_rng(5)
_H, _W = 27, 33
_LAB = _RNG.integers(0, 4, size=(_H, _W)).astype(np.uint8)
_LAB[5:9, 3:12] = 255               # nodata block
_LAB[0, :] = 255                    # nodata along the top edge
_LAB[15, 15] = 255


def _labels(arr, chunks, nodata=255) -> xr.DataArray:
    lab = xr.DataArray(da.from_array(arr, chunks=chunks), dims=("y", "x"), name="labels")
    return lab.rio.write_nodata(nodata, encoded=False)


def _splits(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    def to_chunks(cuts: list[int]) -> tuple[int, ...]:
        edges = [0, *sorted(cuts), n]
        return tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True))
    return st.lists(st.integers(1, n - 1), unique=True, max_size=8).map(to_chunks)


def _reference(arr: np.ndarray, radius: int, nodata: int) -> np.ndarray:
    """Whole-image scipy reference: per-class window counts by correlation with a box
    (pixels beyond the edge count 0), then the tie rules, vectorised."""
    classes = np.unique(arr[arr != nodata])
    box = np.ones((2 * radius + 1,) * 2, dtype=np.int64)
    counts = np.stack([ndimage.correlate((arr == c).astype(np.int64), box, mode="constant")
                       for c in classes])
    best = counts.max(0)
    smallest = classes[np.argmax(counts == best, axis=0)]  # first (smallest) class at max
    centre = np.zeros_like(best)
    for i, c in enumerate(classes):
        centre[arr == c] = counts[i][arr == c]
    out = np.where(centre == best, arr, smallest).astype(arr.dtype)
    out[arr == nodata] = nodata
    return out


def _run(arr, chunks, radius, nodata=255) -> np.ndarray:
    with dask.config.set(scheduler="synchronous"):
        return majority_filter(_labels(arr, chunks, nodata), radius).values


@settings(max_examples=30, deadline=None)
@given(cy=_splits(_H), cx=_splits(_W), radius=st.integers(1, 4))
@example(cy=(1,) * _H, cx=(32, 1), radius=2)
@example(cy=(26, 1), cx=(1, 1, 31), radius=4)
def test_majority_equals_whole_image_reference_for_any_chunking(cy, cx, radius):
    got = _run(_LAB, (cy, cx), radius)
    np.testing.assert_array_equal(got, _run(_LAB, (_H, _W), radius))
    np.testing.assert_array_equal(got, _reference(_LAB, radius, 255))


def test_majority_uint16_labels():
    arr = _RNG.integers(0, 300, size=(20, 21)).astype(np.uint16)
    arr[arr % 7 == 0] = 65535
    got = _run(arr, (6, 8), 1, nodata=65535)
    np.testing.assert_array_equal(got, _reference(arr, 1, 65535))


@pytest.mark.parametrize("n_classes,radius", [(3, 1), (5, 2), (40, 1), (40, 3), (2, 6)])
def test_sliding_and_direct_kernels_agree_with_the_reference(n_classes, radius):
    from pipeline.postprocess._majority import _majority_direct, _majority_sliding

    arr = _RNG.integers(0, n_classes, size=(31, 26)).astype(np.uint8)
    arr[_RNG.random(arr.shape) < 0.15] = 255
    ref = _reference(arr, radius, 255)
    counts = np.zeros(256, np.int32)
    for run in (lambda out: _majority_direct(arr, radius, np.uint8(255), counts, out),
                lambda out: _majority_sliding(arr, radius, np.uint8(255),
                                              int(arr[arr != 255].max()) + 1, counts, out)):
        out = np.empty_like(arr)
        run(out)
        np.testing.assert_array_equal(out, ref)


def test_tie_keeps_the_centre_class():
    arr = np.array([[1, 1, 2],
                    [3, 2, 3],
                    [3, 1, 2]], np.uint8)       # 1: 3, 2: 3, 3: 3; centre 2 is tied
    assert _run(arr, (2, 2), 1)[1, 1] == 2


def test_tie_without_the_centre_takes_the_smallest_id():
    arr = np.array([[4, 4, 2],
                    [2, 9, 4],
                    [2, 0, 7]], np.uint8)       # 2: 3, 4: 3, centre 9: 1
    assert _run(arr, (3, 1), 1)[1, 1] == 2


def test_nodata_never_wins_and_stays_nodata():
    arr = np.full((5, 5), 255, np.uint8)
    arr[2, 2] = 3                               # a lone class pixel amid nodata
    arr[0, 0] = 1
    got = _run(arr, (2, 3), 2)
    assert got[2, 2] == 3 and got[0, 0] == 1
    assert (got[arr == 255] == 255).all()


def test_image_edge_counts_only_pixels_inside():
    arr = np.array([[1, 2, 2, 2]], np.uint8)
    # at the left edge the window (radius 1) is [1, 2]: a tie, the centre (1) stays
    np.testing.assert_array_equal(_run(arr, (1, 1), 1), [[1, 2, 2, 2]])
    np.testing.assert_array_equal(_run(arr, (1, 2), 2), [[2, 2, 2, 2]])


def test_majority_is_lazy_and_keeps_chunks_coords_and_nodata():
    lab = _labels(_LAB, ((1, 2, 24), (5, 28)))
    lab = lab.assign_coords(y=np.arange(_H) * -30.0, x=np.arange(_W) * 30.0)
    out = majority_filter(lab, 3)
    assert isinstance(out.data, da.Array)
    assert out.chunks == lab.chunks and out.dtype == np.uint8
    assert out.rio.nodata == 255 and out.name == "labels"
    np.testing.assert_array_equal(out["y"].values, lab["y"].values)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"radius": 0}, ValueError, "radius"),
    ({"radius": 1.5}, ValueError, "radius"),
])
def test_majority_checks_its_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        majority_filter(_labels(_LAB, (9, 9)), **kwargs)


def test_majority_refuses_other_dtypes_and_missing_nodata():
    with pytest.raises(TypeError, match="uint8 or uint16"):
        majority_filter(_labels(_LAB.astype(np.int32), (9, 9)), 1)
    bare = xr.DataArray(da.from_array(_LAB, chunks=9), dims=("y", "x"))
    with pytest.raises(ValueError, match="nodata"):
        majority_filter(bare, 1)
    assert majority_filter(bare, 1, nodata=255).shape == _LAB.shape


def test_config_majority_and_keep_raw():
    cfg = parse_config({"input": "a.tif", "output": "o",
                        "postprocess": {"majority": {"radius": 2}, "keep_raw": True}})
    assert cfg.postprocess.majority.radius == 2 and cfg.postprocess.keep_raw
    assert parse_config({"input": "a.tif", "output": "o"}).postprocess.majority.radius == 0
    with pytest.raises(ConfigError, match="radius"):
        parse_config({"input": "a.tif", "output": "o",
                      "postprocess": {"majority": {"radius": -1}}})
    with pytest.raises(ConfigError, match="unknown key 'postprocess.majority.size'"):
        parse_config({"input": "a.tif", "output": "o",
                      "postprocess": {"majority": {"size": 3}}})


# --- the whole chain: features -> global fit -> labels -> majority ----------------------

_IMG = _RNG.integers(1, 256, size=(4, 30, 34)).astype(np.uint8)
_IMG[:, 10:16, 12:20] //= 3                   # a darker block: structure to find
_IMG[:, 22:, :6] = 0                          # nodata (value 0)
_FEATS = ["lab", {"texture": {"stat": "std", "window": 5}},
          {"index": {"name": "ndvi", "bands": {"red": 3, "nir": 4}}}, {"xy": 0.3}]


def _class_map(chunks) -> np.ndarray:
    data = da.from_array(_IMG, chunks=(4,) + tuple(chunks))
    image = xr.DataArray(data, dims=("band", "y", "x")).rio.write_nodata(0)
    image.encoding["dtype"] = _IMG.dtype
    with dask.config.set(scheduler="synchronous"):
        feats = compute_features(image, _FEATS)
        model = fit(feats, 4, seed=1, sample_size=500, n_init=1)
        return majority_filter(predict(feats, model), 1).values


@settings(max_examples=8, deadline=None)
@given(cy=_splits(30), cx=_splits(34))
@example(cy=(1,) * 30, cx=(33, 1))
def test_class_map_after_majority_is_identical_for_any_chunking(cy, cx):
    np.testing.assert_array_equal(_class_map((cy, cx)), _class_map((30, 34)))
