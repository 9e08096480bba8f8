"""Global connected segments: equal to scipy on the whole image, for any chunking."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _segment_oracle import (
    NODATA,
    as_arrays,
    class_maps,
    features_for,
    oracle_segments,
    partitions,
    quantised,
    run_segments,
)
from affine import Affine
from dask.delayed import Delayed
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.postprocess import relabel_segments, resolve_segments, segment_table, segment_tasks
from pipeline.postprocess._kernels import label_chunk
from pipeline.postprocess._resolve import fixed_to_float, segment_dtype


def _stats_equal(a, b) -> None:
    for name, value in vars(a.stats).items():
        np.testing.assert_array_equal(value, getattr(b.stats, name), err_msg=name)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), classes=class_maps(), connectivity=st.sampled_from([4, 8]))
def test_ids_equal_scipy_for_any_chunking(data, classes, connectivity):
    h, w = classes.shape
    chunks = (data.draw(partitions(h)), data.draw(partitions(w)))
    features = features_for(classes, 0)
    seg, index = run_segments(classes, features, chunks, connectivity)
    ref = oracle_segments(classes, connectivity)
    np.testing.assert_array_equal(seg, ref)
    assert seg.dtype == np.uint32
    # the table is the single-chunk table, exactly
    _, single = run_segments(classes, features, (h, w), connectivity)
    _stats_equal(index, single)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), classes=class_maps(max_side=16), connectivity=st.sampled_from([4, 8]))
def test_table_matches_direct_computation(data, classes, connectivity):
    h, w = classes.shape
    chunks = (data.draw(partitions(h)), data.draw(partitions(w)))
    rng = np.random.default_rng(7)
    features = rng.normal(0, 100, (2, h, w)).astype(np.float32)
    seg, index = run_segments(classes, features, chunks, connectivity)
    stats = index.stats
    q = quantised(features)
    for i in range(1, int(seg.max(initial=0)) + 1):
        rows, cols = np.nonzero(seg == i)
        s = i - 1
        assert stats.count[s] == rows.size
        assert stats.klass[s] == classes[rows[0], cols[0]]
        assert stats.first[s] == rows[0] * w + cols[0]
        assert (stats.rmin[s], stats.rmax[s]) == (rows.min(), rows.max())
        assert (stats.cmin[s], stats.cmax[s]) == (cols.min(), cols.max())
        for f in range(2):
            exact = int(q[f][rows, cols].sum())
            assert int(stats.hi[s, f]) * 2**32 + int(stats.lo[s, f]) == exact
            assert fixed_to_float(stats.hi[s:s + 1, f], stats.lo[s:s + 1, f])[0] == \
                float(exact) / 2**24
        np.testing.assert_allclose(stats.means()[s], features[:, rows, cols].astype(float).mean(1),
                                   rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------
# Scenes built to break naive code
# --------------------------------------------------------------------------------------


def _scene(name: str) -> np.ndarray:
    a = np.zeros((12, 12), dtype=np.uint8)
    if name == "corner_straddle":  # a 4 x 4 square centred on the corner of 4 chunks
        a[4:8, 4:8] = 1
    elif name == "ring_four_chunks":  # a ring crossing four chunks, its hole in all four
        a[2:10, 2:10] = 1
        a[4:8, 4:8] = 2
    elif name == "diagonal_line":  # one pixel wide, crossing chunk corners
        a[:] = 2
        a[np.arange(12), np.arange(12)] = 1
    elif name == "anti_diagonal":
        a[:] = 2
        a[np.arange(12), 11 - np.arange(12)] = 1
    elif name == "corner_touch":  # two squares touching only at the chunks' corner
        a[:] = 2
        a[4:6, 4:6] = 1
        a[6:8, 6:8] = 1
    elif name == "checkerboard":
        a = (np.indices((12, 12)).sum(0) % 2).astype(np.uint8)
    elif name == "one_chunk_one_segment":
        a[:] = 1
        a[:6, :6] = 0
    elif name == "chunk_all_nodata":
        a[:] = 1
        a[6:, :6] = NODATA
    elif name == "all_nodata":
        a[:] = NODATA
    elif name == "spiral":
        a[:] = 2
        a[1, 1:11] = 1
        a[1:11, 10] = 1
        a[10, 1:11] = 1
        a[3:11, 1] = 1
        a[3, 1:9] = 1
        a[3:9, 8] = 1
        a[8, 3:9] = 1
        a[5:9, 3] = 1
    return a


SCENES = ["corner_straddle", "ring_four_chunks", "diagonal_line", "anti_diagonal",
          "corner_touch", "checkerboard", "one_chunk_one_segment", "chunk_all_nodata",
          "all_nodata", "spiral"]


@pytest.mark.parametrize("name", SCENES)
@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("chunks", [6, 4, 5, 1, (3, 5), 12])
def test_adversarial_scenes(name, connectivity, chunks):
    classes = _scene(name)
    seg, _ = run_segments(classes, None, chunks, connectivity)
    np.testing.assert_array_equal(seg, oracle_segments(classes, connectivity))


def test_known_answers():
    n = {c: run_segments(_scene(s), None, 6, c)[1].n_segments
         for s in ("diagonal_line",) for c in (4, 8)}
    # 4: twelve single pixels and two triangles; 8: one line, and the triangles touch
    # each other by the corners between the line's pixels
    assert n == {4: 12 + 2, 8: 2}
    seg, _ = run_segments(_scene("corner_touch"), None, 6, 8)
    assert seg[4, 4] == seg[7, 7] != seg[0, 0]
    seg, _ = run_segments(_scene("corner_touch"), None, 6, 4)
    assert seg[4, 4] != seg[7, 7]
    seg, index = run_segments(_scene("ring_four_chunks"), None, 6, 8)
    assert index.n_segments == 3 and seg[2, 2] == 2 and seg[5, 5] == 3
    _, index = run_segments(_scene("all_nodata"), None, 5, 8)
    assert index.n_segments == 0


def test_label_chunk_numbers_by_first_pixel():
    classes = np.array([[1, 0, 1], [1, 0, 0], [2, 2, 1]])
    lab, n = label_chunk(classes, None, 4)
    assert n == 5
    np.testing.assert_array_equal(lab, [[1, 2, 3], [1, 2, 2], [4, 4, 5]])
    lab, n = label_chunk(classes, 0, 8)
    np.testing.assert_array_equal(lab, [[1, 0, 2], [1, 0, 0], [3, 3, 4]])


def test_segment_table_columns_and_units():
    classes = np.array([[0, 0, 1], [0, 1, 1]], dtype=np.uint8)
    features = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    lab, feats = as_arrays(classes, features, 1)
    tasks = segment_tasks(lab, feats, connectivity=4, offset=[1.0, 2.0], scale=[2.0, 4.0])
    pieces, joins = dask.compute(tasks.pieces, tasks.joins)
    index = resolve_segments(tasks, pieces, joins)
    t = Affine(10.0, 0.0, 1000.0, 0.0, -10.0, 5000.0)
    table = segment_table(index.stats, transform=t, feature_names=["a", "b"],
                          offset=[1.0, 2.0], scale=[2.0, 4.0])
    assert list(table.columns) == ["id", "class", "area_px", "area", "row_min", "row_max",
                                   "col_min", "col_max", "x_min", "y_min", "x_max", "y_max",
                                   "mean_a", "mean_b"]
    expected = pd.DataFrame({
        "id": np.array([1, 2], dtype=np.uint32), "class": [0, 1], "area_px": [3, 3],
        "area": [300.0, 300.0], "row_min": [0, 0], "row_max": [1, 1], "col_min": [0, 1],
        "col_max": [1, 2], "x_min": [1000.0, 1010.0], "y_min": [4980.0, 4980.0],
        "x_max": [1020.0, 1030.0], "y_max": [5000.0, 5000.0],
        "mean_a": [(0 + 1 + 3) / 3, (2 + 4 + 5) / 3],
        "mean_b": [(6 + 7 + 9) / 3, (8 + 10 + 11) / 3],
    })
    pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-9)


def test_lazy_and_one_table_per_task():
    classes = np.random.default_rng(0).integers(0, 3, (20, 20)).astype(np.uint8)
    lab, _ = as_arrays(classes, None, 7)
    tasks = segment_tasks(lab, connectivity=8)
    assert all(isinstance(t, Delayed) for t in tasks.pieces + tasks.joins)
    assert len(tasks.pieces) == len(tasks.joins) == 9
    pieces, joins = dask.compute(tasks.pieces, tasks.joins)
    index = resolve_segments(tasks, pieces, joins)
    # each relabel task holds its own chunk's table only
    assert [lut.size for lut in index.luts] == [p.count.size + 1 for p in pieces]
    seg = relabel_segments(lab, index)
    assert isinstance(seg.data, da.Array) and seg.rio.nodata == 0
    assert seg.data.chunks == lab.data.chunks
    with pytest.raises(ValueError, match="chunks"):
        relabel_segments(lab.chunk(5), index)


def test_errors():
    lab, _ = as_arrays(np.zeros((4, 4), np.uint8), None, 2)
    with pytest.raises(ValueError, match="connectivity must be 4 or 8, got 6"):
        segment_tasks(lab, connectivity=6)
    with pytest.raises(TypeError, match="integer"):
        segment_tasks(lab.astype(np.float32))
    with pytest.raises(ValueError, match="min_pixels"):
        segment_tasks(lab, min_pixels=0)
    feats = xr.DataArray(da.zeros((1, 3, 4)), dims=("feature", "y", "x"))
    with pytest.raises(ValueError, match="shape"):
        segment_tasks(lab, feats)


def test_segment_dtype():
    assert segment_dtype(0) == np.uint32
    assert segment_dtype(2**32 - 1) == np.uint32
    assert segment_dtype(2**32) == np.uint64


@settings(max_examples=10, deadline=None)
@given(classes=class_maps(max_side=12))
@example(classes=np.full((3, 3), 1, np.uint8))
def test_threads_and_synchronous_agree(classes):
    lab, _ = as_arrays(classes, None, 4)
    tasks = segment_tasks(lab, connectivity=8)
    a = resolve_segments(tasks, *dask.compute(tasks.pieces, tasks.joins, scheduler="threads"))
    b = resolve_segments(tasks, *dask.compute(tasks.pieces, tasks.joins,
                                              scheduler="synchronous"))
    _stats_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), classes=class_maps(max_side=20),
       dtype=st.sampled_from(["uint8", "uint16", "int16", "uint32", "int32", "float32",
                              "float64"]),
       seed=st.integers(0, 2**32 - 1))
def test_raw_bands_give_the_float32_copys_statistics(data, classes, dtype, seed):
    """Summing raw image bands (any dtype) equals summing masked_float's float32 copy:
    bit for bit, or for bands of at most 16 bits (summed as integers), the same means
    and the exact integer sums."""
    from pipeline.io import masked_float

    h, w = classes.shape
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if dtype[0] in "ui" else np.finfo(dtype)
    lo, hi = max(float(info.min), -1e30), min(float(info.max), 1e30)
    raw = rng.uniform(lo, hi, (3, h, w)).astype(dtype)
    valid = classes != NODATA
    # as labelled: a pixel with a band at nodata (0) is invalid, the others are valid
    raw[(raw == 0) & valid] = raw.dtype.type(1)
    raw[:, ~valid] = raw.dtype.type(0)
    sel = data.draw(st.lists(st.integers(0, 2), min_size=1, max_size=4))
    chunks = (data.draw(partitions(h)), data.draw(partitions(w)))
    lab, _ = as_arrays(classes, None, chunks)
    image = xr.DataArray(da.from_array(raw, chunks=((3,),) + lab.data.chunks),
                         dims=("band", "y", "x")).rio.write_nodata(0, encoded=False)
    floats = masked_float(image).isel(band=sel)
    offset, scale = rng.normal(size=len(sel)), rng.uniform(0.5, 2.0, len(sel))
    results = []
    for feats, bands in ((floats, None), (image, sel)):
        tasks = segment_tasks(lab, feats, bands=bands, connectivity=8, min_pixels=3,
                              offset=offset, scale=scale)
        results.append(resolve_segments(tasks, *dask.compute(tasks.pieces, tasks.joins,
                                                             scheduler="synchronous")))
    copy, direct = results
    if np.dtype(dtype).itemsize <= 2 and dtype[0] in "ui":
        np.testing.assert_allclose(direct.stats.means(), copy.stats.means(), rtol=1e-12,
                                   atol=2.0**-24)  # the copy: fixed point
        sums = direct.stats.hi * 2**32 + direct.stats.lo
        ids = np.asarray(relabel_segments(lab, direct).values)
        for f, b in enumerate(sel):
            want = np.bincount(ids.ravel(), weights=raw[b].astype(np.float64).ravel(),
                               minlength=direct.n_segments + 1)[1:]
            np.testing.assert_array_equal(sums[:, f], want.astype(np.int64))
        for name in ("klass", "first", "count", "rmin", "rmax", "cmin", "cmax"):
            np.testing.assert_array_equal(getattr(direct.stats, name),
                                          getattr(copy.stats, name))
    else:
        _stats_equal(copy, direct)
    with pytest.raises(ValueError, match="bands"):
        segment_tasks(lab, image, bands=[3])
