"""Whole-image references for the segment tests, written independently of the library.

2-D class maps ``(y, x)`` and volumes ``(z, y, x)`` (connectivity 6, 18 or 26).

Segments come from ``scipy.ndimage.label`` class by class; the merge is a plain Python
transcription of the rule (dicts of neighbours, a heap), run on the whole raster.
"""

from __future__ import annotations

import heapq

import dask
import dask.array as da
import numpy as np
import scipy.ndimage as ndi
import xarray as xr
from hypothesis import strategies as st

from pipeline.postprocess import (
    merge_small_segments,
    relabel_segments,
    resolve_segments,
    segment_tasks,
)

NODATA = 255
UNIT = 2**24


def canonical(ids: np.ndarray) -> np.ndarray:
    """Renumber a labelling 1..n by first pixel in raster order (0 stays 0)."""
    flat = ids.ravel()
    values, first = np.unique(flat, return_index=True)
    keep = values != 0
    values, first = values[keep], first[keep]
    lut = np.zeros(int(flat.max(initial=0)) + 1, dtype=np.int64)
    lut[values[np.argsort(first)]] = np.arange(1, values.size + 1)
    return lut[ids]


#: 3-D connectivity -> rank of scipy.ndimage.generate_binary_structure(3, rank)
RANKS_3D = {6: 1, 18: 2, 26: 3}


def oracle_segments(classes: np.ndarray, connectivity: int, nodata: int = NODATA) -> np.ndarray:
    """scipy.ndimage.label class by class, renumbered canonically (2-D or 3-D)."""
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    if classes.ndim == 3:
        structure = ndi.generate_binary_structure(3, RANKS_3D[connectivity])
    out = np.zeros(classes.shape, dtype=np.int64)
    n = 0
    for c in np.unique(classes):
        if c == nodata:
            continue
        lab, k = ndi.label(classes == c, structure=structure)
        out[lab > 0] = lab[lab > 0] + n
        n += k
    return canonical(out)


def neighbour_pairs(seg: np.ndarray, connectivity: int) -> dict[tuple[int, int], int]:
    """{(a, b): shared border} for touching segments a < b (corner contacts: 0).

    Volumes: the border is the number of face-adjacent voxel pairs (edge and corner
    contacts: 0).
    """
    if seg.ndim == 3:
        return _neighbour_pairs_3d(seg, connectivity)
    views = [(seg[:, :-1], seg[:, 1:], 1), (seg[:-1, :], seg[1:, :], 1)]
    if connectivity == 8:
        views += [(seg[:-1, :-1], seg[1:, 1:], 0), (seg[:-1, 1:], seg[1:, :-1], 0)]
    out: dict[tuple[int, int], int] = {}
    for p, q, length in views:
        m = (p != q) & (p > 0) & (q > 0)
        for a, b in zip(p[m].tolist(), q[m].tolist(), strict=True):
            key = (min(a, b), max(a, b))
            out[key] = out.get(key, 0) + length
    return out


def _neighbour_pairs_3d(seg: np.ndarray, connectivity: int) -> dict[tuple[int, int], int]:
    rank = RANKS_3D[connectivity]
    out: dict[tuple[int, int], int] = {}
    for d in np.ndindex(3, 3, 3):
        d = tuple(x - 1 for x in d)
        if d <= (0, 0, 0) or sum(map(abs, d)) > rank:
            continue  # one of each pair of opposite offsets
        src = tuple(slice(max(0, -x), s - max(0, x)) for x, s in zip(d, seg.shape, strict=True))
        dst = tuple(slice(max(0, x), s - max(0, -x)) for x, s in zip(d, seg.shape, strict=True))
        p, q = seg[src], seg[dst]
        m = (p != q) & (p > 0) & (q > 0)
        length = 1 if sum(map(abs, d)) == 1 else 0
        for a, b in zip(p[m].tolist(), q[m].tolist(), strict=True):
            key = (min(a, b), max(a, b))
            out[key] = out.get(key, 0) + length
    return out


def quantised(features: np.ndarray) -> np.ndarray:
    """Per-pixel fixed-point values, as the library sums them (offset 0, scale 1)."""
    v = np.clip(features.astype(np.float64), -(2.0**29), 2.0**29)
    return np.rint(v * 2.0**24).astype(np.int64)


