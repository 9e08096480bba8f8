"""Segments of volumes with memory bounded by chunks give exactly the in-memory segments.

The bounded resolver on volumes ``(z, y, x)``: chunks with six faces, pieces joined
across faces, edges and corners, segments numbered by their first voxel per line (one
row of one slice) and chunk column, and their z extents and coordinate sums carried
through the minimum-size merge; against the in-memory resolver on the same volumes,
for any chunking, connectivity and slice size.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr
from _bounded_steps import bounded_leaves, resolve_bounded, resolve_in_memory, tasks_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.ndimage import zoom

from pipeline.postprocess import _bounded as bounded
from pipeline.postprocess import (
    merge_small_segments,
    relabel_segments,
    resolve_segments,
    segment_table,
)

VOLUME = ("zmin", "zmax", "coord_sum")
FIELDS = ("klass", "first", "count", "rmin", "rmax", "cmin", "cmax", "hi", "lo", *VOLUME)


def in_memory(classes, feats, chunks, min_px, conn, nodata):
    labels, tasks = tasks_of(classes, feats, chunks, min_px, conn, nodata)
    index, found = resolve_in_memory(tasks, min_px)
    return relabel_segments(labels, index).values, index.stats, found


def paged(classes, feats, chunks, min_px, conn, nodata, work: Path):
    """The bounded resolver: the segment raster, the statistics and the table as a run
    writes it (a slice of IDs at a time), and the segments found before merging."""
    labels, tasks = tasks_of(classes, feats, chunks, min_px, conn, nodata)
    parts: list = []
    tables: list[pd.DataFrame] = []

    def write(stats, first_id, n_segments, rows):
        parts.append(stats)
        tables.append(segment_table(stats, feature_names=["a"], n_segments=n_segments,
                                    ids=np.arange(first_id, first_id + rows)))

    bt, _, index = resolve_bounded(tasks, classes.shape, work, min_px, write)
    table = pd.concat(tables, ignore_index=True) if tables else None
    return (relabel_segments(labels, index).values, bounded.concat_stats(bt, parts),
            index.n_found, table)


@st.composite
def class_volumes(draw):
    d, h, w = (draw(st.integers(2, 12)) for _ in range(3))
    k = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if draw(st.booleans()):  # blobs: segments that span chunks
        classes = zoom(rng.random((d // 3 + 2, h // 3 + 2, w // 3 + 2)), 3,
                       order=1)[:d, :h, :w] * k
    else:  # noise: many small segments
        classes = rng.integers(0, k, (d, h, w))
    classes = classes.astype(np.uint8)
    nodata = None
    if draw(st.booleans()):
        nodata = 9
        classes[rng.random((d, h, w)) < 0.15] = nodata
    feats = rng.random((1, d, h, w)).astype(np.float32)
    chunks = tuple(draw(st.integers(1, n)) for n in (d, h, w))
    return classes, feats, chunks, nodata


def _assert_same(got, want) -> None:
    np.testing.assert_array_equal(got[0], want[0])
    assert got[0].dtype == want[0].dtype
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(got[1], f), getattr(want[1], f), f)
    assert got[2] == want[2]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=class_volumes(), min_px=st.sampled_from([None, 2, 5, 16]),
       conn=st.sampled_from([6, 18, 26]), step=st.integers(1, 64))
def test_bounded_volume_segments_are_the_in_memory_segments(tmp_path_factory, monkeypatch,
                                                            data, min_px, conn, step):
    classes, feats, chunks, nodata = data
    monkeypatch.setattr(bounded, "STEP", step)  # pages: a few IDs at a time
    want = in_memory(classes, feats, chunks, min_px, conn, nodata)
    got = paged(classes, feats, chunks, min_px, conn, nodata, tmp_path_factory.mktemp("v"))
    _assert_same(got, want)
    if got[3] is not None:  # the slices' tables, joined: the whole table
        pd.testing.assert_frame_equal(got[3], segment_table(want[1], feature_names=["a"]))


def test_one_chunk_diagonals_and_all_nodata(tmp_path):
    """One chunk (no border), a line crossing chunk corners only (joined across
    corners alone with 26-connectivity), and a volume of nodata only (no segment)."""
    rng = np.random.default_rng(5)
    feats = rng.random((1, 8, 8, 8)).astype(np.float32)
    noise = rng.integers(0, 3, (8, 8, 8)).astype(np.uint8)
    line = np.full((8, 8, 8), 2, np.uint8)
    line[np.arange(8), np.arange(8), np.arange(8)] = 1
    for i, args in enumerate([(noise, feats, (8, 8, 8), 4, 26, None),
                              (line, feats, (2, 2, 2), None, 26, None),
                              (line, feats, (3, 2, 4), 3, 6, None),
                              (np.full((8, 8, 8), 7, np.uint8), feats, (3, 5, 2), 4, 18, 7)]):
        got, want = paged(*args, tmp_path / str(i)), in_memory(*args)
        _assert_same(got, want)
    assert got[2] == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=class_volumes(), min_px=st.sampled_from([None, 3, 9]),
       conn=st.sampled_from([6, 26]), span=st.sampled_from([None, 1, 5]))
def test_bounded_volume_leaves_are_the_in_memory_leaves(tmp_path_factory, data, min_px, conn,
                                                        span):
    """The leaves region merging starts from: the same statistics (z extents and
    coordinate sums too), lookup tables and adjacency as the in-memory resolver's."""
    classes, feats, chunks, nodata = data
    labels, tasks = tasks_of(classes, feats, chunks, 2**62, conn, nodata)
    pieces, joins = dask.compute(tasks.pieces, tasks.joins, scheduler="sync")
    want = resolve_segments(tasks, pieces, joins)
    if min_px is not None:
        want = merge_small_segments(want, min_px, keep_edges=True)
    got, _ = bounded_leaves(tasks, classes.shape, tmp_path_factory.mktemp("leaves"), min_px,
                            span)
    assert got.n_segments == want.n_segments
    bounded.drop_pages(*(getattr(got.stats, f) for f in FIELDS))  # read back from files
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(got.stats, f), getattr(want.stats, f), f)
    for a, b in zip(got.edges, want.edges, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(relabel_segments(labels, got).values,
                                  relabel_segments(labels, want).values)


def test_a_volume_run_bounded_by_chunks_equals_the_in_memory_run(tmp_path, monkeypatch):
    """A whole run on a NIfTI volume (segments, min_size, region merging with its graph
    in files): the bounded resolver's rasters, table and report are those of the
    in-memory resolver (a run whose workers do not see the staging directory)."""
    import nibabel as nib
    from scipy import ndimage as ndi

    from pipeline.config import parse_config
    from pipeline.runner import run
    from pipeline.stages import _write

    rng = np.random.default_rng(11)
    f = ndi.gaussian_filter(rng.normal(size=(20, 36, 40)), (0.7, 1, 1))
    vol = (np.digitize(f, np.quantile(f, [0.3, 0.6])) * 50 + rng.normal(0, 9, f.shape))
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol.astype(np.int16).transpose(2, 1, 0).copy(), np.eye(4)),
             path)
    cfg = {"input": str(path), "formats": ["zarr", "nifti"], "chunks": 16,
           "features": ["bands"], "cluster": {"method": "kmeans", "k": 3, "seed": 0},
           "postprocess": {"segments": {"connectivity": 6}, "min_size": 3,
                           "merge": {"criterion": "ward", "regions": 6, "graph": "files"}}}
    bounded_run = run(parse_config({**cfg, "output": str(tmp_path / "bounded")}))
    seen: list = []
    real = _write.segment_spill
    monkeypatch.setattr(_write, "segment_spill",
                        lambda ctx, staging: seen.append(real(ctx, staging)))  # None
    memory_run = run(parse_config({**cfg, "output": str(tmp_path / "memory")}))
    assert seen and all(s is not None for s in seen)  # the bounded run's directory exists
    for name in ("labels", "segments", "leaves"):
        a = xr.open_zarr(bounded_run.output / f"{name}.zarr")[name].values
        b = xr.open_zarr(memory_run.output / f"{name}.zarr")[name].values
        np.testing.assert_array_equal(a, b, name)
    assert np.unique(a).size > 12  # leaves: many, merged into 6 regions
    assert bounded_run.report["segments"]["segments"] == 6
    pd.testing.assert_frame_equal(pd.read_parquet(bounded_run.output / "segments.parquet"),
                                  pd.read_parquet(memory_run.output / "segments.parquet"))
    for key in ("found", "segments", "min_pixels"):
        assert bounded_run.report["segments"][key] == memory_run.report["segments"][key]
    assert not list(bounded_run.output.glob(".segments-spill*"))
