"""The segment table: one row per segment, from the exact per-segment statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from affine import Affine

from ._resolve import SegmentStats, segment_dtype

__all__ = ["segment_table"]


def segment_table(
    stats: SegmentStats,
    *,
    transform: Any = None,
    geometry: Any = None,
    feature_names: Sequence[str] = (),
    offset: Sequence[float] | np.ndarray | None = None,
    scale: Sequence[float] | np.ndarray | None = None,
    ids: np.ndarray | None = None,
    n_segments: int | None = None,
) -> Any:
    """Build the segment table as a DataFrame (pure, in memory).

    Parameters
    ----------
    stats : SegmentStats
        From a :class:`SegmentIndex`.
    transform : Affine, optional
        Pixel-to-map transform (2-D only); default: ``geometry``'s, else the identity
        (pixel units).
    geometry : pipeline.io.Geometry, optional
        The image's geometry. For a volume (``stats.ndim == 3``) the volumes and
        world coordinates come from it (default: voxel units, spacing 1); for 2-D it
        gives the transform when ``transform`` is not given: its GDAL ``transform``,
        else its affine (which maps pixel centres) shifted by half a pixel.
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

        For a volume: ``id``, ``class``, ``voxels``, ``volume`` (voxels x
        ``geometry.voxel_size``, in the geometry's unit cubed), ``z_min``, ``z_max``,
        ``y_min``, ``y_max``, ``x_min``, ``x_max`` (inclusive voxel indices),
        ``world_z_min``, ``world_z_max``, ``world_y_min``, ``world_y_max``,
        ``world_x_min``, ``world_x_max`` (the world box of the voxels' outer faces:
        ``geometry.world`` of the 8 corners ``min - 0.5``, ``max + 0.5`` of the index
        box, world axes in dims order as :meth:`Geometry.world` returns them),
        ``centroid_z``, ``centroid_y``, ``centroid_x`` (mean voxel index, exact),
        ``world_centroid_z``, ``world_centroid_y``, ``world_centroid_x``, then
        ``mean_<feature>`` per feature.
    """
    nf = stats.hi.shape[1]
    if len(feature_names) != nf:
        raise ValueError(f"expected {nf} feature names, got {len(feature_names)}")
    if stats.ndim == 3:
        if transform is not None:
            raise ValueError("a volume's table takes geometry=, not a 2-D transform=")
        return _with_means(_volume_columns(stats, geometry, ids, n_segments), stats,
                           feature_names, offset, scale)
    if transform is None and geometry is not None:
        transform = _transform_of(geometry)
    t = Affine.identity() if transform is None else transform
    n = len(stats)
    off = np.zeros(nf) if offset is None else np.asarray(offset, dtype=np.float64)
    scl = np.ones(nf) if scale is None else np.asarray(scale, dtype=np.float64)
    pixel = abs(t.a * t.e - t.b * t.d)
    c0, c1 = stats.cmin.astype(np.float64), stats.cmax.astype(np.float64) + 1.0
    r0, r1 = stats.rmin.astype(np.float64), stats.rmax.astype(np.float64) + 1.0

    def corner(pick: Any, u: float, v: float, w: float) -> np.ndarray:
        # the extreme of u*c + v*r + w over the box's 4 corners: the extremes of u*c
        # and of v*r added (rounding is monotone, so these are the same bits as the
        # extreme of the 4 corners, with 2 temporaries instead of 8)
        return pick(u * c0, u * c1) + pick(v * r0, v * r1) + w
    out: dict[str, Any] = {
        "id": _ids(n, ids, n_segments),
        "class": stats.klass.astype(np.int64),
        "area_px": stats.count.astype(np.int64),
        "area": stats.count.astype(np.float64) * pixel,
        "row_min": stats.rmin, "row_max": stats.rmax,
        "col_min": stats.cmin, "col_max": stats.cmax,
        "x_min": corner(np.minimum, t.a, t.b, t.c),
        "y_min": corner(np.minimum, t.d, t.e, t.f),
        "x_max": corner(np.maximum, t.a, t.b, t.c),
        "y_max": corner(np.maximum, t.d, t.e, t.f),
    }
    means = stats.means()
    for f, name in enumerate(feature_names):
        out[f"mean_{name}"] = off[f] + scl[f] * means[:, f]
    return _frame(out)


def _frame(columns: dict[str, Any]) -> Any:
    """Return a DataFrame of these columns as they are (not copied).

    pandas copies a dict's columns into one block: 1 GB and 3 s for the 9.4 million
    rows of 4096^2 noise.
    """
    return pd.DataFrame(columns, copy=False)


def _transform_of(geometry: Any) -> Affine:
    """Return the pixel-corner transform of a 2-D geometry."""
    if geometry.ndim != 2:
        raise ValueError(f"the segments are 2-D, the geometry has dims {geometry.dims}")
    if geometry.transform is not None:
        return geometry.transform
    m = geometry.world_affine()  # voxel centres: the corner is half a pixel before
    return Affine(m[0, 0], m[0, 1], m[0, 3], m[1, 0], m[1, 1], m[1, 3]) @ \
        Affine.translation(-0.5, -0.5)


def _world(geometry: Any, index: np.ndarray) -> np.ndarray:
    return index.astype(np.float64) if geometry is None else geometry.world(index)


def _ids(n: int, ids: np.ndarray | None, n_segments: int | None) -> np.ndarray:
    """Return the ``id`` column: ``1..n``, or ``ids`` (a slice of ``n_segments``' table)."""
    if ids is None:
        return np.arange(1, n + 1, dtype=segment_dtype(n))
    return np.asarray(ids).astype(segment_dtype(n if n_segments is None else n_segments))


def _volume_columns(stats: SegmentStats, geometry: Any, ids: np.ndarray | None = None,
                    n_segments: int | None = None) -> dict[str, Any]:
    """Build the columns of a volume's table, before the feature means."""
    if geometry is not None and geometry.ndim != 3:
        raise ValueError(f"the segments are 3-D (z, y, x), the geometry has dims "
                         f"{geometry.dims}")
    n = len(stats)
    lo, hi = stats.bbox()
    voxel = 1.0 if geometry is None else float(geometry.voxel_size)
    out: dict[str, Any] = {
        "id": _ids(n, ids, n_segments),
        "class": stats.klass.astype(np.int64),
        "voxels": stats.count.astype(np.int64),
        "volume": stats.count.astype(np.float64) * voxel,
    }
    for a, name in enumerate("zyx"):
        out[f"{name}_min"] = lo[:, a]
        out[f"{name}_max"] = hi[:, a]
    # the world box of the voxels' outer faces (the extremes of its 8 corners)
    if geometry is None:
        wmin, wmax = lo - 0.5, hi + 0.5
    else:
        wmin, wmax = geometry.world_box(lo - 0.5, hi + 0.5)
    for a, name in enumerate("zyx"):
        out[f"world_{name}_min"] = wmin[:, a]
        out[f"world_{name}_max"] = wmax[:, a]
    centroid = stats.centroids()
    world_centroid = _world(geometry, centroid).reshape(n, 3)
    for a, name in enumerate("zyx"):
        out[f"centroid_{name}"] = centroid[:, a]
    for a, name in enumerate("zyx"):
        out[f"world_centroid_{name}"] = world_centroid[:, a]
    return out


def _with_means(out: dict[str, Any], stats: SegmentStats, feature_names: Sequence[str],
                offset: Any, scale: Any) -> Any:
    nf = stats.hi.shape[1]
    off = np.zeros(nf) if offset is None else np.asarray(offset, dtype=np.float64)
    scl = np.ones(nf) if scale is None else np.asarray(scale, dtype=np.float64)
    means = stats.means()
    for f, name in enumerate(feature_names):
        out[f"mean_{name}"] = off[f] + scl[f] * means[:, f]
    return _frame(out)
