"""Hierarchical region merging over the global segment adjacency graph.

Multiresolution segmentation in the sense of Baatz & Schaepe (2000) and of Ward's
agglomerative clustering, restricted to touching regions, and exact for any chunking.
Everything the costs need is an exact integer summary of the leaves (the segments
after ``min_size``), whatever the chunks:

- pixel counts, feature sums, bounding boxes and the adjacency with its border lengths
  come from the segments stage itself; ``baatz_schape`` also sums the squared
  standardised features there (extra summed features), which give each leaf's
  within-leaf sum of squares, and a leaf's perimeter is the sum of its border lengths
  with other leaves;
- ``boundary`` needs the feature contrast across every border: :func:`contrast_tasks`
  (lazy) sums it per chunk with a one-pixel halo, each pixel face counted by the chunk
  of its first pixel only, in fixed point.

:func:`build_hierarchy` (pure, in memory) then merges the cheapest pair of touching
regions, again and again, until one region per connected part is left; every merge
is recorded (:class:`Hierarchy`). Costs are computed in float64 from those summaries in
a fixed order, so the merges are the same for any chunking and any number of workers.
Ties go to the pair with the lower node ID, then the lower second ID (leaves are
numbered like the segments, by their first pixel; merged regions take the next IDs in
merge order). :func:`cut_hierarchy` gives the regions after the first ``K`` merges
(``regions: N`` or ``threshold: T``), numbered by their first pixel.

scikit-image's RAG merging (``skimage.graph.merge_hierarchical``) works on one
in-memory label image and has neither the Baatz-Schaepe criterion nor deterministic
ties, so the merge loop is our own (an indexed heap of each node's best neighbour).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numba
import numpy as np
import xarray as xr

from . import _rag
from ._chunk_tasks import _sum_by_pair
from ._kernels import _reduce_add, _reduce_empty
from ._kernels3d import _reduce_extra_add, _reduce_extra_empty
from ._rag import BUDGET_STEPS, GIANT_DEGREE, Store, _ranges, merge_loop
from ._resolve import STAT_FIELDS, VOLUME_FIELDS

__all__ = ["CONTRAST_BITS", "Hierarchy", "build_hierarchy", "contrast_files",
           "contrast_tasks", "cut_hierarchy", "leaf_perimeters", "majority_class",
           "reduce_contrast", "region_index", "region_stats", "region_table", "regions_of_leaves"]

log = logging.getLogger(__name__)

#: fixed-point bits of the border contrasts summed per chunk
CONTRAST_BITS = 16
_ONE = float(2**CONTRAST_BITS)


@numba.njit(cache=True, nogil=True)
def _contrast_kernel(ids, feats, axes, offset, scale, ea, eb, ec, fill):  # pragma: no cover
    """Feature contrast across the faces between two leaves, along ``axes``.

    ``ids`` (z, y, x); a face is counted from its first voxel (the lower index) to the
    next one along an axis whose flag in ``axes`` is set. Returns the number of faces;
    with ``fill``, also writes ``(a, b, contrast)`` per face into ``ea``, ``eb``,
    ``ec`` (``a < b``, the contrast in fixed point, ``2**16``). Called once to count
    (borders are a small part of a chunk), then once to fill buffers of that size.
    """
    nz, ny, nx = ids.shape
    ne = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                a = ids[z, y, x]
                if a == 0:
                    continue
                for axis in range(3):
                    if not axes[axis]:
                        continue
                    zz = z + 1 if axis == 0 else z
                    yy = y + 1 if axis == 1 else y
                    xx = x + 1 if axis == 2 else x
                    if zz >= nz or yy >= ny or xx >= nx:
                        continue
                    b = ids[zz, yy, xx]
                    if b == a or b == 0:
                        continue
                    if fill:
                        c = 0.0
                        for f in range(feats.shape[0]):
                            d = ((np.float64(feats[f, z, y, x]) - offset[f]) / scale[f]
                                 - (np.float64(feats[f, zz, yy, xx]) - offset[f]) / scale[f])
                            c += d * d
                        ea[ne] = min(a, b)
                        eb[ne] = max(a, b)
                        ec[ne] = np.int64(np.rint(math.sqrt(c) * 65536.0))
                    ne += 1
    return ne


def _faces(ids: np.ndarray, feats: np.ndarray, axes: tuple[bool, ...], offset: np.ndarray,
           scale: np.ndarray) -> tuple:
    """Return ``(a, b, contrast_sum, faces)`` of the faces of ``ids`` along ``axes``."""
    lead = 3 - ids.ndim
    ids3 = ids.reshape((1,) * lead + ids.shape).astype(np.int64, copy=False)
    f3 = np.ascontiguousarray(feats).reshape((feats.shape[0],) + ids3.shape)
    flags = np.array((False,) * lead + tuple(axes), dtype=np.bool_)
    ids3 = np.ascontiguousarray(ids3)
    none = np.empty(0, dtype=np.int64)
    n = _contrast_kernel(ids3, f3, flags, offset, scale, none, none, none, False)
    ea, eb, ec = (np.empty(n, dtype=np.int64) for _ in range(3))
    _contrast_kernel(ids3, f3, flags, offset, scale, ea, eb, ec, True)
    ea, eb, (ec, en) = _sum_by_pair(ea, eb, ec, np.ones(n, dtype=np.int64))
    return ea, eb, ec, en


def _chunk_contrast(ids: np.ndarray, feats: np.ndarray, offset: np.ndarray,
                    scale: np.ndarray) -> tuple[tuple, list]:
    """Return a chunk's own faces, and its first and last planes along each axis."""
    inner = _faces(ids, feats, (True,) * ids.ndim, offset, scale)
    planes = []
    for ax in range(ids.ndim):
        first = [slice(None)] * ids.ndim
        last = [slice(None)] * ids.ndim
        first[ax] = slice(0, 1)
        last[ax] = slice(ids.shape[ax] - 1, ids.shape[ax])
        planes.append(((ids[tuple(first)].copy(), feats[(slice(None), *first)].copy()),
                       (ids[tuple(last)].copy(), feats[(slice(None), *last)].copy())))
    return inner, planes


