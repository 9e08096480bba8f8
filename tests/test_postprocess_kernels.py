"""The rewritten post-processing kernels against the straightforward versions they
replaced (kept here as pure-Python references): same output, bit for bit (contacts:
the same pairs and summed lengths, which is all their consumer keeps)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.postprocess._chunk_tasks import _combine_pairs
from pipeline.postprocess._contacts import _contact_kernel
from pipeline.postprocess._kernels import (
    _CLIP,
    _UNIT,
    _piece_kernel,
    _run_edges,
    label_chunk,
    label_runs,
    paint_runs,
)
from pipeline.postprocess._majority import (
    _majority_boxcount,
    _majority_direct,
    _majority_sliding,
    majority_block,
)

# ---------------------------------------------------------------------------------
# References: the per-pixel kernels before the run-based / vectorised rewrite
# ---------------------------------------------------------------------------------


def _find(parent, a):
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:
        parent[a], a = root, parent[a]
    return root


def _label_reference(cls, nodata, conn8):
    """Pixel-based two-pass union-find, final labels numbered by first pixel."""
    h, w = cls.shape
    out = np.zeros((h, w), dtype=np.int32)
    parent = list(range(h * w + 1))
    n = 0
    for i in range(h):
        for j in range(w):
            c = cls[i, j]
            if c == nodata:
                continue
            lab = 0
            for di, dj in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
                if not conn8 and di != 0 and dj != 0:
                    continue
                ii, jj = i + di, j + dj
                if ii < 0 or jj < 0 or jj >= w or cls[ii, jj] != c:
                    continue
                other = _find(parent, out[ii, jj])
                if lab == 0:
                    lab = other
                elif other != lab:
                    if other < lab:
                        parent[lab] = other
                        lab = other
                    else:
                        parent[other] = lab
            if lab == 0:
                n += 1
                lab = n
            out[i, j] = lab
    final = np.zeros(n + 1, dtype=np.int32)
    count = 0
    for i in range(h):
        for j in range(w):
            if out[i, j]:
                root = _find(parent, out[i, j])
                if final[root] == 0:
                    count += 1
                    final[root] = count
                out[i, j] = final[root]
    return out, count


def _piece_reference(lab, n, cls, feats, offset, scale, y0, x0, width):
    """Per-pixel statistics, as :func:`_piece_kernel` computed them before."""
    h, w = lab.shape
    nf = feats.shape[0]
    klass = np.zeros(n, dtype=np.int32)
    first = np.zeros(n, dtype=np.int64)
    count = np.zeros(n, dtype=np.int32)
    rmin = np.zeros(n, dtype=np.int32)
    rmax = np.zeros(n, dtype=np.int32)
    cmin = np.full(n, np.iinfo(np.int32).max, dtype=np.int32)
    cmax = np.zeros(n, dtype=np.int32)
    hi = np.zeros((n, nf), dtype=np.int64)
    lo = np.zeros((n, nf), dtype=np.int64)
    for i in range(h):
        for j in range(w):
            k = lab[i, j] - 1
            if k < 0:
                continue
            r, c = y0 + i, x0 + j
            if count[k] == 0:
                klass[k] = cls[i, j]
                first[k] = r * width + c
                rmin[k] = r
            count[k] += 1
            rmax[k] = r
            cmin[k] = min(cmin[k], c)
            cmax[k] = max(cmax[k], c)
            for f in range(nf):
                with np.errstate(all="ignore"):
                    v = (np.float64(feats[f, i, j]) - offset[f]) / scale[f]
                if not np.isfinite(v):
                    v = 0.0
                v = min(max(v, -_CLIP), _CLIP)
                q = np.int64(np.rint(v * _UNIT))
                hi[k, f] += q >> 32
                lo[k, f] += q & 0xFFFFFFFF
    hi += lo >> 32
    lo &= 0xFFFFFFFF
    return klass, first, count, rmin, rmax, cmin, cmax, hi, lo


def _contact_reference(lab, count, conn8, min_pixels):
    """Per-pixel contacts: per pixel right, down, down-right, down-left."""
    h, w = lab.shape
    lo, hi, length = [], [], []
    offs = ((0, 1, 1), (1, 0, 1), (1, 1, 0), (1, -1, 0))
    for i in range(h):
        for j in range(w):
            p = lab[i, j]
            if p == 0:
                continue
            for di, dj, side in offs[:4 if conn8 else 2]:
                ii, jj = i + di, j + dj
                if ii >= h or jj < 0 or jj >= w:
                    continue
                q = lab[ii, jj]
                if q == 0 or q == p:
                    continue
                if count[p - 1] >= min_pixels and count[q - 1] >= min_pixels:
                    continue
                lo.append(min(p, q))
                hi.append(max(p, q))
                length.append(side)
    return (np.array(lo, dtype=np.int32), np.array(hi, dtype=np.int32),
            np.array(length, dtype=np.int8))


# ---------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------


@st.composite
def _class_maps(draw, dtype=np.uint8, max_side=14):
    """Small class maps with blobs and noise, and a nodata value (None: every pixel
    valid) that may lie below, among or above the classes."""
    n_classes = draw(st.integers(1, 6))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=max_side))
    arr = draw(hnp.arrays(dtype, shape, elements=st.integers(0, n_classes - 1)))
    nodata = draw(st.sampled_from([None, 0, n_classes - 1, n_classes,
                                   int(np.iinfo(dtype).max)]))
    if nodata is not None:
        holes = draw(hnp.arrays(np.bool_, shape))
        arr[holes] = nodata
    return arr, nodata


def _same(got, want):
    for g, r in zip(got, want, strict=True):
        assert g.dtype == r.dtype
        np.testing.assert_array_equal(g, r)


# ---------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=_class_maps(), radius=st.integers(1, 4), wide=st.booleans())
def test_boxcount_majority_equals_the_sliding_histogram(data, radius, wide):
    arr, nodata = data
    if nodata is None:
        nodata = 255
    if wide:  # the same classes in uint16, with a large class and nodata ID
        arr = arr.astype(np.uint16)
        arr[arr == nodata] = 65535
        nodata = 65535
    nd = arr.dtype.type(nodata)
    valid = arr[arr != nd]
    n_bins = int(valid.max()) + 1 if valid.size else 0
    counts = np.zeros(int(np.iinfo(arr.dtype).max) + 1, dtype=np.int32)
    want = np.empty_like(arr)
    _majority_sliding(arr, radius, nd, n_bins, counts, want)
    for ctype in (np.int16, np.int32):
        col = np.empty((n_bins + 1, arr.shape[1] + 2 * radius), dtype=ctype)
        got = np.full_like(arr, 7)
        _majority_boxcount(arr, radius, nd, n_bins, col, got)
        np.testing.assert_array_equal(got, want)
    direct = np.empty_like(arr)
    _majority_direct(arr, radius, nd, np.zeros_like(counts), direct)  # wants zeros
    np.testing.assert_array_equal(direct, want)
    np.testing.assert_array_equal(majority_block(arr, radius, nodata), want)


@settings(max_examples=200, deadline=None)
@given(data=_class_maps(), conn8=st.booleans())
def test_run_labelling_equals_pixel_union_find(data, conn8):
    arr, nodata = data
    got, n = label_chunk(arr, nodata, 8 if conn8 else 4)
    want, n_want = _label_reference(arr, -1 if nodata is None else nodata, conn8)
    assert n == n_want
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_run_labelling_of_boolean_and_checkerboard_maps():
    board = (np.indices((9, 11)).sum(0) % 2).astype(bool)
    for conn, n_want in ((4, 99), (8, 2)):
        lab, n = label_chunk(board, None, conn)
        assert n == n_want
        np.testing.assert_array_equal(lab, _label_reference(board, -1, conn == 8)[0])
    spiral = np.zeros((9, 9), np.uint8)  # one U-shaped segment joined late: root merge
    spiral[1:8, 1] = spiral[7, 1:8] = spiral[1:8, 7] = 1
    for conn in (4, 8):
        lab, n = label_chunk(spiral, None, conn)
        ref, n_ref = _label_reference(spiral, -1, conn == 8)
        assert n == n_ref
        np.testing.assert_array_equal(lab, ref)


def test_runs_paint_any_table_and_give_the_edge_strips():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 3, (13, 17)).astype(np.uint8)
    arr[4] = 9  # a row of nodata
    arr[:, 0] = 9
    runs = label_runs(arr, 9, 8)
    lab, n = label_chunk(arr, 9, 8)
    assert runs.n == n and runs.row_ptr[4] == runs.row_ptr[5]
    lut = np.concatenate([[0], rng.permutation(n) + 1000]).astype(np.uint32)
    out = np.full(arr.shape, 7, dtype=np.uint32)
    paint_runs(runs.starts, runs.ends, runs.labels, runs.row_ptr, lut, out)
    np.testing.assert_array_equal(out, lut[lab])
    edges = _run_edges(runs.starts, runs.ends, runs.labels, runs.row_ptr, arr.shape[1])
    for got, want in zip(edges, (lab[0], lab[-1], lab[:, 0], lab[:, -1]), strict=True):
        np.testing.assert_array_equal(got, want)
    assert _run_edges(*label_runs(arr[:0], 9, 8)[1:], 17)[0].tolist() == [0] * 17


def _pieces(arr, nodata, conn8, *rest, integer_sums=False):
    runs = label_runs(arr, nodata, 8 if conn8 else 4)
    return _piece_kernel(runs.starts, runs.ends, runs.labels, runs.row_ptr, runs.n, *rest,
                         integer_sums)


@settings(max_examples=150, deadline=None)
@given(data=_class_maps(), conn8=st.booleans(), nf=st.integers(0, 3),
       y0=st.integers(0, 50), x0=st.integers(0, 50), seed=st.integers(0, 2**32 - 1))
def test_run_piece_statistics_equal_per_pixel_sums(data, conn8, nf, y0, x0, seed):
    arr, nodata = data
    lab, n = label_chunk(arr, nodata, 8 if conn8 else 4)
    rng = np.random.default_rng(seed)
    feats = (rng.normal(size=(nf, *arr.shape)) * rng.choice([1e-3, 1.0, 1e12], nf)[:, None, None]
             ).astype(np.float32)
    if feats.size:  # non-finite values count as 0, huge ones are clipped
        feats.flat[rng.integers(0, feats.size, 3)] = [np.nan, np.inf, -np.inf]
    offset = rng.normal(size=nf)
    scale = rng.uniform(0.1, 3.0, size=nf)
    width = x0 + arr.shape[1] + 7
    cls = np.ascontiguousarray(arr)
    _same(_pieces(arr, nodata, conn8, cls, feats, np.arange(nf), offset, scale, y0, x0, width),
          _piece_reference(lab, n, cls, feats, offset, scale, y0, x0, width))


@settings(max_examples=100, deadline=None)
@given(data=_class_maps(), conn8=st.booleans(), nf=st.integers(0, 3),
       dtype=st.sampled_from(["uint8", "int8", "uint16", "int16"]),
       seed=st.integers(0, 2**32 - 1))
def test_integer_piece_sums_are_the_sums_of_the_raw_values(data, conn8, nf, dtype, seed):
    arr, nodata = data
    lab, n = label_chunk(arr, nodata, 8 if conn8 else 4)
    info = np.iinfo(dtype)
    raw = np.random.default_rng(seed).integers(info.min, info.max, (nf + 1, *arr.shape),
                                               endpoint=True).astype(dtype)
    bands = np.arange(nf)[::-1].copy()  # any band order
    cls = np.ascontiguousarray(arr)
    got = _pieces(arr, nodata, conn8, cls, raw, bands, np.zeros(nf), np.ones(nf), 3, 4, 99,
                  integer_sums=True)
    ref = _piece_reference(lab, n, cls, raw[bands].astype(np.float32), np.zeros(nf),
                           np.ones(nf), 3, 4, 99)
    _same(got[:7], ref[:7])  # class, first pixel, count, bounding box
    want = np.zeros((n, nf), dtype=np.int64)
    for f, b in enumerate(bands):
        np.add.at(want[:, f], lab[lab > 0] - 1, raw[b][lab > 0].astype(np.int64))
    hi, lo = got[7:]
    assert ((lo >= 0) & (lo < 2**32)).all()
    np.testing.assert_array_equal(hi * 2**32 + lo, want)


def _contacts(arr, nodata, conn8, min_pixels):
    """Run contacts and per-pixel contacts, each combined per pair as segments does."""
    lab, n = label_chunk(arr, nodata, 8 if conn8 else 4)
    runs = label_runs(arr, nodata, 8 if conn8 else 4)
    count = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int32)
    got = _contact_kernel(runs.starts, runs.ends, runs.labels, runs.row_ptr, count, conn8,
                          min_pixels)
    want = _contact_reference(lab, count, conn8, min_pixels)
    if want[0].size == 0:
        assert got[0].size == 0
        return got, want
    return _combine_pairs(*got, n), _combine_pairs(*want, n)


@settings(max_examples=150, deadline=None)
@given(data=_class_maps(), conn8=st.booleans(), min_pixels=st.integers(1, 12))
def test_run_contacts_equal_the_per_pixel_contacts(data, conn8, min_pixels):
    arr, nodata = data
    got, want = _contacts(arr, nodata, conn8, min_pixels)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, r)


def test_contacts_past_the_first_capacity_are_all_kept():
    # a 1-pixel checkerboard of 4-connected pieces: one run per pixel and up to two
    # contacts per run, more than the first guess (one per run) holds: a retry
    board = (np.indices((64, 64)).sum(0) % 2).astype(np.uint8)
    board[::5] = 2
    runs = label_runs(board, None, 4)
    raw = _contact_kernel(runs.starts, runs.ends, runs.labels, runs.row_ptr,
                          np.ones(runs.n, np.int32), False, 10**6)
    assert raw[0].size > runs.starts.size
    got, want = _contacts(board, None, False, 10**6)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, r)
