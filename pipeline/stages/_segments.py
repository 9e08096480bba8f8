"""The segments stage: global connected segments, merged to the minimum size, and their table."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..cluster import raw_bands
from ..config import RunConfig
from ..io._geometry import Geometry
from ._context import RunContext

__all__ = ["Segments", "min_pixels", "segments_stage", "write_segments"]

log = logging.getLogger("pipeline.runner")

#: segment_tasks' min_pixels that keeps the adjacency of every segment
_EVERY_CONTACT = 2**62
#: memory that resolving takes per raw piece beyond the pieces themselves, with and
#: without the adjacency (min_size, merge): measured on single-band noise, the worst
#: case (8192^2, 37.6 M pieces: 10.5 GB more than after the pass with min_size 16;
#: 4096^2 without: 1.6 GB for 9.4 M), rounded up
_BYTES_PER_PIECE = (180, 300)
#: memory that region merging takes per leaf when the segments are bounded by chunks
#: (the leaves' statistics and contacts, the merge loop's graph, the hierarchy; one
#: leaf per 30 pixels and 4.5 contacts a leaf on noise): the loop alone grew by 302
#: bytes a leaf at 4096^2 noise, the statistics and contacts add 160; rounded up
_BYTES_PER_LEAF = 520
#: with the loop's graph in files (``postprocess.merge.graph``): the memory a leaf
#: still takes (the hierarchy's cut, 16 bytes; the loop's process grew from 0.3 to
#: 0.46 GiB of anonymous memory from 2.26 to 9.05 million leaves, 24 bytes a leaf:
#: the large nodes' edges to each other, scratch), and the scratch space (the loop's
#: arrays, about 150 bytes a leaf and 22 a contact, its pool copied when it is
#: repacked): rounded up from 16384^2 noise
_BYTES_PER_LEAF_FILES = (64, 450)


@dataclass
class Segments:
    """What the segments stage resolved: the index (for the lazy raster) and its table."""

    index: Any = field(repr=False)  # postprocess.SegmentIndex
    table: Any = field(repr=False)
    summary: dict[str, Any]
    # postprocess.merge: the hierarchy, and the leaves' index (index is the regions')
    hierarchy: Any = field(default=None, repr=False)
    leaves: Any = field(default=None, repr=False)
    # bounded segments: the table already written (``table`` is None), and the
    # directory of the chunks' spill files, removed once the segments are written
    table_file: Path | None = None
    spill: Path | None = None


def min_pixels(min_size: Any, geometry: Geometry, transform: Any) -> int | None:
    """``postprocess.min_size`` in pixels (voxels) for this image's geometry.

    ``{area: A}`` on a georeferenced image: squared map units through its transform
    (pixels without one); ``{area: A}`` on a slide and ``{volume: V}`` on a volume: the
    geometry's unit squared or cubed (pixels or voxels where the file gives none).
    """
    from ..postprocess import pixels_for_area, voxels_for_volume

    if min_size is None or isinstance(min_size, int):
        return min_size
    if hasattr(min_size, "volume"):
        return voxels_for_volume(min_size.volume, geometry.voxel_size)
    if geometry.kind == "gdal" or geometry.unit is None:
        return pixels_for_area(min_size.area, transform)
    return voxels_for_volume(min_size.area, geometry.voxel_size)


def segments_stage(ctx: RunContext, model: Any, rasters: dict[str, xr.DataArray],
                   along: Any = None, after_pass: Callable[[], None] | None = None,
                   read_back: Callable[[], xr.DataArray] | None = None,
                   spill: Path | None = None) -> Segments | None:
    """Global segments of ``rasters["labels"]``, merged to ``min_size`` (computes).

    Computes the per-chunk summaries, resolves and merges them in memory, and adds
    the lazy ``rasters["segments"]``. Without ``along``, the summaries take one more
    pass of read, features, labels and local labelling, and the write pass computes
    the segments with the other rasters. With ``along`` (the write of the class
    rasters, uncomputed), both are computed in one pass over the input,
    ``after_pass()`` is called, and the segments are relabelled from the class map
    that pass wrote (``read_back()``).
    Feature means and the merge's similarity use the model's standardisation
    (``model.mean``, ``model.scale``), the units the classes were fitted in. With
    ``features: [bands]`` they are summed from the raw ``image`` blocks, as the labels
    are (:func:`pipeline.cluster.raw_bands`): no float32 copy of the image.
    Images and volumes alike: the connectivity and the minimum size follow the
    image's dims and geometry.

    ``spill``: a directory the workers and this process share. With it, the segments
    of an image are resolved with memory bounded by chunks (:func:`bounded_segments`;
    with ``merge``, :func:`bounded_leaves`): the same segments, merge and table,
    images and volumes alike. Without it, they are resolved in memory.
    """
    config, opened = ctx.config, ctx.opened
    pp = config.postprocess
    if pp.segments is None:
        return None
    # imported here: segments bring pandas, pyarrow and shapely (start-up cost)
    from ..postprocess import (
        merge_small_segments,
        resolve_segments,
        segment_tasks,
    )

    t = time.perf_counter()
    geometry = opened.geometry
    labels = rasters["labels"]
    transform = None if geometry.is_volume else labels.rio.transform()
    min_px = min_pixels(pp.min_size, geometry, transform)
    features, image = opened.features, opened.raw
    bands = raw_bands(features, image)
    summed, offset, scale = (features if bands is None else image), model.mean, model.scale
    # region merging needs every contact, not only those of small segments
    contacts = _EVERY_CONTACT if pp.merge is not None else min_px
    n_features = int(features.shape[0])
    if pp.merge is not None and pp.merge.criterion == "baatz_schape":
        # baatz_schape's colour term needs each leaf's sum of squares: the squared
        # standardised features are summed with the features, in the same pass
        summed, offset, scale = squared_too(features, model.mean, model.scale)
        bands = None
    tasks = segment_tasks(labels, summed, bands=bands,
                          connectivity=pp.segments.for_ndim(geometry.ndim),
                          min_pixels=contacts, offset=offset, scale=scale)
    if spill is not None:  # bounded by chunks
        if pp.merge is None:
            return bounded_segments(ctx, model, tasks, rasters, spill, min_px, n_features,
                                    along, after_pass, read_back, t)
        index, n_found, t_resolve, files = bounded_leaves(ctx, tasks, labels, spill, min_px,
                                                          n_features, along, after_pass)
        return dataclasses.replace(
            _segments_of(ctx, model, rasters, index, n_found, min_px, n_features, read_back,
                         t if along is None else t_resolve, spill / "merge" if files else None),
            spill=spill)
    if pp.merge is not None and pp.merge.graph == "files":
        log.warning("postprocess.merge.graph: files needs segments bounded by chunks "
                    "(workers that see the staging directory): the graph stays in memory")
    pieces, joins = _summary_pass(labels.ndim, along, after_pass, tasks.pieces, tasks.joins)
    check_memory(sum(p.count.size for p in pieces), contacts is not None)
    t_resolve = time.perf_counter()
    index = resolve_segments(tasks, pieces, joins)
    del pieces, joins  # the per-piece summaries: as large as the table, not needed now
    n_found = index.n_segments
    if min_px is not None:
        index = merge_small_segments(index, min_px, keep_edges=pp.merge is not None,
                                     n_similar=n_features)
    return _segments_of(ctx, model, rasters, index, n_found, min_px, n_features, read_back,
                        t if along is None else t_resolve)


def _segments_of(ctx: RunContext, model: Any, rasters: dict[str, xr.DataArray], index: Any,
                 n_found: int, min_px: int | None, n_features: int,
                 read_back: Callable[[], xr.DataArray] | None, t: float,
                 graph_files: Path | None = None) -> Segments:
    """Finish :func:`segments_stage` from the resolved (and merged) ``index``.

    Region merging (``postprocess.merge``) over its segments as leaves; the lazy
    segment raster and the table. ``t``: when the timing of "segments" starts.
    ``graph_files``: where the merge loop keeps its graph, if not in memory.
    """
    from ..postprocess import relabel_segments
    from ..postprocess._hierarchy import regions_of_leaves
    from ._merge_regions import region_merge

    pp, geometry, timings = ctx.config.postprocess, ctx.opened.geometry, ctx.timings
    labels = rasters["labels"]
    transform = None if geometry.is_volume else labels.rio.transform()
    index, ssq = split_squares(index, n_features)
    class_map = labels if read_back is None else read_back()
    summary: dict[str, Any] = {"connectivity": index.connectivity, "found": n_found,
                               "min_pixels": min_px, "segments": index.n_segments}
    log.info("segments: %d found, %d after merging below %s pixels", n_found,
             index.n_segments, min_px)
    hierarchy = leaves = None
    if pp.merge is not None:
        leaves = index
        rasters["leaves"] = relabel_segments(class_map, leaves)
        hierarchy = region_merge(ctx, model, leaves, rasters["leaves"], ssq, graph_files)
        index = hierarchy.regions
        summary["merge"] = hierarchy.summary()
        summary["segments"] = index.n_segments
        # the regions from the leaf raster (one lookup a chunk), as tileseg cut does
        rasters["segments"] = regions_of_leaves(rasters["leaves"], hierarchy.region,
                                                index.n_segments)
    else:
        rasters["segments"] = relabel_segments(class_map, index)
    table = table_of(index.stats, model, geometry, transform)
    # with `along`, the pass itself counts as writing: only resolving is "segments"
    timings["segments"] = time.perf_counter() - t
    return Segments(index=index, table=table, summary=summary, hierarchy=hierarchy,
                    leaves=leaves)


def bounded_segments(ctx: RunContext, model: Any, tasks: Any,
                     rasters: dict[str, xr.DataArray], spill: Path, min_px: int | None,
                     n_features: int, along: Any, after_pass: Callable[[], None] | None,
                     read_back: Callable[[], xr.DataArray] | None, t: float) -> Segments:
    """:func:`segments_stage` of an image with memory bounded by chunks (computes).

    The pass spills every chunk's pieces to ``spill`` (on the workers); the border
    pieces are joined here; the segments are numbered, merged and tabulated by
    :func:`pipeline.postprocess._bounded.resolve_paged` on file-backed arrays, and
    segments.parquet is written a slice of IDs at a time (to ``spill``, moved into the
    output by :func:`write_segments`).
    """
    from ..io._parquet import ParquetParts
    from ..postprocess import relabel_segments
    from ..postprocess._bounded import Paged, resolve_paged

    geometry, timings = ctx.opened.geometry, ctx.timings
    labels = rasters["labels"]
    transform = None if geometry.is_volume else labels.rio.transform()
    bt, local, joins = _bounded_pass(tasks, spill, labels, along, after_pass)
    t_resolve = time.perf_counter()
    table_file = spill / "segments.parquet"
    # instances select objects from every segment's statistics: kept in memory
    kept: list[Any] | None = [] if ctx.config.postprocess.instances is not None else None

    with ParquetParts(table_file) as table:
        def write_rows(stats: Any, first_id: int, n_segments: int, rows: int) -> None:
            if kept is not None:
                kept.append(stats)
            table.write(table_of(stats, model, geometry, transform,
                           ids=np.arange(first_id, first_id + rows), n_segments=n_segments))

        index = resolve_paged(bt, local, joins, Paged(spill / "paged"), min_pixels=min_px,
                              n_similar=n_features, write_table=write_rows)
    shutil.rmtree(spill / "paged", ignore_errors=True)
    if kept is not None:
        from ..postprocess._bounded import concat_stats

        index.stats = concat_stats(bt, kept)
    if not table.written:  # no segment at all: the table's columns, no row
        from ..postprocess._bounded import empty_stats

        table_of(empty_stats(bt), model, geometry, transform).to_parquet(table_file,
                                                                        index=False)
    class_map = labels if read_back is None else read_back()
    rasters["segments"] = relabel_segments(class_map, index)
    summary: dict[str, Any] = {"connectivity": index.connectivity, "found": index.n_found,
                               "min_pixels": min_px, "segments": index.n_segments}
    log.info("segments: %d found, %d after merging below %s pixels", index.n_found,
             index.n_segments, min_px)
    timings["segments"] = time.perf_counter() - (t if along is None else t_resolve)
    return Segments(index=index, table=None, summary=summary, table_file=table_file,
                    spill=spill)


def _bounded_pass(tasks: Any, spill: Path, labels: xr.DataArray, along: Any,
                  after_pass: Callable[[], None] | None
                  ) -> tuple[Any, list[Any], list[Any]]:
    """Run the bounded resolver's pass (computes): ``(tasks, local results, joins)``.

    With ``along`` (the class rasters' write), in the same pass, then ``after_pass()``.
    The scratch space the resolve will take is checked (:func:`check_spill_space`).
    """
    from ..postprocess._bounded import bounded_tasks

    bt = bounded_tasks(tasks, spill, labels.shape)
    local, joins = _summary_pass(labels.ndim, along, after_pass, bt.local, bt.joins)
    check_spill_space(spill, sum(r.n_pieces for r in local),
                      sum(r.n_edges for r in local) + sum(j.edge_a.size for j in joins),
                      int(np.asarray(tasks.sum_offset).size), labels.ndim)
    return bt, list(local), list(joins)


def _summary_pass(ndim: int, along: Any, after_pass: Callable[[], None] | None,
                  *summaries: Any) -> tuple[Any, ...]:
    """Compute the chunks' ``summaries`` (with ``along`` in the same pass); return them.

    The resolve and merge kernels load from numba's cache (~0.8 s of one core) in a
    thread while the pass runs, not after it, when resolving is the only work left.
    With ``along`` (the class rasters' write, uncomputed), ``after_pass()`` follows.
    """
    from ..postprocess import load_kernels

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load_kernels, ndim)
        if along is None:
            out = dask.compute(*summaries)
        else:
            # unoptimised: fusing the stores' chains renames their tasks, and the
            # summaries (built on the unfused keys) would compute the majority filter
            # a second time
            out = dask.compute(along, *summaries, optimize_graph=False)[1:]
            if after_pass is not None:
                after_pass()
        loading.result()
    return tuple(out)


def bounded_leaves(ctx: RunContext, tasks: Any, labels: xr.DataArray, spill: Path,
                   min_px: int | None, n_similar: int, along: Any,
                   after_pass: Callable[[], None] | None) -> tuple[Any, int, float, bool]:
    """Resolve the leaves of region merging with the bounded resolver (computes).

    The segments and their minimum-size merge as :func:`bounded_segments` makes them;
    then the leaves' statistics, lookup tables and adjacency (every contact, lengths
    added) are gathered, proportional to the leaves, not to the raw pieces (the
    in-memory resolver held every raw piece and contact). Their lookup tables and
    statistics stay in files in ``spill`` (the statistics mapped, slice by slice as
    the resolver hands them over, then joined: read before and after the merge loop,
    not held during it); the contacts are in memory, or in files where the merge
    loop's graph is (:func:`merge_graph`). :func:`write_segments` removes the
    files. Returns the leaves'
    ``SegmentIndex``, the number of raw segments found, when the pass ended
    (``time.perf_counter``) and whether the merge loop keeps its graph in files
    (:func:`merge_graph`).
    """
    from ..postprocess._bounded import Paged, leaf_index, resolve_paged

    bt, local, joins = _bounded_pass(tasks, spill, labels, along, after_pass)
    t_resolve = time.perf_counter()
    parts: list[Any] = []
    held = Paged(spill / "leaves")  # each slice's statistics in files until joined
    index = resolve_paged(bt, local, joins, Paged(spill / "paged"), min_pixels=min_px,
                          n_similar=n_similar,
                          write_table=lambda stats, first_id, n, rows: parts.append(
                              held.hold(stats, f"part{len(parts)}")))
    shutil.rmtree(spill / "paged", ignore_errors=True)
    merge = ctx.config.postprocess.merge
    where = merge_graph(index.n_segments, merge.graph if merge is not None else "memory")
    check_merge_memory(index.n_segments, where, spill)
    files = where == "files"  # then the contacts are joined into the loop's files too
    leaves = leaf_index(bt, joins, index, parts, held, Paged(spill / "merge") if files else None)
    held.drop_prefix("part")  # joined into the leaves' statistics
    return leaves, index.n_found, t_resolve, files


def _free_space(path: Path) -> int:
    """Bytes free on the file system of ``path``."""
    return int(shutil.disk_usage(path).free)


def check_spill_space(spill: Path, n_pieces: int, n_contacts: int, n_features: int,
                      ndim: int = 2) -> None:
    """Refuse, in one line, segments whose file-backed arrays the disk cannot hold.

    The bounded resolver keeps about ``200 + 40 * features`` bytes per raw segment
    (a volume's 80 more: its z extent and coordinate sums, twice) and 20 per contact in
    files under ``spill`` (the staging directory): its memory is bounded, its scratch
    space is not. Where that exceeds the free space, the run
    stops with a :class:`~pipeline.errors.ResourceError` (exit 2) before writing them.
    """
    from ..errors import ResourceError

    need = n_pieces * (200 + 40 * n_features + (80 if ndim == 3 else 0)) + n_contacts * 20
    free = _free_space(spill)
    if need > free:
        raise ResourceError(
            f"postprocess.segments: {n_pieces / 1e6:.1f} million raw segments need about "
            f"{need / 2**30:.1f} GiB of scratch space in {spill.parent}, and "
            f"{free / 2**30:.1f} GiB is free: free some space, or smooth the class map "
            "first (postprocess.majority)")


def _available_memory() -> int:
    """Bytes this process may still take: the system's available memory (psutil).

    Under a control group's memory limit (a SLURM job, a container), no more than the
    limit less what the group uses, its inactive file cache not counted (the kernel
    reclaims that first): the system's figure does not see the limit.
    """
    import psutil

    available = int(psutil.virtual_memory().available)
    group = _cgroup_room()
    return available if group is None else min(available, group)


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under this process's control group memory limit (None: no limit).

    cgroup v2 (``memory.max``, ``memory.current``) or v1 (``memory/memory.limit_in_bytes``,
    ``memory.usage_in_bytes``); the file cache the kernel would drop first
    (``inactive_file``) counts as room, as the kubelet's working set does.
    """
    for limit_f, usage_f, stat_f, key in (
            ("memory.max", "memory.current", "memory.stat", "inactive_file"),
            ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
             "memory/memory.stat", "total_inactive_file")):
        try:
            limit_s = (root / limit_f).read_text().strip()
            usage = int((root / usage_f).read_text())
        except (OSError, ValueError):
            continue
        if not limit_s.isdigit() or int(limit_s) >= 2**60:  # "max", or v1's no limit
            return None
        inactive = 0
        try:
            for line in (root / stat_f).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    inactive = int(value)
        except (OSError, ValueError):
            pass
        return max(int(limit_s) - usage + inactive, 0)
    return None


def check_memory(n_pieces: int, adjacency: bool) -> None:
    """Refuse, in one line, segments that cannot be resolved in this machine's memory.

    Until the per-segment summaries leave this process, resolving them (and the
    minimum-size and region merges) holds about ``_BYTES_PER_PIECE`` bytes per raw
    piece. Where that exceeds the memory available now, the run stops here with a
    :class:`~pipeline.errors.ResourceError` (exit 2) instead of being killed by the
    kernel's out-of-memory killer later, with nothing said.
    """
    from ..errors import ResourceError

    need = n_pieces * _BYTES_PER_PIECE[adjacency]
    available = _available_memory()
    if need > available:
        raise ResourceError(
            f"postprocess.segments: {n_pieces / 1e6:.1f} million raw segments need about "
            f"{need / 2**30:.1f} GiB more memory to resolve"
            f"{' and merge' if adjacency else ''}, and {available / 2**30:.1f} GiB is "
            "available: smooth the class map first (postprocess.majority), use fewer "
            "classes, or run on a machine with more memory")


def merge_graph(n_leaves: int, graph: str) -> str:
    """Where the merge loop keeps the leaves' graph: ``"memory"`` or ``"files"``.

    ``graph`` (``postprocess.merge.graph``): ``auto`` takes files where the graph in
    memory (``_BYTES_PER_LEAF`` bytes a leaf) would take more than half the memory
    available: the loop then holds a fixed part of it, and reads the rest from the
    system's file cache (or the disk). For segments bounded by chunks only.
    """
    if graph != "auto":
        return graph
    return "files" if n_leaves * _BYTES_PER_LEAF > _available_memory() // 2 else "memory"


def check_merge_memory(n_leaves: int, where: str = "memory",
                       spill: Path | None = None) -> None:
    """Refuse, in one line, leaves too many for region merging in the memory available.

    The merge is one greedy sequence over the whole graph of the leaves (each merge
    changes the costs the next decision reads). In memory it holds that graph: about
    ``_BYTES_PER_LEAF`` bytes a leaf, the leaves' statistics included. With the graph
    in files (``where``), ``_BYTES_PER_LEAF_FILES``: memory, and scratch space in
    ``spill`` (the file pages the loop holds, ``resident_mib``, are not counted: the
    system can write them back and take them when memory runs short). Where either
    exceeds what is available now, the run stops with a
    :class:`~pipeline.errors.ResourceError` (exit 2) before building it.
    """
    from ..errors import ResourceError

    files = where == "files"
    need = n_leaves * (_BYTES_PER_LEAF_FILES[0] if files else _BYTES_PER_LEAF)
    available = _available_memory()
    if need > available:
        hint = "" if files or spill is None else ", set postprocess.merge.graph: files"
        raise ResourceError(
            f"postprocess.merge: {n_leaves / 1e6:.1f} million leaves need about "
            f"{need / 2**30:.1f} GiB more memory to merge, and {available / 2**30:.1f} "
            "GiB is available: raise postprocess.min_size, smooth the class map first "
            f"(postprocess.majority){hint}, or run on a machine with more memory")
    if files and spill is not None:
        need = n_leaves * _BYTES_PER_LEAF_FILES[1]
        free = _free_space(spill)
        if need > free:
            raise ResourceError(
                f"postprocess.merge: {n_leaves / 1e6:.1f} million leaves need about "
                f"{need / 2**30:.1f} GiB of scratch space in {spill.parent} to merge with "
                f"postprocess.merge.graph: files, and {free / 2**30:.1f} GiB is free: "
                "free some space, raise postprocess.min_size, or smooth the class map "
                "first (postprocess.majority)")


def squared_too(features: xr.DataArray, mean: Any, scale: Any
                ) -> tuple[xr.DataArray, np.ndarray, np.ndarray]:
    """Features followed by their squared standardised values (lazy), and their units.

    Summed by the segment tasks as ``(x - offset) / scale``: the features in the
    model's units, then ``((x - mean) / scale) ** 2`` as they are.
    """
    nf = int(features.shape[0])
    m = np.asarray(mean, np.float64).reshape((nf,) + (1,) * (features.ndim - 1))
    s = np.asarray(scale, np.float64).reshape(m.shape)
    data = features.data
    squares = (((data - m.astype(np.float32)) / s.astype(np.float32)) ** 2).astype(np.float32)
    both = xr.DataArray(da.concatenate([data, squares], axis=0), dims=features.dims)
    return (both, np.concatenate([np.asarray(mean, np.float64), np.zeros(nf)]),
            np.concatenate([np.asarray(scale, np.float64), np.ones(nf)]))


def split_squares(index: Any, n_features: int) -> tuple[Any, np.ndarray | None]:
    """Take :func:`squared_too`'s sums off ``index``: ``(index, within sums of squares)``.

    ``n * (mean(z^2) - mean(z)^2)`` per leaf and feature, from the exact sums;
    ``None`` (and ``index`` as it is) where no squares were summed.
    """
    if index.stats.hi.shape[1] <= n_features:
        return index, None
    means = index.stats.means()
    count = index.stats.count.astype(np.float64)[:, None]
    ssq = np.maximum(count * (means[:, n_features:] - means[:, :n_features] ** 2), 0.0)
    return dataclasses.replace(index, stats=index.stats.first_features(n_features)), ssq


def table_of(stats: Any, model: Any, geometry: Geometry, transform: Any, **part: Any) -> Any:
    """segments.parquet's frame of ``stats`` (pixels and map units, or a volume's).

    ``part``: ``ids`` and ``n_segments`` of :func:`segment_table` (a slice of the table).
    """
    from ..postprocess import segment_table

    if geometry.is_volume:
        return segment_table(stats, geometry=geometry, feature_names=model.feature_names,
                             offset=model.mean, scale=model.scale, **part)
    return segment_table(stats, transform=transform, feature_names=model.feature_names,
                         offset=model.mean, scale=model.scale, **part)


def write_segments(seg: Segments, raster: xr.DataArray, writer: Any, staging: Path,
                   config: RunConfig, timings: dict[str, float]) -> list[Path]:
    """Write segments.parquet and, if asked, the polygons (computes, on local threads).

    The polygons are vectorised from the segment raster just written (``writer``'s
    Zarr, else its COG), read back chunk by chunk: no further pass over the input.
    Where neither was written the segment raster is computed again. The spill
    directory (the bounded resolver's lookup tables) is removed after it.
    """
    try:
        return _write_segments(seg, raster, writer, staging, config, timings)
    finally:  # the rasters and polygons are written: the lookup tables are done with
        if seg.spill is not None:
            shutil.rmtree(seg.spill, ignore_errors=True)


def _write_segments(seg: Segments, raster: xr.DataArray, writer: Any, staging: Path,
                    config: RunConfig, timings: dict[str, float]) -> list[Path]:
    from ..postprocess import chunk_polygons, dissolve_polygons, polygons_frame

    t = time.perf_counter()
    out = [staging / "segments.parquet"]
    table = seg.table
    if seg.table_file is not None:
        shutil.move(seg.table_file, out[0])
        if config.postprocess.polygons:
            import pandas as pd

            table = pd.read_parquet(out[0])
    else:
        table.to_parquet(out[0], index=False)
    if seg.hierarchy is not None:
        from ._merge_regions import save_hierarchy

        out += save_hierarchy(seg.hierarchy, seg.leaves, staging)
    if config.postprocess.polygons:
        data = writer.read_back() if writer.readable else raster.data
        written = xr.DataArray(data, dims=("y", "x"))
        # the staging directory is local: read it here, not on remote workers
        (parts,) = dask.compute(chunk_polygons(written), scheduler="threads")
        ids, geoms = dissolve_polygons(parts)
        frame = polygons_frame(ids, geoms, table, transform=raster.rio.transform(),
                               crs=raster.rio.crs)
        out += [staging / "polygons.gpkg", staging / "polygons.parquet"]
        frame.to_file(out[1], driver="GPKG", layer="polygons", engine="pyogrio")
        frame.to_parquet(out[2], index=False)
    timings["segments_write"] = time.perf_counter() - t
    return out