def _join_contrast(mine: tuple[tuple, list], after: tuple[tuple, list], axis: int,
                   offset: np.ndarray, scale: np.ndarray) -> tuple:
    """Return the faces between a chunk's last plane and the next chunk's first plane."""
    ids_a, f_a = mine[1][axis][1]
    ids_b, f_b = after[1][axis][0]
    ids = np.concatenate([ids_a, ids_b], axis=axis)
    feats = np.concatenate([f_a, f_b], axis=axis + 1)
    return _faces(ids, feats, tuple(ax == axis for ax in range(ids.ndim)), offset, scale)


def contrast_tasks(leaves: xr.DataArray, features: xr.DataArray, offset: Any,
                   scale: Any) -> list[Any]:
    """Lazy per-chunk sums of the feature contrast across the borders between leaves.

    The contrast of a face is the Euclidean distance of its two pixels' standardised
    features ``(x - offset) / scale``, summed in fixed point (``2**CONTRAST_BITS``).
    Each chunk sums its own faces and hands its first and last planes (rows and
    columns) to small join tasks, which sum the faces between neighbouring chunks: no
    task holds more than one chunk, and no chunk waits in memory for its neighbours.

    Parameters
    ----------
    leaves : DataArray, (y, x) or (z, y, x), integer
        Leaf IDs (0: nodata), Dask-backed.
    features : DataArray, (feature, ...spatial)
        Per-pixel features on the same grid.

    Returns
    -------
    list of Delayed
        ``(a, b, contrast_sum, faces)`` tuples, for :func:`reduce_contrast`.
    """
    ids = leaves.data if isinstance(leaves.data, da.Array) else da.asarray(leaves.data)
    fd = features.data if isinstance(features.data, da.Array) else da.asarray(features.data)
    fd = fd.rechunk((-1,) + ids.chunks)
    id_blocks = ids.to_delayed(optimize_graph=False)
    f_blocks = fd.to_delayed(optimize_graph=False)[0]
    off = np.asarray(offset, np.float64)
    scl = np.asarray(scale, np.float64)
    chunk = dask.delayed(_chunk_contrast, pure=True)
    join = dask.delayed(_join_contrast, pure=True)
    done = {index: chunk(id_blocks[index], f_blocks[index], off, scl)
            for index in np.ndindex(*ids.numblocks)}
    out = []
    for index, task in done.items():
        out.append(task[0])
        for ax in range(ids.ndim):
            nxt = tuple(i + (d == ax) for d, i in enumerate(index))
            if nxt[ax] < ids.numblocks[ax]:
                out.append(join(task, done[nxt], ax, off, scl))
    return out


