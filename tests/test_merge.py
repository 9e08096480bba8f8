"""Minimum mapping unit: the merge is the written rule, and the same for any chunking."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from _segment_oracle import (
    NODATA,
    as_arrays,
    class_maps,
    features_for,
    neighbour_pairs,
    oracle_merge,
    oracle_segments,
    partitions,
    run_segments,
)
from affine import Affine
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.postprocess import (
    merge_small_segments,
    pixels_for_area,
    resolve_segments,
    segment_table,
    segment_tasks,
)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), classes=class_maps(), connectivity=st.sampled_from([4, 8]),
       min_pixels=st.integers(1, 12), seed=st.integers(0, 3))
@example(data=None, classes=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 2]], np.uint8),
         connectivity=8, min_pixels=3, seed=0).via("a small cross")
def test_merge_equals_oracle_for_any_chunking(data, classes, connectivity, min_pixels, seed):
    h, w = classes.shape
    if data is None:
        chunks = ((1,) * h, (1,) * w)
    else:
        chunks = (data.draw(partitions(h)), data.draw(partitions(w)))
    features = features_for(classes, seed)
    seg, index = run_segments(classes, features, chunks, connectivity, min_pixels)
    ref, ref_classes = oracle_merge(oracle_segments(classes, connectivity), classes, features,
                                    connectivity, min_pixels)
    np.testing.assert_array_equal(seg, ref)
    assert {i + 1: int(c) for i, c in enumerate(index.stats.klass)} == ref_classes
    # the whole merged table equals the single-chunk one, exactly
    single_seg, single = run_segments(classes, features, (h, w), connectivity, min_pixels)
    np.testing.assert_array_equal(single_seg, seg)
    for name, value in vars(index.stats).items():
        np.testing.assert_array_equal(value, getattr(single.stats, name), err_msg=name)
    # no segment is smaller than min_pixels unless it has no neighbour
    pairs = neighbour_pairs(seg, connectivity)
    has_neighbour = {a for a, _ in pairs} | {b for _, b in pairs}
    for i, n in enumerate(index.stats.count, start=1):
        assert n == (seg == i).sum()
        assert n >= min_pixels or i not in has_neighbour


def _merge(classes, features, min_pixels, connectivity=4, chunks=2):
    return run_segments(classes, features, chunks, connectivity, min_pixels)


def test_merged_segment_keeps_class_of_the_one_it_merged_into():
    classes = np.zeros((6, 6), np.uint8)
    classes[2:4, 2:3] = 1  # 2 pixels of class 1 inside class 0
    feats = np.zeros((1, 6, 6), np.float32)
    seg, index = _merge(classes, feats, 3)
    assert index.n_segments == 1 and (seg == 1).all()
    assert index.stats.klass.tolist() == [0] and index.stats.count.tolist() == [36]


def test_closest_mean_wins_then_longest_border_then_lowest_id():
    # a 1-pixel segment (class 2) between two large ones
    classes = np.array([[0, 0, 0, 2, 1, 1, 1]] * 1 + [[0, 0, 0, 1, 1, 1, 1]] * 2, np.uint8)
    # closer in feature to class 0 (value 1 vs 0 and 5), though it borders class 1 more
    feats = np.where(classes == 1, 5.0, 0.0)[None].astype(np.float32)
    feats[0, 0, 3] = 1.0
    seg, index = _merge(classes, feats, 2)
    assert seg[0, 3] == seg[0, 0]
    # equal distances: the longest shared border wins (class 1: 2 pixel edges)
    feats = np.where(classes == 1, 2.0, 0.0)[None].astype(np.float32)
    feats[0, 0, 3] = 1.0
    seg, index = _merge(classes, feats, 2)
    assert seg[0, 3] == seg[0, 4]
    # equal distances and borders: the lowest ID wins (whichever class it has)
    for classes in (np.array([[0, 0, 0], [0, 2, 1], [1, 1, 1]], np.uint8),
                    np.array([[1, 1, 1], [1, 2, 0], [0, 0, 0]], np.uint8)):
        feats = np.where(classes == classes[0, 0], 0.0, 2.0)[None].astype(np.float32)
        feats[0, 1, 1] = 1.0
        seg, index = _merge(classes, feats, 2, chunks=1)
        assert seg[1, 1] == seg[0, 0] == 1 and index.stats.klass[0] == classes[0, 0]


def test_statistics_are_updated_as_merges_happen():
    # four 1-pixel segments; 1 merges into 2 first (its only neighbour): the mean of
    # {1, 2} becomes 5, so 3 (value 6) joins it rather than 4 (value 8), which it would
    # join if the mean of 2 (10) were not updated; then 4 joins the same group
    classes = np.array([[0, 1, 2, 3]], np.uint8)
    feats = np.array([[[0.0, 10.0, 6.0, 8.0]]], np.float32)
    seg, index = _merge(classes, feats, 2, chunks=1)
    assert seg.tolist() == [[1, 1, 1, 1]]
    assert index.stats.klass.tolist() == [1]  # everything merged into segment 2, class 1
    ref, _ = oracle_merge(oracle_segments(classes, 4), classes, feats, 4, 2)
    np.testing.assert_array_equal(seg, ref)


def test_isolated_small_segment_stays():
    classes = np.full((5, 5), NODATA, np.uint8)
    classes[2, 2] = 0
    classes[0, :] = 1
    seg, index = _merge(classes, np.zeros((1, 5, 5), np.float32), 4)
    assert index.n_segments == 2
    assert sorted(index.stats.count.tolist()) == [1, 5]


def test_corner_neighbours_count_only_with_8_connectivity():
    classes = np.full((4, 4), NODATA, np.uint8)
    classes[:2, :2] = 0
    classes[2, 2] = 1  # touches the square by a corner only
    feats = np.zeros((1, 4, 4), np.float32)
    _, index4 = _merge(classes, feats, 2, connectivity=4)
    _, index8 = _merge(classes, feats, 2, connectivity=8)
    assert index4.n_segments == 2 and index8.n_segments == 1


def test_table_after_merge():
    classes = np.zeros((4, 4), np.uint8)
    classes[0, 0] = 1
    feats = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    _, index = _merge(classes, feats, 2)
    table = segment_table(index.stats, feature_names=["f"])
    assert table.to_dict("list")["area_px"] == [16]
    assert table["mean_f"].tolist() == [7.5]
    assert table["class"].tolist() == [0]


@pytest.mark.parametrize(("area", "pixel", "expected"), [
    (900, 30.0, 1), (900, 10.0, 9), (901, 10.0, 10), (899.9, 10.0, 9), (0.5, 1.0, 1),
    (900, 0.1, 90000),
])
def test_pixels_for_area(area, pixel, expected):
    n = pixels_for_area(area, Affine(pixel, 0, 0, 0, -pixel, 0))
    assert n == expected
    assert n * pixel * pixel >= area and (n == 1 or (n - 1) * pixel * pixel < area)


def test_errors():
    with pytest.raises(ValueError, match="area must be > 0"):
        pixels_for_area(0, Affine.identity())
    lab, _ = as_arrays(np.zeros((3, 3), np.uint8), None, 2)
    tasks = segment_tasks(lab)
    index = resolve_segments(tasks, *dask.compute(tasks.pieces, tasks.joins))
    with pytest.raises(ValueError, match="no adjacency"):
        merge_small_segments(index, 4)
    tasks = segment_tasks(lab, min_pixels=3)
    index = resolve_segments(tasks, *dask.compute(tasks.pieces, tasks.joins))
    with pytest.raises(ValueError, match="collected for min_pixels=3"):
        merge_small_segments(index, 4)
    assert merge_small_segments(index, 2).n_segments == 1
