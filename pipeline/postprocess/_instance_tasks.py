"""The chunk passes of the instances, exact for any chunking.

Two passes over the segment raster (the finished one, read back), one task per chunk
with work (:mod:`._instances` splits each object):

1. :func:`instance_tasks`: a chunk splits the objects whose first pixel it holds and
   returns every instance's first pixel, size, box and exact coordinate sums, and the
   feature sums; for the objects not split, its share of their coordinate sums.
2. :func:`resolve_instances` (in memory): every instance gets the rank of its first
   pixel in raster order (C order over ``(z, y, x)``) as its ID, 1..n, as one whole-image
   labelling renumbered by first pixel would; 0 is everything else.
3. :func:`relabel_instances` (lazy): a chunk splits again the split objects that meet
   it (the same crops, so the same instances) and paints their IDs.

Written by hand (scipy and dask have no equivalent): the object-to-chunk bookkeeping,
the windows, and the ranking by first pixel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from ._instances import InstanceObjects, split_object
from ._resolve import SegmentStats, segment_dtype

__all__ = ["InstanceIndex", "InstanceTasks", "instance_tasks", "relabel_instances",
           "resolve_instances"]


# --- chunk bookkeeping -----------------------------------------------------------------

def _edges(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    return [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]


#: fixed-point scale of the instances' feature sums (16 bits: raw 16-bit bands of
#: objects up to max_extent^3 voxels stay within int64)
_FSUM_ONE = 65536.0


def _object_chunks(lo: np.ndarray, hi: np.ndarray, chunks: tuple[tuple[int, ...], ...]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Every (object, chunk) pair where the object's box meets the chunk (flat C index)."""
    edges = _edges(chunks)
    nchunks = tuple(len(c) for c in chunks)
    c_lo = np.stack([np.searchsorted(e, lo[:, a], "right") - 1 for a, e in enumerate(edges)],
                    axis=1) if len(lo) else np.zeros((0, len(chunks)), np.int64)
    c_hi = np.stack([np.searchsorted(e, hi[:, a], "right") - 1 for a, e in enumerate(edges)],
                    axis=1) if len(hi) else np.zeros((0, len(chunks)), np.int64)
    span = c_hi - c_lo + 1
    total = span.prod(axis=1)
    obj = np.repeat(np.arange(len(lo), dtype=np.int64), total)
    k = np.arange(int(total.sum()), dtype=np.int64) - np.repeat(np.cumsum(total) - total,
                                                                 total)
    idx = []
    for a in range(len(chunks) - 1, -1, -1):  # k in C order over each object's span
        s = span[obj, a]
        idx.append(c_lo[obj, a] + k % s)
        k = k // s
    flat = np.ravel_multi_index(tuple(idx[::-1]), nchunks) if obj.size else obj
    return obj, np.asarray(flat, dtype=np.int64)


