"""Segments with memory bounded by chunks give exactly the in-memory segments.

The bounded resolver (border pieces joined globally, segments numbered per row and
chunk column, the minimum-size merge on file-backed arrays a slice of IDs at a time)
against the in-memory resolver on the same class maps: the same segment raster, the
same table, the same count before merging, for any chunking and any slice size.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
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


def in_memory(classes, feats, chunks, min_px, conn, nodata):
    labels, tasks = tasks_of(classes, feats, chunks, min_px, conn, nodata)
    index, found = resolve_in_memory(tasks, min_px)
    return (relabel_segments(labels, index).values,
            segment_table(index.stats, feature_names=["a"]), found)


def paged(classes, feats, chunks, min_px, conn, nodata, work: Path):
    labels, tasks = tasks_of(classes, feats, chunks, min_px, conn, nodata)
    parts: list[pd.DataFrame] = []

    def write(stats, first_id, n_segments, rows):
        parts.append(segment_table(stats, feature_names=["a"], n_segments=n_segments,
                                   ids=np.arange(first_id, first_id + rows)))

    bt, _, index = resolve_bounded(tasks, classes.shape, work, min_px, write)
    table = (pd.concat(parts, ignore_index=True) if parts else
             segment_table(bounded.empty_stats(bt), feature_names=["a"]))
    return relabel_segments(labels, index).values, table, index.n_found


@st.composite
def class_maps(draw):
    h, w = draw(st.integers(4, 40)), draw(st.integers(4, 40))
    k = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # blobs: segments that span chunks
        classes = (zoom(rng.random((h // 4 + 2, w // 4 + 2)), 4, order=1)[:h, :w] * k)
    else:  # noise: many small segments
        classes = rng.integers(0, k, (h, w))
    classes = classes.astype(np.uint8)
    nodata = None
    if draw(st.booleans()):
        nodata = 9
        classes[rng.random((h, w)) < 0.15] = nodata
    feats = rng.random((1, h, w)).astype(np.float32)
    chunks = (draw(st.integers(2, h)), draw(st.integers(2, w)))
    return classes, feats, chunks, nodata


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=class_maps(), min_px=st.sampled_from([None, 2, 5, 16]),
       conn=st.sampled_from([4, 8]), step=st.integers(1, 64), face_step=st.integers(1, 8))
def test_bounded_segments_are_the_in_memory_segments(tmp_path_factory, monkeypatch, data,
                                                     min_px, conn, step, face_step):
    classes, feats, chunks, nodata = data
    monkeypatch.setattr(bounded, "STEP", step)  # pages: a few IDs at a time
    monkeypatch.setattr(bounded, "_FACE_STEP", face_step)
    want = in_memory(classes, feats, chunks, min_px, conn, nodata)
    got = paged(classes, feats, chunks, min_px, conn, nodata, tmp_path_factory.mktemp("b"))
    np.testing.assert_array_equal(got[0], want[0])
    assert got[0].dtype == want[0].dtype
    pd.testing.assert_frame_equal(got[1], want[1])
    assert got[2] == want[2]


def test_one_chunk_and_all_nodata(tmp_path):
    """One chunk (no border at all), and a class map of nodata only (no segment)."""
    rng = np.random.default_rng(3)
    classes = rng.integers(0, 3, (17, 23)).astype(np.uint8)
    feats = rng.random((1, 17, 23)).astype(np.float32)
    for args in [(classes, feats, (17, 23), 4, 8, None),
                 (np.full((8, 8), 7, np.uint8), feats[:, :8, :8], (3, 5), 4, 8, 7)]:
        work = tmp_path / str(args[2])
        got, want = paged(*args, work), in_memory(*args)
        np.testing.assert_array_equal(got[0], want[0])
        pd.testing.assert_frame_equal(got[1], want[1])
        assert got[2] == want[2]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_paged_arrays_release_their_pages(tmp_path):
    """Pages written through a Paged array leave the process's memory on release(), and
    the data stays (in the file)."""
    def file_rss() -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                    if x.startswith("RssFile:"))
        return int(line.split()[1]) * 1024

    pages = bounded.Paged(tmp_path)
    a = pages.full("a", (64 << 20,), np.uint8, 7)  # 64 MiB, released slice by slice
    a[:32 << 20] = 5
    touched = file_rss()
    pages.release()
    assert file_rss() < touched - (24 << 20)
    assert a[0] == 5 and a[(32 << 20) - 1] == 5 and a[-1] == 7
    assert (tmp_path / "a.bin").stat().st_size == 64 << 20
    # a window of rows: only its pages go (rows of 8 bytes here)
    b = pages.empty("b", (8 << 20, 1), np.int64)
    b[:] = 3
    touched = file_rss()
    pages.release((0, 4 << 20))
    assert touched - (40 << 20) < file_rss() < touched - (24 << 20)
    assert b[0, 0] == 3 and b[-1, 0] == 3


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_random_paged_arrays_fault_in_little_at_a_time(tmp_path):
    """A store for random access (the merge loop's) maps a few pages per touch, not the
    large folios a file's cache is made of otherwise (up to 2 MiB a touch): touching
    one byte every 4 MiB of an array written before holds at most 256 kB a touch."""
    def file_rss() -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                    if x.startswith("RssFile:"))
        return int(line.split()[1]) * 1024

    pages = bounded.Paged(tmp_path, random=True)
    a = pages.empty("a", (128 << 20,), np.uint8)
    a[:] = 1
    pages.release()
    held = file_rss()
    touched = int(a[::4 << 20].sum())  # 32 touches
    assert touched == 32
    assert file_rss() - held <= 32 * (256 << 10)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_keep_under_drops_pages_only_past_its_budget(tmp_path):
    """A loop's pause drops the pages of a Paged store once the process holds more of
    them than the budget, not before (a random-access loop would fault them in again)."""
    def file_rss() -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                    if x.startswith("RssFile:"))
        return int(line.split()[1]) * 1024

    pages = bounded.Paged(tmp_path)
    pause = pages.keep_under(32 << 20)
    a = pages.empty("a", (64 << 20,), np.uint8)
    a[:16 << 20] = 1
    held = file_rss()
    pause()  # 16 MiB: under the budget, kept
    assert file_rss() > held - (4 << 20)
    a[16 << 20:] = 2
    held = file_rss()
    pause()  # 64 MiB: dropped
    assert file_rss() < held - (48 << 20)
    assert a[0] == 1 and a[-1] == 2  # the data stays in the file
    # another store's arrays (views of them) go with it: drop_pages finds their mapping
    other = bounded.Paged(tmp_path / "other").empty("b", (48 << 20,), np.uint8)
    pause = pages.keep_under(32 << 20, other[8:])
    other[:] = 3
    held = file_rss()
    pause()
    assert file_rss() < held - (40 << 20) and other[-1] == 3


@given(ids=st.lists(st.integers(0, 5000), unique=True, max_size=300),
       span=st.integers(1, 700))
def test_id_windows_cover_every_id_once_within_a_span(ids, span):
    ids = np.array(ids, dtype=np.int64)
    windows = list(bounded._id_windows(ids, span))
    seen = np.concatenate([at for at, _ in windows]) if windows else np.empty(0, np.int64)
    assert sorted(seen.tolist()) == list(range(ids.size))
    for at, (start, stop) in windows:
        assert at.size and ids[at].max() // span == ids[at].min() // span  # one window
        assert np.all(np.diff(ids[at]) > 0)  # ascending
        assert (start, stop) == (ids[at].min(), ids[at].max() + 1)  # the IDs it covers


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=class_maps(), min_px=st.sampled_from([None, 3, 9]), conn=st.sampled_from([4, 8]),
       span=st.sampled_from([None, 1, 5]))
def test_bounded_leaves_are_the_in_memory_leaves(tmp_path_factory, data, min_px, conn, span):
    """The leaves region merging starts from (``leaf_index``): the same statistics,
    lookup tables and adjacency (every contact, lengths added) as the in-memory
    resolver's with ``keep_edges``; with ``span``, the contacts joined into files a
    window of that many leaf IDs at a time (as for a merge with its graph in files)."""
    classes, feats, chunks, nodata = data
    every = 2**62
    labels, tasks = tasks_of(classes, feats, chunks, every, conn, nodata)
    pieces, joins = dask.compute(tasks.pieces, tasks.joins, scheduler="sync")
    want = resolve_segments(tasks, pieces, joins)
    if min_px is not None:
        want = merge_small_segments(want, min_px, keep_edges=True)
    work = tmp_path_factory.mktemp("leaves")
    got, contacts = bounded_leaves(tasks, classes.shape, work, min_px, span)
    assert got.n_segments == want.n_segments
    if contacts is not None:  # the windows' files are gone, the contacts in files
        assert sorted(p.name for p in contacts.iterdir()) == \
            ["contact_a.bin", "contact_b.bin", "contact_len.bin"]
    fields = ("klass", "first", "count", "rmin", "rmax", "cmin", "cmax", "hi", "lo")
    # their pages dropped (as before the merge loop), the values read back from the files
    bounded.drop_pages(*(getattr(got.stats, f) for f in fields))
    for f in fields:
        np.testing.assert_array_equal(getattr(got.stats, f), getattr(want.stats, f), f)
    # the lookup tables stay in the spill files, one load a chunk
    for a, b in zip(dask.compute(*got.luts, scheduler="sync"), want.luts, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got.edges, want.edges, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(relabel_segments(labels, got).values,
                                  relabel_segments(labels, want).values)


def test_release_freed_memory_hands_heap_pages_back():
    """Freed arrays glibc keeps on its heap leave the resident set once released."""
    import psutil

    from pipeline.compute import release_freed_memory

    if not release_freed_memory():
        pytest.skip("no malloc_trim: not glibc")
    proc = psutil.Process()
    np.ones(16 << 17)  # a freed 16 MiB array raises glibc's mmap threshold above 4 MiB
    arrays = [np.ones(1 << 19) for _ in range(48)]  # 4 MiB each, now on the heap
    del arrays[::2]  # interleaved with live ones: free() cannot shrink the heap's top
    before = proc.memory_info().rss
    assert release_freed_memory()
    after = proc.memory_info().rss
    assert before - after > 48 << 20  # most of the 96 MiB freed
