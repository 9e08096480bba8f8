"""Region merging (``postprocess.merge``): the hierarchy over the leaves, cut where asked.

The leaves are the segments after ``min_size``; their exact statistics and adjacency
come from the segments stage. Where the criterion needs more (``baatz_schape``: the
perimeters and squared features; ``boundary``: the contrast across each border) one
pass over the leaves and the features sums them per chunk. The hierarchy is built
on the client (its size is the number of leaves), cut at ``regions``/``threshold``,
and the regions' index relabels the class map lazily. ``hierarchy.parquet`` (every
merge) and ``leaves.zarr`` (the leaf raster and the leaves' exact statistics) are what
``tileseg cut`` needs to cut the hierarchy elsewhere without any other computation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from ..compute import release_freed_memory
from ..postprocess._resolve import STAT_FIELDS, VOLUME_FIELDS
from ._context import RunContext

__all__ = ["MergedRegions", "region_merge", "save_hierarchy", "load_leaves", "LEAF_FIELDS",
           "write_hierarchy"]

log = logging.getLogger("pipeline.runner")

#: the SegmentStats fields saved with the leaves (volumes add zmin, zmax, coord_sum)
LEAF_FIELDS = STAT_FIELDS
_VOLUME_FIELDS = VOLUME_FIELDS


@dataclass
class MergedRegions:
    """The hierarchy, where it was cut, and the regions' index."""

    hierarchy: Any = field(repr=False)  # postprocess._hierarchy.Hierarchy
    region: np.ndarray = field(repr=False)  # region of each leaf (leaf ID - 1), 1-based
    regions: Any = field(repr=False)  # SegmentIndex of the regions
    n_merges: int
    criterion: str
    seconds: float
    model: Any = field(default=None, repr=False)  # the features' names and units
    graph: str = "memory"  # where the loop kept the leaves' graph: memory or files

    def summary(self) -> dict[str, Any]:
        """report.json's ``segments.merge``."""
        h = self.hierarchy
        last = float(h.cost[self.n_merges - 1]) if self.n_merges else None
        return {"criterion": self.criterion, "leaves": int(h.n_leaves),
                "merges": int(self.n_merges), "hierarchy_merges": int(h.cost.size),
                "regions": int(self.regions.n_segments), "last_cost": last,
                "graph": self.graph, "seconds": round(self.seconds, 3)}


def region_merge(ctx: RunContext, model: Any, leaves: Any, leaf_raster: xr.DataArray,
                 ssq: np.ndarray | None = None,
                 graph_files: Path | None = None) -> MergedRegions:
    """Build the hierarchy of ``leaves`` (a SegmentIndex with every contact) and cut it.

    ``ssq``: the leaves' within sums of squares (``baatz_schape``). With ``boundary``,
    computes the border contrasts in one pass over the leaves and the features.
    ``graph_files``: a directory where the merge loop keeps its graph in files, of
    which it holds ``resident_mib`` at a time (``postprocess.merge``): the loop reads
    its graph at random, so that every page dropped is read again from the system's
    file cache where memory allows.
    """
    from ..postprocess._bounded import Paged, contrast_windows, drop_pages
    from ..postprocess._hierarchy import (
        build_hierarchy,
        contrast_files,
        contrast_tasks,
        cut_hierarchy,
        reduce_contrast,
        region_index,
    )

    cfg = ctx.config.postprocess.merge
    assert cfg is not None and leaves.edges is not None
    t = time.perf_counter()
    store = None if graph_files is None else Paged(graph_files, random=True)
    pause = None
    contrast = None
    if cfg.boundary > 0:
        with ctx.timings.stage("merge_contrast"):
            parts = contrast_tasks(leaf_raster, ctx.opened.features, model.mean, model.scale)
            if graph_files is None:
                (parts,) = dask.compute(parts)
                contrast = reduce_contrast(list(parts))
            else:  # the tasks save them; joined a window of leaf IDs at a time, in files
                (paths,) = dask.compute(contrast_files(parts, graph_files))
                contrast = contrast_windows(paths, Paged(graph_files / "contrast"))
    leaf_stats = leaves.stats
    # the contacts go to the loop, which keeps its own copy: not held here as well
    edges, leaves.edges = list(leaves.edges), None
    # bounded by chunks, the leaves' statistics (and the contrasts) are file-backed:
    # their pages are dropped before the loop, not held in it
    inputs = [getattr(leaf_stats, f) for f in STAT_FIELDS] + list(contrast or ())
    if store is not None:  # the loop drops the pages past the budget, inside merges too
        pause = store.keep_under(cfg.resident_mib << 20, *edges)
    hierarchy = build_hierarchy(
        leaf_stats.count, leaf_stats.means(), edges,
        criterion=cfg.criterion, shape=cfg.shape, compactness=cfg.compactness,
        boundary=cfg.boundary, ssq=ssq, contrast=contrast,
        bbox=leaf_stats.bbox() if cfg.criterion == "baatz_schape" else None,
        before_loop=lambda: drop_pages(*inputs),
        consume=True,  # the ssq and boxes are made for it
        store=store,
        pause=pause)
    release_freed_memory()  # the merge loop's graph
    k = hierarchy.n_merges(cfg.regions, cfg.threshold)
    region, n_regions = cut_hierarchy(hierarchy, k)
    h = hierarchy
    drop_pages(h.child_a, h.child_b, h.cost, h.size)  # in files with the graph: read again
    regions = region_index(leaves, region, n_regions)
    seconds = time.perf_counter() - t
    log.info("merge: %d leaves, %d merges (%s, graph in %s), %d regions",
             leaves.n_segments, k, cfg.criterion, "memory" if store is None else "files",
             n_regions)
    if pause is not None:
        log.debug("merge: the loop dropped its pages %d times inside its steps", pause.drops)
    return MergedRegions(hierarchy, region, regions, k, cfg.criterion, seconds, model,
                         "memory" if store is None else "files")