def _owner_chunks(first: np.ndarray, shape: tuple[int, ...],
                  chunks: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Return the chunk (flat C index) holding each first pixel."""
    pos = np.unravel_index(first, shape)
    edges = _edges(chunks)
    idx = [np.searchsorted(e, p, "right") - 1 for e, p in zip(edges, pos, strict=True)]
    return np.asarray(np.ravel_multi_index(tuple(idx), tuple(len(c) for c in chunks)),
                      dtype=np.int64) if first.size else first.astype(np.int64)


def _core(flat: int, chunks: tuple[tuple[int, ...], ...]) -> tuple[slice, ...]:
    edges = _edges(chunks)
    idx = np.unravel_index(flat, tuple(len(c) for c in chunks))
    return tuple(slice(int(e[i]), int(e[i + 1])) for e, i in zip(edges, idx, strict=True))


def _window(core: tuple[slice, ...], lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...]:
    """Return the smallest box holding the core and the boxes ``lo``..``hi``."""
    if not len(lo):
        return core
    return tuple(slice(min(s.start, int(lo[:, a].min())), max(s.stop, int(hi[:, a].max()) + 1))
                 for a, s in enumerate(core))


@dataclass
class _Plan:
    """What the tasks of one chunk work on (indices into :class:`InstanceObjects`)."""

    core: tuple[slice, ...]
    window: tuple[slice, ...]
    split: np.ndarray  # objects split by this task
    whole: np.ndarray  # objects not split that meet the core


def _plans(objects: InstanceObjects, shape: tuple[int, ...],
           chunks: tuple[tuple[int, ...], ...], owned: bool) -> dict[int, _Plan]:
    """Plan every chunk with work.

    Its objects to split (``owned``: those whose first pixel it holds; else every
    split object meeting it) and the unsplit ones meeting it.
    """
    obj, chunk = _object_chunks(objects.lo, objects.hi, chunks)
    whole_obj = obj[~objects.split[obj]]
    whole_chunk = chunk[~objects.split[obj]]
    if owned:
        split_obj = np.flatnonzero(objects.split)
        split_chunk = _owner_chunks(objects.first[split_obj], shape, chunks)
    else:
        split_obj, split_chunk = obj[objects.split[obj]], chunk[objects.split[obj]]
    split_by, whole_by = _by_chunk(split_chunk, split_obj), _by_chunk(whole_chunk, whole_obj)
    none = np.zeros(0, np.int64)
    plans: dict[int, _Plan] = {}
    for c in sorted(split_by.keys() | whole_by.keys()):
        s, w = split_by.get(c, none), whole_by.get(c, none)
        core = _core(c, chunks)
        plans[c] = _Plan(core, _window(core, objects.lo[s], objects.hi[s]), s, w)
    return plans


def _by_chunk(chunk: np.ndarray, obj: np.ndarray) -> dict[int, np.ndarray]:
    """Group objects by chunk (each group ascending), in one sort."""
    order = np.lexsort((obj, chunk))
    chunk, obj = chunk[order], obj[order]
    cut = np.flatnonzero(np.diff(chunk)) + 1
    return {int(g[0]): o for g, o in zip(np.split(chunk, cut), np.split(obj, cut),
                                         strict=True) if g.size}


# --- pass 1: the instances of every object -----------------------------------------------

@dataclass
class _Method:
    """The split's options, and the features' projection for ``method: intensity``."""

    method: str
    min_distance: int
    smoothing: float
    spacing: tuple[float, ...] | None
    offset: np.ndarray | None = None  # intensity = sum(weights * (features - offset))
    weights: np.ndarray | None = None

    def intensity(self, features: np.ndarray | None) -> np.ndarray | None:
        if self.method != "intensity" or features is None:
            return None
        assert self.offset is not None and self.weights is not None
        f = features.astype(np.float64) - self.offset.reshape((-1,) + (1,) * (features.ndim - 1))
        return np.tensordot(self.weights, f, axes=(0, 0))


def _split_in_window(seg: np.ndarray, land: np.ndarray | None, origin: Sequence[int],
                     sid: int, lo: np.ndarray, hi: np.ndarray, how: _Method
                     ) -> tuple[tuple[slice, ...], np.ndarray]:
    """Split object ``sid`` from a window at ``origin``; its box (global) and labels."""
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
    local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(box, origin, strict=True))
    mask = seg[local] == sid
    labels = split_object(mask, method=how.method, min_distance=how.min_distance,
                          smoothing=how.smoothing, spacing=how.spacing,
                          intensity=None if land is None else land[local])
    return box, labels



def _method(method: str, min_distance: int, smoothing: float, spacing: Any, offset: Any,
            weights: Any) -> _Method:
    """Return the split's options, as its tasks take them."""
    return _Method(method, int(min_distance), float(smoothing),
                   None if spacing is None else tuple(float(s) for s in spacing),
                   None if offset is None else np.asarray(offset, np.float64),
                   None if weights is None else np.asarray(weights, np.float64))

def _count_task(seg: np.ndarray, features: np.ndarray | None, plan: _Plan,
                objects_split: tuple[np.ndarray, ...], whole_ids: np.ndarray,
                shape: tuple[int, ...], how: _Method) -> dict[str, np.ndarray]:
    """Pass 1 on one chunk: every instance of the objects it owns; unsplit partial sums."""
    ids, lo, hi = objects_split
    ndim = seg.ndim
    origin = [s.start for s in plan.window]
    land = how.intensity(features)
    out: dict[str, list[Any]] = {k: [] for k in ("obj", "first", "count", "lo", "hi",
                                                 "coord", "fsum")}
    nf = 0 if features is None else features.shape[0]
    for j, o in enumerate(plan.split.tolist()):
        box, labels = _split_in_window(seg, land, origin, int(ids[j]), lo[j], hi[j], how)
        n = int(labels.max())
        flat = labels.ravel()
        pos = np.nonzero(labels)
        lab = labels[pos]
        coords = [p + b.start for p, b in zip(pos, box, strict=True)]
        counts = np.bincount(lab, minlength=n + 1)[1:]
        values, idx = np.unique(flat, return_index=True)  # labels 1..n: first pixels
        local_first = np.unravel_index(idx[values > 0], labels.shape)
        firsts = np.ravel_multi_index(
            tuple(p + b.start for p, b in zip(local_first, box, strict=True)), shape)
        out["obj"].append(np.full(n, o, np.int64))
        out["first"].append(firsts)
        out["count"].append(counts.astype(np.int64))
        out["lo"].append(np.stack([_group(c, lab, n, np.minimum) for c in coords], axis=1))
        out["hi"].append(np.stack([_group(c, lab, n, np.maximum) for c in coords], axis=1))
        out["coord"].append(np.stack([_int_sums(c, lab, n) for c in coords], axis=1))
        if features is not None:
            local = tuple(slice(b.start - o_, b.stop - o_)
                          for b, o_ in zip(box, origin, strict=True))
            vals = features[(slice(None),) + local][(slice(None),) + pos].astype(np.float64)
            # fixed point: integer sums do not depend on the order of addition, and a
            # last-bit difference of a feature between chunkings rounds away
            fixed = np.rint(vals * _FSUM_ONE).astype(np.int64)
            acc = np.zeros((n, nf), np.int64)
            for f in range(nf):
                np.add.at(acc[:, f], lab - 1, fixed[f])
            out["fsum"].append(acc)
    res = {k: (np.concatenate(v) if v else
               np.zeros((0, ndim) if k in ("lo", "hi", "coord") else
                        (0, nf) if k == "fsum" else 0, np.int64))
           for k, v in out.items()}
    res.update(_whole_sums(seg, plan, whole_ids, origin))
    return res


def _group(values: np.ndarray, lab: np.ndarray, n: int, ufunc: Any) -> np.ndarray:
    """Per label 1..n, the min (max) of ``values`` (``ufunc.at``; every label present)."""
    init = np.iinfo(np.int64).max if ufunc is np.minimum else np.iinfo(np.int64).min
    acc = np.full(n + 1, init, np.int64)
    ufunc.at(acc, lab, values.astype(np.int64))
    return acc[1:]


def _int_sums(values: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
    """Exact sums of integer ``values`` per label 1..n (float64 is exact below 2**53)."""
    return np.rint(np.bincount(lab, weights=values, minlength=n + 1)[1:]).astype(np.int64)


def _whole_sums(seg: np.ndarray, plan: _Plan, whole_ids: np.ndarray,
                origin: Sequence[int]) -> dict[str, np.ndarray]:
    """Sum the coordinates of the unsplit objects' pixels in the core (exact)."""
    ndim = seg.ndim
    if not plan.whole.size:
        return {"whole_obj": np.zeros(0, np.int64), "whole_coord": np.zeros((0, ndim), np.int64)}
    local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(plan.core, origin, strict=True))
    core = seg[local]
    k = np.searchsorted(whole_ids, core)
    k = np.minimum(k, whole_ids.size - 1)
    hit = whole_ids[k] == core
    pos = np.nonzero(hit)
    lab = k[pos] + 1
    coord = np.stack([_int_sums(p + s.start, lab, whole_ids.size)
                      for p, s in zip(pos, plan.core, strict=True)], axis=1)
    return {"whole_obj": plan.whole, "whole_coord": coord}


@dataclass
class InstanceTasks:
    """Pass 1 of the instances: one Delayed per chunk with work, and what built them."""

    tasks: list[Any]
    objects: InstanceObjects
    shape: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    n_features: int


def _dask(data: Any) -> da.Array:
    return data if isinstance(data, da.Array) else da.from_array(np.asarray(data))


def instance_tasks(segments: xr.DataArray, objects: InstanceObjects, *,
                   method: str = "distance", min_distance: int = 3, smoothing: float = 0.0,
                   spacing: Sequence[float] | None = None,
                   features: xr.DataArray | None = None,
                   offset: Sequence[float] | np.ndarray | None = None,
                   weights: Sequence[float] | np.ndarray | None = None) -> InstanceTasks:
    """Build pass 1 (lazy): per chunk, the instances of the objects whose first pixel it holds.

    Parameters
    ----------
    segments : DataArray, shape (y, x) or (z, y, x)
        The segment raster (Dask-backed; best the written one, read back).
    objects : InstanceObjects
        From :func:`select_objects` on the same segments' statistics.
    method, min_distance, smoothing, spacing
        As :func:`split_object`.
    features : DataArray, shape (feature, ...), optional
        Summed per instance (the table's means) and, for ``method: intensity``, the
        landscape ``sum(weights * (features - offset))``.

    Returns
    -------
    InstanceTasks
        Compute ``tasks`` (``dask.compute(*t.tasks)``) and give them to
        :func:`resolve_instances`. A task reads its chunk grown to the boxes of the
        objects it splits: at most ``max_extent - 1`` pixels more on each side.
    """
    data = _dask(segments.data)
    if method == "intensity" and (features is None or weights is None or offset is None):
        raise ValueError("method 'intensity' needs features, offset and weights")
    fdata = None if features is None else _dask(features.data)
    how = _method(method, min_distance, smoothing, spacing, offset, weights)
    shape = tuple(int(s) for s in data.shape)
    chunks = tuple(tuple(int(c) for c in cs) for cs in data.chunks)
    task = dask.delayed(_count_task, pure=True)
    tasks = []
    for _, plan in sorted(_plans(objects, shape, chunks, owned=True).items()):
        s = plan.split
        window_f = None if fdata is None else fdata[(slice(None),) + plan.window]
        tasks.append(task(data[plan.window], window_f, plan,
                          (objects.ids[s], objects.lo[s], objects.hi[s]),
                          objects.ids[plan.whole], shape, how))
    return InstanceTasks(tasks, objects, shape, chunks,
                         0 if features is None else int(features.shape[0]))


# --- resolve: canonical IDs ----------------------------------------------------------------

@dataclass
class InstanceIndex:
    """Every instance, numbered by first pixel, and the IDs of each object's instances.

    Attributes
    ----------
    objects : InstanceObjects
    stats : SegmentStats
        One row per instance, ID order (``klass``: the objects' class; no feature sums).
    segment : ndarray, shape (n,), int64
        The segment (object) each instance belongs to.
    means : ndarray, shape (n, feature), float64
        Feature means in the features' units (an unsplit object's: its segment's).
    ptr, gid : ndarray, int64
        Object ``i``'s instances (local order: by first pixel) are
        ``gid[ptr[i]:ptr[i + 1]]``.
    """

    objects: InstanceObjects
    stats: SegmentStats
    segment: np.ndarray
    means: np.ndarray = field(repr=False)
    ptr: np.ndarray = field(repr=False)
    gid: np.ndarray = field(repr=False)

    @property
    def n_instances(self) -> int:
        """Number of instances."""
        return len(self.stats)

    @property
    def dtype(self) -> np.dtype:
        """Integer type of the instance IDs."""
        return segment_dtype(self.n_instances)

    @property
    def n_split(self) -> int:
        """Objects split into two or more instances."""
        return int((np.diff(self.ptr) > 1).sum())


def resolve_instances(tasks: InstanceTasks, results: Sequence[dict[str, np.ndarray]]
                      ) -> InstanceIndex:
    """Give every instance the rank of its first pixel in raster order (pure).

    ``results``: the computed ``tasks.tasks``. Unsplit objects are one instance each,
    with their segment's first pixel, size, box and feature means.
    """
    obj = tasks.objects
    ndim = len(tasks.shape)
    nf = tasks.n_features

    def cat(key: str, width: int | None = None, dtype: Any = np.int64) -> np.ndarray:
        parts = [r[key] for r in results]
        if parts:
            return np.concatenate(parts)
        return np.zeros((0,) if width is None else (0, width), dtype)

    whole = np.flatnonzero(~obj.split)
    whole_coord = np.zeros((obj.ids.size, ndim), np.int64)
    for r in results:
        np.add.at(whole_coord, r["whole_obj"], r["whole_coord"])
    inst_obj = np.concatenate([cat("obj"), whole])
    first = np.concatenate([cat("first"), obj.first[whole]])
    count = np.concatenate([cat("count"), obj.count[whole]])
    lo = np.concatenate([cat("lo", ndim), obj.lo[whole]])
    hi = np.concatenate([cat("hi", ndim), obj.hi[whole]])
    coord = np.concatenate([cat("coord", ndim), whole_coord[whole]])
    split_count = cat("count")
    fsum = (cat("fsum", nf).astype(np.float64) / _FSUM_ONE if nf
            else np.zeros((split_count.size, 0)))
    means = np.concatenate([fsum / np.maximum(split_count, 1)[:, None],
                            obj.means[whole] if obj.means.shape[1] == nf
                            else np.full((whole.size, nf), np.nan)])
    order = np.argsort(first, kind="stable")  # canonical: by first pixel
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    # object i's instances in local order (by first pixel): sort by (object, first)
    by_obj = np.lexsort((first, inst_obj))
    ptr = np.concatenate([[0], np.cumsum(np.bincount(inst_obj, minlength=obj.ids.size))])
    gid = rank[by_obj] + 1
    klass = np.full(order.size, obj.klass, np.int64)
    z = np.zeros((order.size, 0), np.int64)
    stats = SegmentStats(
        klass=klass, first=first[order], count=count[order],
        rmin=lo[order, -2], rmax=hi[order, -2], cmin=lo[order, -1], cmax=hi[order, -1],
        hi=z, lo=z, sum_offset=np.zeros(0), sum_scale=np.ones(0),
        zmin=lo[order, 0] if ndim == 3 else None, zmax=hi[order, 0] if ndim == 3 else None,
        coord_sum=coord[order])
    return InstanceIndex(objects=obj, stats=stats, segment=obj.ids[inst_obj[order]],
                         means=means[order], ptr=ptr.astype(np.int64),
                         gid=gid.astype(np.int64))


# --- pass 2: the raster -----------------------------------------------------------------------

def _paint_task(seg: np.ndarray, features: np.ndarray | None, plan: _Plan,
                objects_split: tuple[np.ndarray, ...], split_gids: list[np.ndarray],
                whole: tuple[np.ndarray, np.ndarray], how: _Method, dtype: np.dtype
                ) -> np.ndarray:
    """Pass 2 on one chunk: the instance IDs of its core."""
    ids, lo, hi = objects_split
    origin = [s.start for s in plan.window]
    core_local = tuple(slice(s.start - o, s.stop - o)
                       for s, o in zip(plan.core, origin, strict=True))
    core = seg[core_local]
    out = np.zeros(core.shape, dtype)
    whole_ids, whole_gid = whole
    if whole_ids.size:
        k = np.minimum(np.searchsorted(whole_ids, core), whole_ids.size - 1)
        hit = whole_ids[k] == core
        out[hit] = whole_gid[k[hit]]
    land = how.intensity(features)
    for j in range(ids.size):
        box, labels = _split_in_window(seg, land, origin, int(ids[j]), lo[j], hi[j], how)
        # the part of the box inside the core
        inter = tuple(slice(max(b.start, c.start), min(b.stop, c.stop))
                      for b, c in zip(box, plan.core, strict=True))
        if any(s.start >= s.stop for s in inter):
            continue
        part = labels[tuple(slice(s.start - b.start, s.stop - b.start)
                            for s, b in zip(inter, box, strict=True))]
        lut = np.concatenate([[0], split_gids[j]]).astype(dtype)
        dst = out[tuple(slice(s.start - c.start, s.stop - c.start)
                        for s, c in zip(inter, plan.core, strict=True))]
        inside = part > 0
        dst[inside] = lut[part[inside]]
    return out


def relabel_instances(segments: xr.DataArray, index: InstanceIndex, *,
                      method: str = "distance", min_distance: int = 3,
                      smoothing: float = 0.0, spacing: Sequence[float] | None = None,
                      features: xr.DataArray | None = None,
                      offset: Sequence[float] | np.ndarray | None = None,
                      weights: Sequence[float] | np.ndarray | None = None) -> xr.DataArray:
    """Give every pixel its instance ID, lazily, one chunk at a time (pass 2).

    The options must be those given to :func:`instance_tasks`. Each chunk reads its
    core grown to the boxes of the split objects that meet it, splits them again (the
    same crops, so the same instances) and paints their IDs; the unsplit objects get
    their one ID; every other pixel 0.

    Returns
    -------
    DataArray, same dims, chunks and coordinates as ``segments``
        uint32 instance IDs (uint64 above 2**32 - 1), 0 = not an instance (also
        ``rio.nodata``).
    """
    data = _dask(segments.data)
    fdata = None if features is None or method != "intensity" else _dask(features.data)
    how = _method(method, min_distance, smoothing, spacing, offset, weights)
    shape = tuple(int(s) for s in data.shape)
    chunks = tuple(tuple(int(c) for c in cs) for cs in data.chunks)
    obj = index.objects
    dtype = index.dtype
    plans = _plans(obj, shape, chunks, owned=False)
    task = dask.delayed(_paint_task, pure=True)
    nchunks = tuple(len(c) for c in chunks)
    blocks = np.empty(nchunks, dtype=object)
    for flat, idx in enumerate(itertools.product(*(range(n) for n in nchunks))):
        bshape = tuple(chunks[a][i] for a, i in enumerate(idx))
        plan = plans.get(flat)
        if plan is None:
            blocks[idx] = da.zeros(bshape, dtype=dtype, chunks=bshape)
            continue
        s, w = plan.split, plan.whole
        gids = [index.gid[index.ptr[o]:index.ptr[o + 1]] for o in s.tolist()]
        whole = (obj.ids[w], index.gid[index.ptr[w]] if w.size else np.zeros(0, np.int64))
        window_f = None if fdata is None else fdata[(slice(None),) + plan.window]
        blocks[idx] = da.from_delayed(
            task(data[plan.window], window_f, plan, (obj.ids[s], obj.lo[s], obj.hi[s]),
                 gids, whole, how, dtype),
            shape=bshape, dtype=dtype, meta=np.empty((0,) * len(bshape), dtype))
    out = da.block(blocks.tolist()) if blocks.size else data.astype(dtype)
    coords = {n: c for n, c in segments.coords.items()}
    arr = xr.DataArray(out, dims=segments.dims, coords=coords, name="instances")
    arr.attrs = {}
    return arr.rio.write_nodata(0, encoded=False)


