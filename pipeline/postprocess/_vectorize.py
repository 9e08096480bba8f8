"""Polygons of a segment raster: vectorise each chunk, then dissolve by segment ID.

Each chunk is vectorised on its own (``rasterio.features.shapes``, 4-connected parts)
in pixel coordinates, where every vertex is an integer and so exact. Parts of one
segment (from several chunks, or corner-touching parts under 8-connectivity) are
unioned; every geometry is then put in one canonical form (collinear vertices removed,
rings and parts ordered), so a segment gives the same polygon, vertex for vertex,
for any chunking. Only then are the coordinates mapped to the output CRS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from affine import Affine
from rasterio.features import shapes

__all__ = ["chunk_polygons", "dissolve_polygons", "polygons_frame"]


def _block_polygons(block: np.ndarray, y0: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
    ids, local = np.unique(block, return_inverse=True)
    local = local.reshape(block.shape).astype(np.int32)  # dense: any ID fits int32 here
    out_ids: list[int] = []
    geoms: list[Any] = []
    for geom, value in shapes(local, mask=block != 0, connectivity=4,
                              transform=Affine.translation(x0, y0)):
        out_ids.append(int(ids[int(value)]))
        geoms.append(shapely.geometry.shape(geom))
    return np.array(out_ids, dtype=np.uint64), np.array(geoms, dtype=object)


def chunk_polygons(segments: xr.DataArray) -> list[Any]:
    """Vectorise every chunk of a segment raster, lazily.

    Parameters
    ----------
    segments : DataArray, shape (y, x), unsigned integer
        Segment IDs, 0 for nodata (e.g. from :func:`relabel_segments`, or a written
        ``segments.zarr`` opened lazily).

    Returns
    -------
    list of Delayed
        One per chunk, each ``(ids, polygons)``: uint64 IDs and shapely polygons in
        global pixel coordinates (x = column, y = row of pixel corners), one per
        4-connected part of a segment within the chunk. Give the computed list to
        :func:`dissolve_polygons`.
    """
    data = segments.data if isinstance(segments.data, da.Array) else da.from_array(segments.data)
    if data.ndim != 2:
        raise TypeError(f"segments must be 2-D, got {data.ndim}-D")
    ys = np.concatenate([[0], np.cumsum(data.chunks[0])])
    xs = np.concatenate([[0], np.cumsum(data.chunks[1])])
    blocks = data.to_delayed(optimize_graph=False)
    task = dask.delayed(_block_polygons, pure=True)
    return [task(blocks[i, j], int(ys[i]), int(xs[j]))
            for i in range(blocks.shape[0]) for j in range(blocks.shape[1])]


def _canonical(geoms: np.ndarray) -> np.ndarray:
    """One representation per point set: no collinear vertex, rings and parts ordered.

    ``normalize`` starts every ring at its lexicographically smallest vertex, which
    is always a true corner; ``simplify(0)`` then drops exactly the collinear vertices
    (it keeps ring ends); a last ``normalize`` orders the result.
    """
    return shapely.normalize(shapely.simplify(shapely.normalize(geoms), 0.0))


def dissolve_polygons(parts: Sequence[tuple[np.ndarray, np.ndarray]]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One canonical geometry per segment from the per-chunk parts (pure, in memory).

    Parameters
    ----------
    parts : sequence of (ids, polygons)
        The computed results of :func:`chunk_polygons`.

    Returns
    -------
    ids : ndarray, uint64
        Segment IDs, ascending.
    geometries : ndarray of shapely geometries
        In pixel coordinates: a Polygon (holes included), or a MultiPolygon where parts
        touch only at corners (8-connectivity).
    """
    ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.uint64)
    geoms = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, object)
    order = np.argsort(ids, kind="stable")
    ids, geoms = ids[order], geoms[order]
    uniq, start, count = np.unique(ids, return_index=True, return_counts=True)
    out = geoms[start].copy()
    for k in np.flatnonzero(count > 1):
        out[k] = shapely.union_all(geoms[start[k]:start[k] + count[k]])
    return uniq, _canonical(out)


def _apply(t: Affine, xy: np.ndarray) -> np.ndarray:
    """Map pixel to map coordinates element-wise (no BLAS: the same bits for any size)."""
    x, y = xy[:, 0], xy[:, 1]
    return np.stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f], axis=1)


def polygons_frame(ids: np.ndarray, geometries: np.ndarray, table: pd.DataFrame, *,
                   transform: Affine, crs: Any) -> Any:
    """Put the polygons in a GeoDataFrame in map coordinates, with segment attributes.

    Parameters
    ----------
    ids, geometries :
        From :func:`dissolve_polygons` (pixel coordinates).
    table : DataFrame
        The segment table (:func:`segment_table`); its ``id``, ``class``, ``area_px``
        and ``area`` columns are joined.
    transform : Affine
        Pixel-to-map transform of the raster.
    crs :
        CRS of the raster (anything ``geopandas`` accepts), or None.

    Returns
    -------
    geopandas.GeoDataFrame
        Columns ``id``, ``class``, ``area_px``, ``area``, ``geometry``; one row per
        segment, ID order.
    """
    import geopandas as gpd

    mapped = shapely.normalize(shapely.transform(geometries, lambda xy: _apply(transform, xy)))
    attrs = table.set_index("id").loc[ids.astype(table["id"].dtype),
                                      ["class", "area_px", "area"]].reset_index()
    return gpd.GeoDataFrame(attrs, geometry=mapped, crs=crs)