def save_hierarchy(merged: MergedRegions, leaves: Any, staging: Path) -> list[Path]:
    """Write hierarchy.parquet and the leaves' statistics into leaves.zarr (a group).

    The leaf raster itself is written by the write stage (``leaves.zarr/leaves``).
    """
    import zarr

    from ..postprocess._bounded import drop_pages

    out = staging / "hierarchy.parquet"
    write_hierarchy(merged.hierarchy, out)
    group = zarr.open_group(str(staging / "leaves.zarr"), mode="a")
    stats = leaves.stats
    names = LEAF_FIELDS + (_VOLUME_FIELDS if stats.zmin is not None else ())
    for name in names:
        value = np.ascontiguousarray(getattr(stats, name), dtype=np.int64)
        group.create_array(f"stats/{name}", data=value, overwrite=True)
        drop_pages(value)  # file-backed where bounded: read once, not held
    group.attrs["tileseg_leaves"] = {
        "n_leaves": int(leaves.n_segments), "connectivity": int(leaves.connectivity),
        "sum_offset": [float(v) for v in stats.sum_offset],
        "sum_scale": [float(v) for v in stats.sum_scale],
        "feature_names": [str(n) for n in merged.model.feature_names],
        "offset": [float(v) for v in np.atleast_1d(merged.model.mean)],
        "scale": [float(v) for v in np.atleast_1d(merged.model.scale)],
        "chunks": [list(c) for c in leaves.chunks],
    }
    return [out]


def write_hierarchy(h: Any, path: Path, rows: int = 1 << 20) -> None:
    """Write ``h`` (a Hierarchy) as Parquet, ``rows`` merges at a time.

    The same file as ``h.to_frame().to_parquet(path, index=False)``, without a frame
    and a table of every merge at once in memory: 80 bytes a leaf, 0.7 GB at 16384^2
    noise.
    """
    from ..io._parquet import ParquetParts
    from ..postprocess._bounded import drop_pages

    total = int(h.child_a.size)
    with ParquetParts(path) as out:
        for s in range(0, max(total, 1), rows):
            out.write(h.to_frame(s, min(s + rows, total)))
            drop_pages(h.child_a, h.child_b, h.cost, h.size)  # file-backed: read once


def load_leaves(path: Path) -> tuple[Any, dict[str, Any], Any]:
    """Read leaves.zarr back: ``(SegmentStats, attrs, the leaf raster as a Dask array)``."""
    import dask.array as da
    import zarr

    from ..postprocess import SegmentStats

    # the statistics may be written after the store's metadata was consolidated
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    attrs: dict[str, Any] = dict(group.attrs["tileseg_leaves"])  # type: ignore[arg-type]
    values = {}
    for name in LEAF_FIELDS + _VOLUME_FIELDS:
        if f"stats/{name}" in group:
            values[name] = np.asarray(group[f"stats/{name}"][...])  # type: ignore[index]
    stats = SegmentStats(**values, sum_offset=np.asarray(attrs["sum_offset"]),
                         sum_scale=np.asarray(attrs["sum_scale"]))
    raster = da.from_zarr(str(path), component="leaves")
    return stats, attrs, raster

