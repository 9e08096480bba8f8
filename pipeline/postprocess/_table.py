"""The segment table: one row per segment, from the exact per-segment statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from affine import Affine

from ._segments import SegmentStats, segment_dtype

__all__ = ["segment_table"]


def segment_table(
    stats: SegmentStats,
    *,
    transform: Any = None,
    feature_names: Sequence[str] = (),
    offset: Sequence[float] | np.ndarray | None = None,
    scale: Sequence[float] | np.ndarray | None = None,
) -> Any:
    """Build the segment table as a DataFrame (pure, in memory).

    Parameters
    ----------
    stats : SegmentStats
        From a :class:`SegmentIndex`.
    transform : Affine, optional
        Pixel-to-map transform; default: the identity (pixel units).
    feature_names : sequence of str
        One name per feature summed by :func:`segment_tasks`.
    offset, scale : array-like, optional
        As given to :func:`segment_tasks`; the means are reported in the features'
        own units (``offset + scale * mean``).

    Returns
    -------
    pandas.DataFrame
        One row per segment in ID order: ``id``, ``class``, ``area_px``, ``area`` (map
        units squared), ``row_min``, ``row_max``, ``col_min``, ``col_max`` (inclusive
        pixel indices), ``x_min``, ``y_min``, ``x_max``, ``y_max`` (map coordinates of
        the bounding box's outer corners), then ``mean_<feature>`` per feature.
    """
    t = Affine.identity() if transform is None else transform
    n = len(stats)
    nf = stats.hi.shape[1]
    if len(feature_names) != nf:
        raise ValueError(f"expected {nf} feature names, got {len(feature_names)}")
    off = np.zeros(nf) if offset is None else np.asarray(offset, dtype=np.float64)
    scl = np.ones(nf) if scale is None else np.asarray(scale, dtype=np.float64)
    pixel = abs(t.a * t.e - t.b * t.d)
    cols = [stats.cmin.astype(np.float64), stats.cmax.astype(np.float64) + 1.0]
    rows = [stats.rmin.astype(np.float64), stats.rmax.astype(np.float64) + 1.0]
    xs = [t.a * c + t.b * r + t.c for c in cols for r in rows]
    ys = [t.d * c + t.e * r + t.f for c in cols for r in rows]
    out: dict[str, Any] = {
        "id": np.arange(1, n + 1, dtype=segment_dtype(n)),
        "class": stats.klass.astype(np.int64),
        "area_px": stats.count.astype(np.int64),
        "area": stats.count.astype(np.float64) * pixel,
        "row_min": stats.rmin, "row_max": stats.rmax,
        "col_min": stats.cmin, "col_max": stats.cmax,
        "x_min": np.minimum.reduce(xs) if n else np.empty(0),
        "y_min": np.minimum.reduce(ys) if n else np.empty(0),
        "x_max": np.maximum.reduce(xs) if n else np.empty(0),
        "y_max": np.maximum.reduce(ys) if n else np.empty(0),
    }
    means = stats.means()
    for f, name in enumerate(feature_names):
        out[f"mean_{name}"] = off[f] + scl[f] * means[:, f]
    return pd.DataFrame(out)