def _save_contrast(part: tuple, path: str) -> str:
    a, b, c, n = part
    np.savez(path, a=a, b=b, sum=c, faces=n)
    return path


def contrast_files(parts: list[Any], directory: Path) -> list[Any]:
    """Save each of :func:`contrast_tasks`' parts into ``directory``, in its own task.

    Returns Delayed paths, for :func:`._bounded.contrast_windows`: names reach the
    client, not the contrasts of every contact.
    """
    save = dask.delayed(_save_contrast, pure=True)
    return [save(p, str(directory / f"contrast-{i}.npz")) for i, p in enumerate(parts)]


def _edge_contrasts(a: np.ndarray, b: np.ndarray, contrast: tuple[np.ndarray, ...], n: int,
                    store: Store, pause: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
    """Each edge's contrast sum and faces (0: none), into ``store``'s arrays.

    A slice of edges at a time: the contrasts are sorted by ``(a, b)``, so a slice
    looks among the contrasts of its own lower IDs only (the edges, sorted too, keep
    that range short). In memory or in files, the same values.
    """
    ca, cb, csum, cpairs = contrast
    esum = store.empty("esum", (a.size,), np.float64)
    epairs = store.empty("epair", (a.size,), np.float64)
    for lo, hi in _ranges(a.size, _rag.STEP, pause):
        ka = np.asarray(a[lo:hi], dtype=np.int64)
        key = ka * (n + 1) + b[lo:hi]
        s = int(np.searchsorted(ca, ka.min()))
        e = int(np.searchsorted(ca, ka.max(), side="right"))
        if e == s:
            esum[lo:hi] = 0.0
            epairs[lo:hi] = 0.0
            continue
        ckey = np.asarray(ca[s:e], dtype=np.int64) * (n + 1) + cb[s:e]
        pos = np.minimum(np.searchsorted(ckey, key), ckey.size - 1)
        hit = ckey[pos] == key
        esum[lo:hi] = np.where(hit, csum[s:e][pos], 0).astype(np.float64) / _ONE
        epairs[lo:hi] = np.where(hit, cpairs[s:e][pos], 0).astype(np.float64)
    return esum, epairs


def reduce_contrast(parts: list[tuple]) -> tuple[np.ndarray, ...]:
    """Add up the computed :func:`contrast_tasks`: ``(a, b, contrast_sum, faces)``.

    Integers: any order of addition gives the same sums.
    """
    cat = [np.concatenate([p[k] for p in parts]) if parts else np.empty(0, np.int64)
           for k in range(4)]
    a, b, (c, n) = _sum_by_pair(cat[0], cat[1], cat[2], cat[3])
    return a, b, c, n


def leaf_perimeters(edges: tuple[np.ndarray, ...], n_leaves: int,
                    store: Store | None = None,
                    pause: Callable[[], None] | None = None) -> np.ndarray:
    """Each leaf's perimeter: its border length with other leaves (pixel faces).

    The image's edge and nodata do not count: a region they cut is not taken for less
    compact or smooth for it. With ``store`` (:func:`._rag.merge_loop`'s), into an
    array it makes, a slice of the edges at a time (sums of integers: the same values).
    """
    if store is None:
        a, b, length = (np.asarray(x, dtype=np.int64) for x in edges[:3])
        return (np.bincount(a - 1, weights=length, minlength=n_leaves)
                + np.bincount(b - 1, weights=length, minlength=n_leaves))
    per = store.full("per", (n_leaves,), np.float64, 0)
    for lo, hi in _ranges(edges[0].size, _rag.STEP, pause or (lambda: None)):
        length = np.asarray(edges[2][lo:hi], dtype=np.float64)
        for ids in (edges[0], edges[1]):
            x = np.asarray(ids[lo:hi], dtype=np.int64) - 1
            first = int(x.min())  # the edges are local: a window of IDs, not all of them
            per[first:first + int(x.max()) - first + 1] += np.bincount(x - first,
                                                                        weights=length)
    return per


@dataclass
class Hierarchy:
    """Every merge, in order: node ``parent`` is ``child_a`` joined with ``child_b``.

    Leaves are nodes ``1..n_leaves`` (the segment IDs); merge ``i`` (0-based) makes
    node ``n_leaves + 1 + i``. ``cost`` is the merge's fusion cost, ``size`` the
    parent's pixel (voxel) count.
    """

    n_leaves: int
    child_a: np.ndarray
    child_b: np.ndarray
    cost: np.ndarray
    size: np.ndarray

    @property
    def parent(self) -> np.ndarray:
        return np.arange(self.child_a.size, dtype=np.int64) + self.n_leaves + 1

    def to_frame(self, start: int = 0, stop: int | None = None) -> Any:
        """Return merges ``start:stop`` as a data frame (hierarchy.parquet's columns)."""
        import pandas as pd

        stop = self.child_a.size if stop is None else stop
        return pd.DataFrame({
            "parent": np.arange(start, stop, dtype=np.int64) + self.n_leaves + 1,
            "child_a": self.child_a[start:stop], "child_b": self.child_b[start:stop],
            "cost": self.cost[start:stop], "size": self.size[start:stop]})

    @classmethod
    def from_frame(cls, frame: Any, n_leaves: int) -> Hierarchy:
        return cls(n_leaves, frame["child_a"].to_numpy(np.int64),
                   frame["child_b"].to_numpy(np.int64), frame["cost"].to_numpy(np.float64),
                   frame["size"].to_numpy(np.int64))

    def n_merges(self, regions: int | None = None, threshold: float | None = None) -> int:
        """How many merges come before the stop (the first of the two reached).

        ``regions``: merge until that many regions are left (fewer merges where the
        graph has more parts); ``threshold``: stop before the first merge costing more
        than ``threshold ** 2``.
        """
        k = self.child_a.size
        if regions is not None:
            k = min(k, max(0, self.n_leaves - int(regions)))
        if threshold is not None:
            over = np.flatnonzero(self.cost[:k] > float(threshold) ** 2)
            if over.size:
                k = int(over[0])
        return k


def build_hierarchy(count: np.ndarray, means: np.ndarray,
                    edges: tuple[np.ndarray, ...] | list[np.ndarray], *,
                    criterion: str = "ward", shape: float = 0.1, compactness: float = 0.5,
                    boundary: float = 0.0, ssq: np.ndarray | None = None,
                    bbox: tuple[np.ndarray, np.ndarray] | None = None,
                    contrast: tuple[np.ndarray, ...] | None = None,
                    giant_degree: int | None = None,
                    before_loop: Callable[[], None] | None = None,
                    consume: bool = False, store: Store | None = None,
                    pause: Callable[[], None] | None = None) -> Hierarchy:
    """Merge touching regions, cheapest first, down to one region per connected part.

    Parameters
    ----------
    count, means : ndarray, (n,), (n, feature)
        Pixel counts and standardised mean features of the leaves (IDs ``1..n``).
    edges : (a, b, length)
        Touching leaves ``a < b`` (1-based) and their border length in 4-adjacent
        (6-adjacent) pixel pairs; 0 for a contact by a corner only (8-, 18- and
        26-connected segments), which still lets them merge. A list is emptied once
        read: where the caller holds no other reference, its arrays are freed before
        the loop (16 bytes a contact: 0.6 GB at 16384^2 noise).
    criterion : {"ward", "baatz_schape"}
        ``ward``: ``na nb / (na + nb) |mean_a - mean_b|^2``, the increase of the
        within-region sum of squares. ``baatz_schape``: ``(1 - shape) h_colour +
        shape (compactness h_compact + (1 - compactness) h_smooth)``, where
        ``h_colour = sum_f (n sd_f)_merged - (n sd_f)_a - (n sd_f)_b``, ``h_compact``
        the same change of ``perimeter * sqrt(n)`` (``surface * n ** (1/3)`` in a volume) and
        ``h_smooth`` of ``n * perimeter / bbox perimeter`` (the box's surface in a
        volume); perimeters are border lengths with other regions
        (:func:`leaf_perimeters`). Needs ``ssq`` and ``bbox``.
    ssq : ndarray, (n, feature), optional
        Within-leaf sums of squared deviations of the standardised features.
    boundary : float
        Weight of the mean feature contrast ``g`` across the shared border: a positive
        cost is multiplied by ``1 + boundary * g``, a negative one divided by it.
        Needs ``contrast`` (:func:`reduce_contrast`).
    giant_degree : int, optional
        ``ward`` only: the degree from which a node keeps its edges in a heap of lower
        bounds (:mod:`._rag`); default :data:`._rag.GIANT_DEGREE`. It changes the time
        taken, never the merges.
    before_loop : callable, optional
        Called once the loop's own copies of the inputs are made (the run drops the
        pages of the leaves' file-backed statistics that the copies read).
    consume : bool
        ``ssq`` and ``bbox`` are the loop's to update in place (where their types are
        already float64 and int64), not copied: for a caller that made them for this
        call. The run does (40 bytes a leaf with ``baatz_schape``). ``means`` are
        copied, beside the counts, a row a leaf.
    store, pause : optional
        Where the loop's arrays live, and a call between steps (:func:`._rag.merge_loop`):
        with ``store``, the inputs are copied into its arrays too, a slice at a time.
        The run gives file-backed arrays whose pages ``pause`` drops, so that the
        graph, proportional to the leaves, is not held in memory.
    """
    n = int(count.size)
    nf = means.shape[1] if means.ndim == 2 else 0
    pause = pause or (lambda: None)

    def own(x: np.ndarray, name: str, dtype: Any) -> np.ndarray:
        """Return the loop's copy of ``x`` (it updates the nodes' statistics).

        In memory, ``x`` itself where it is the loop's already (``consume``).
        """
        if store is None:
            return (np.asarray if consume else np.array)(x, dtype=dtype)
        out = store.empty(name, x.shape, dtype)
        for lo, hi in _ranges(x.shape[0], _rag.STEP, pause):
            out[lo:hi] = x[lo:hi]
        return out

    def table(name: str, shape: tuple[int, int], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype) if store is None else store.empty(name, shape, dtype)

    # a leaf's count and means side by side, a row a leaf (as the loop's own tables:
    # looking at a node touches a page or two)
    leaf = table("leaves", (n, 1 + nf), np.float64)
    for lo, hi in _ranges(n, _rag.STEP, pause):
        leaf[lo:hi, 0] = count[lo:hi]
        leaf[lo:hi, 1:] = means.reshape(n, nf)[lo:hi]
    cnt, mu = leaf[:, 0], leaf[:, 1:]
    if criterion not in ("ward", "baatz_schape"):
        raise ValueError(f"criterion must be ward or baatz_schape, got {criterion!r}")
    baatz = criterion == "baatz_schape"
    if baatz and (ssq is None or bbox is None):
        raise ValueError("baatz_schape needs the leaves' ssq and bbox")
    if boundary > 0 and contrast is None:
        raise ValueError("boundary > 0 needs the border contrasts")
    # the endpoints keep their integer type (32-bit leaf IDs: no 64-bit copies)
    a, b = np.asarray(edges[0]), np.asarray(edges[1])
    length = np.asarray(edges[2])
    ndim = 2
    s2 = np.zeros((0, nf))
    per = np.zeros(0)
    blo = bhi = np.zeros((0, 2), dtype=np.int64)
    elen = np.zeros(0)
    if baatz:  # only the shape terms need the borders' lengths, boxes and perimeters
        assert ssq is not None and bbox is not None
        s2 = own(ssq.reshape(n, nf), "ssq", np.float64)
        per = leaf_perimeters((a, b, length), n, store, pause)
        ndim = bbox[0].shape[1]
        blo = own(bbox[0], "blo", np.int64)
        bhi = own(bbox[1], "bhi", np.int64)
        elen = own(length, "elen", np.float64) if store else length.astype(np.float64)
    esum = np.zeros(0)
    epairs = np.zeros(0)
    if boundary > 0 and contrast is not None and contrast[0].size:
        esum, epairs = _edge_contrasts(a, b, contrast, n, store or _rag.InMemory(), pause)
    # baatz_schape has no lower bound for large nodes: every node re-costs its edges
    giant = n + 1 if baatz else int(GIANT_DEGREE if giant_degree is None else giant_degree)
    it = np.dtype(np.int32 if 2 * n + 3 * a.size + 4096 < 2**31 else np.int64)
    ends = table("ends", (a.size, 3), it)  # 0-based endpoints, and the edge's version
    for lo, hi in _ranges(a.size, _rag.STEP, pause):
        ends[lo:hi, 0] = a[lo:hi] - 1
        ends[lo:hi, 1] = b[lo:hi] - 1
        ends[lo:hi, 2] = 0
    if isinstance(edges, list):
        edges.clear()
    del edges, a, b, length  # the loop works on its own copies (ends, elen)
    if before_loop is not None:
        before_loop()
    out_a, out_b, out_c, out_s, work = merge_loop(
        n, cnt, mu, s2, per, blo, bhi, ends[:, 0], ends[:, 1], elen, esum, epairs, baatz,
        float(shape), float(compactness), float(boundary), ndim, max(giant, 1),
        BUDGET_STEPS, store, pause, stamp=ends[:, 2])
    log.debug("merge loop: %d settles of large nodes, %d exact costs from their heaps, "
              "%d new anchors (%d edges), %d re-costs of small nodes, %d rescans (edges), "
              "%d re-costs between large nodes, %d edges moved to large nodes, %d large "
              "nodes, %d looked at again", *work[:10].tolist())
    return Hierarchy(n, out_a + 1, out_b + 1, out_c, out_s)


def cut_hierarchy(h: Hierarchy, n_merges: int) -> tuple[np.ndarray, int]:
    """Region of every leaf after the first ``n_merges`` merges.

    Returns ``(region, n_regions)``: ``region[i]`` is the 1-based region of leaf
    ``i + 1``; regions are numbered by their lowest leaf ID, i.e. by first pixel.
    """
    n = h.n_leaves
    it = np.int32 if n + n_merges < 2**31 else np.int64  # 12 bytes a leaf, not 64
    region = np.empty(n, dtype=np.int64)
    found = _cut(h.child_a, h.child_b, n, int(n_merges), np.empty(n + n_merges, it),
                 np.zeros(n + n_merges, it), region)
    return region, int(found)


@numba.njit(cache=True, nogil=True)
def _cut(child_a, child_b, n, k, parent, number, region):  # pragma: no cover - compiled
    """Fill ``region`` (see :func:`cut_hierarchy`); return the number of regions.

    Children always have lower IDs than their parent, so one pass from the top finds
    every node's root; the leaves, in order, meet the roots by their lowest leaf.
    """
    for i in range(n + k):
        parent[i] = i
    for m in range(k):
        parent[child_a[m] - 1] = n + m
        parent[child_b[m] - 1] = n + m
    for i in range(n + k - 1, -1, -1):  # parents before children
        p = parent[i]
        if p != i:
            parent[i] = parent[p]
    found = 0
    for i in range(n):
        r = parent[i]
        if number[r] == 0:
            found += 1
            number[r] = found
        region[i] = number[r]
    return found


def majority_class(klass: np.ndarray, count: np.ndarray, group: np.ndarray,
                   n_groups: int) -> np.ndarray:
    """Class covering most pixels of each group (ties: the lowest class ID).

    Where groups x classes is at most a few times the members (regions of leaves), a
    table of their pixel counts, filled a slice of members at a time (file-backed
    statistics: their pages dropped after each); else a sort of every pair.
    """
    from ._bounded import drop_pages

    n = klass.size
    lo = int(klass.min()) if n else 0
    nk = int(klass.max()) + 1 if n else 1
    if lo >= 0 and n_groups * nk <= max(4 * n, 1 << 20):
        sums = np.zeros(n_groups * nk)  # pixel counts, exact in float64 below 2**53
        for s in range(0, n, _rag.STEP):
            e = min(s + _rag.STEP, n)
            key = group[s:e].astype(np.int64) * nk + klass[s:e]
            part = np.bincount(key, weights=count[s:e])
            sums[:part.size] += part
            drop_pages(klass, count)
        return sums.reshape(n_groups, nk).argmax(axis=1).astype(np.int64)  # first: lowest
    gg, kk, (sums,) = _sum_by_pair(group.astype(np.int64), klass.astype(np.int64),
                                   count.astype(np.int64))
    # per group: the largest sum, then the lowest class (sorted by class already)
    best = np.lexsort((kk, -sums, gg))
    first = np.ones(best.size, dtype=bool)
    first[1:] = gg[best][1:] != gg[best][:-1]
    out = np.zeros(n_groups, dtype=np.int64)
    out[gg[best][first]] = kk[best][first]
    return out


def region_stats(stats: Any, region: np.ndarray, n_regions: int) -> Any:
    """Return the regions' :class:`SegmentStats`; ``region[i]`` is leaf ``i + 1``'s.

    Reduced exactly from the leaves'; a region's class is the class covering most of
    its pixels (ties: the lowest class ID).
    """
    from ._bounded import drop_pages
    from ._resolve import SegmentStats

    group = np.asarray(region, dtype=np.int64) - 1
    # a slice of leaves at a time: file-backed statistics are not all read at once
    fields = [getattr(stats, f) for f in STAT_FIELDS]
    extra = [] if stats.zmin is None else [getattr(stats, f) for f in VOLUME_FIELDS]
    acc = _reduce_empty(int(n_regions), fields[-1].shape[1])
    acc_x: Any = _reduce_extra_empty(int(n_regions), 3) if extra else ()
    for s in range(0, group.size, _rag.STEP):
        e = min(s + _rag.STEP, group.size)
        _reduce_add(group[s:e], *(x[s:e] for x in fields), *acc)  # type: ignore[call-arg]
        if extra:  # a volume's z extents and coordinate sums
            _reduce_extra_add(group[s:e], *(np.asarray(x[s:e], np.int64) for x in extra),
                              *acc_x)
        drop_pages(*fields, *extra)
    out = SegmentStats(*acc, stats.sum_offset, stats.sum_scale)
    if extra:
        out.zmin, out.zmax, out.coord_sum = acc_x
    out.klass = majority_class(stats.klass, stats.count, group, n_regions)
    return out


def region_table(region: np.ndarray, n_regions: int) -> np.ndarray:
    """Lookup table leaf ID -> region ID (index 0, nodata, stays 0)."""
    from ._resolve import segment_dtype

    return np.concatenate([[0], region]).astype(segment_dtype(n_regions))


def _lookup(block: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[block]


def regions_of_leaves(leaves: xr.DataArray, region: np.ndarray, n_regions: int
                      ) -> xr.DataArray:
    """Return the region raster (lazy): the leaf raster through :func:`region_table`.

    The run and ``tileseg cut`` both write it so: one lookup a chunk, no labelling.
    """
    table = region_table(region, n_regions)
    data = leaves.data if isinstance(leaves.data, da.Array) else da.asarray(leaves.data)
    return leaves.copy(data=da.map_blocks(_lookup, data, table, dtype=table.dtype))


def region_index(index: Any, region: np.ndarray, n_regions: int) -> Any:
    """Return the regions' :class:`SegmentIndex`; ``region[i]`` is leaf ``i + 1``'s region.

    Statistics from :func:`region_stats`; the lookup tables composed with
    :func:`region_table` lazily, one task a chunk (the leaves' tables may be Delayed
    loads of files: they map every raw segment, not every leaf). The run writes the
    region raster from the leaf raster (:func:`regions_of_leaves`) and never computes
    them; they are there for :func:`relabel_segments` on the class map.
    """
    from ._resolve import SegmentIndex

    table = dask.delayed(region_table(region, n_regions))  # one key, every task reads it
    compose = dask.delayed(_lookup, pure=True)
    return SegmentIndex(stats=region_stats(index.stats, region, n_regions),
                        luts=[compose(lut, table) for lut in index.luts], edges=None,
                        chunks=index.chunks, connectivity=index.connectivity)