def oracle_merge(seg: np.ndarray, classes: np.ndarray, features: np.ndarray,
                 connectivity: int, min_pixels: int) -> tuple[np.ndarray, dict[int, int]]:
    """Merge small segments by the written rule; return (raster, {id: class})."""
    n = int(seg.max(initial=0))
    q = quantised(features)
    flat = seg.ravel()
    count = {i: 0 for i in range(1, n + 1)}
    sums = {i: [0] * features.shape[0] for i in range(1, n + 1)}
    klass = {}
    for idx in range(flat.size):
        i = int(flat[idx])
        if i == 0:
            continue
        if count[i] == 0:
            klass[i] = int(classes.ravel()[idx])
        count[i] += 1
        for f in range(features.shape[0]):
            sums[i][f] += int(q[f].ravel()[idx])
    adj: dict[int, dict[int, int]] = {i: {} for i in range(1, n + 1)}
    for (a, b), length in neighbour_pairs(seg, connectivity).items():
        adj[a][b] = length
        adj[b][a] = length
    parent = {i: i for i in range(1, n + 1)}
    heap = [(count[i], i) for i in range(1, n + 1) if count[i] < min_pixels]
    heapq.heapify(heap)

    def mean(g: int) -> list[float]:
        return [float(s) / count[g] for s in sums[g]]

    def dist(g: int, h: int) -> float:
        d = 0.0
        for x, y in zip(mean(g), mean(h), strict=True):
            d += (x - y) * (x - y)
        return d

    while heap:
        c, g = heapq.heappop(heap)
        if parent[g] != g or count[g] != c or not adj[g]:
            continue
        best = min(adj[g], key=lambda h: (dist(g, h), -adj[g][h], h))
        parent[g] = best
        count[best] += count[g]
        sums[best] = [a + b for a, b in zip(sums[best], sums[g], strict=True)]
        for u, length in adj.pop(g).items():
            del adj[u][g]
            if u != best:
                adj[best][u] = adj[best].get(u, 0) + length
                adj[u][best] = adj[best][u]
        if count[best] < min_pixels:
            heapq.heappush(heap, (count[best], best))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    lut = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        lut[i] = root(i)
    merged = lut[seg]
    out = canonical(merged)
    classes_out = {int(out[merged == r].flat[0]): klass[r] for r in np.unique(merged) if r}
    return out, classes_out


# ---------------------------------------------------------------------------------
# Running the library on one chunking
# ---------------------------------------------------------------------------------


def as_arrays(classes: np.ndarray, features: np.ndarray | None, chunks) -> tuple:
    dims = ("z", "y", "x")[-classes.ndim:]
    lab = xr.DataArray(da.from_array(classes, chunks=chunks), dims=dims)
    lab = lab.rio.write_nodata(NODATA, encoded=False)
    feats = None
    if features is not None:
        feats = xr.DataArray(da.from_array(features, chunks=((features.shape[0],),) + tuple(
            lab.data.chunks)), dims=("feature",) + dims)
    return lab, feats


def run_segments(classes: np.ndarray, features: np.ndarray | None, chunks, connectivity: int,
                 min_pixels: int | None = None):
    """Library segments (merged when min_pixels): (raster, SegmentIndex)."""
    lab, feats = as_arrays(classes, features, chunks)
    tasks = segment_tasks(lab, feats, connectivity=connectivity, min_pixels=min_pixels)
    pieces, joins = dask.compute(tasks.pieces, tasks.joins, scheduler="synchronous")
    index = resolve_segments(tasks, pieces, joins)
    if min_pixels is not None:
        index = merge_small_segments(index, min_pixels)
    seg = relabel_segments(lab, index)
    return seg.data.compute(scheduler="synchronous"), index


# ---------------------------------------------------------------------------------
# Hypothesis strategies
# ---------------------------------------------------------------------------------


@st.composite
def partitions(draw, n: int, max_part: int = 6) -> tuple[int, ...]:
    """A random chunking of ``n`` pixels: parts of 1..max_part pixels, any last part."""
    parts = []
    left = n
    while left > 0:
        p = draw(st.integers(1, min(max_part, left)))
        parts.append(p)
        left -= p
    return tuple(parts)


@st.composite
def class_maps(draw, max_side: int = 20, max_classes: int = 3) -> np.ndarray:
    """Class maps with blobs, thin lines, single pixels and nodata (255)."""
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    k = draw(st.integers(1, max_classes))
    seed = draw(st.integers(0, 2**32 - 1))
    block = draw(st.sampled_from([1, 2, 3]))
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, k, (-(-h // block), -(-w // block)))
    classes = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:h, :w]
    noise = rng.random((h, w)) < draw(st.sampled_from([0.0, 0.1, 0.3]))
    classes = np.where(noise, rng.integers(0, k, (h, w)), classes)
    nodata = rng.random((h, w)) < draw(st.sampled_from([0.0, 0.05, 0.2]))
    return np.where(nodata, NODATA, classes).astype(np.uint8)


def features_for(classes: np.ndarray, seed: int, n_features: int = 2) -> np.ndarray:
    """Small-integer features (many exact ties) correlated with the classes."""
    rng = np.random.default_rng(seed)
    base = np.where(classes == NODATA, 0, classes).astype(np.float32)
    noise = rng.integers(0, 3, (n_features,) + classes.shape).astype(np.float32)
    return (base[None] * 2 + noise).astype(np.float32)
