"""The bounded resolver's steps as a run takes them, for the tests of images and volumes.

Each step is the library's own; only the order and the scratch directories are set here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from pipeline.postprocess import _bounded as bounded
from pipeline.postprocess import merge_small_segments, resolve_segments, segment_tasks


def tasks_of(classes: np.ndarray, feats: np.ndarray, chunks: tuple[int, ...],
             min_px: int | None, conn: int, nodata: int | None) -> tuple[xr.DataArray, Any]:
    """The class map ``(y, x)`` or ``(z, y, x)``, chunked, and its segment tasks."""
    along = dict(zip("zyx"[-classes.ndim:], chunks, strict=True))
    labels = xr.DataArray(classes, dims=tuple(along)).chunk(along)
    if nodata is not None:
        labels = labels.rio.write_nodata(nodata)
    features = xr.DataArray(feats, dims=("band", *along)).chunk({"band": -1, **along})
    return labels, segment_tasks(labels, features, connectivity=conn, min_pixels=min_px)


def resolve_in_memory(tasks: Any, min_px: int | None) -> tuple[Any, int]:
    """The in-memory resolver and merge: ``(index, segments found before merging)``."""
    pieces, joins = dask.compute(tasks.pieces, tasks.joins, scheduler="sync")
    index = resolve_segments(tasks, pieces, joins)
    found = index.n_segments
    if min_px is not None:
        index = merge_small_segments(index, min_px)
    return index, found


def resolve_bounded(tasks: Any, shape: tuple[int, ...], work: Path, min_px: int | None,
                    write: Callable[..., None]) -> tuple[Any, list, Any]:
    """The local passes, then :func:`resolve_paged`: ``(bounded tasks, joins, index)``."""
    bt = bounded.bounded_tasks(tasks, work, shape)
    local, joins = dask.compute(bt.local, bt.joins, scheduler="sync")
    index = bounded.resolve_paged(bt, local, joins, bounded.Paged(work / "paged"),
                                  min_pixels=min_px, n_similar=1, write_table=write)
    return bt, joins, index


def bounded_leaves(tasks: Any, shape: tuple[int, ...], work: Path, min_px: int | None,
                   span: int | None) -> tuple[Any, Path | None]:
    """The leaves of region merging (:func:`leaf_index`), statistics file-backed.

    ``span``: the contacts joined into files a window of that many leaf IDs at a time
    (as for a merge with its graph in files); None: in memory. Returns the leaves'
    index and the contacts' directory (None in memory).
    """
    parts: list = []
    bt, joins, index = resolve_bounded(tasks, shape, work, min_px,
                                       lambda stats, *_: parts.append(stats))
    contacts = None if span is None else bounded.Paged(work / "merge")
    old_span = bounded._ContactWindows.SPAN
    bounded._ContactWindows.SPAN = span or old_span
    try:
        got = bounded.leaf_index(bt, joins, index, parts, bounded.Paged(work / "leaves"),
                                 contacts)
    finally:
        bounded._ContactWindows.SPAN = old_span
    assert not parts  # joined into the leaves' statistics
    return got, None if contacts is None else contacts.directory
