"""Polygons: one exact, canonical polygon per segment, for any chunking."""

from __future__ import annotations

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from _segment_oracle import class_maps, features_for, partitions, run_segments
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize

from pipeline.postprocess import (
    chunk_polygons,
    dissolve_polygons,
    polygons_frame,
    segment_table,
)


def _polygons(seg: np.ndarray, chunks) -> tuple[np.ndarray, np.ndarray]:
    arr = xr.DataArray(da.from_array(seg, chunks=chunks), dims=("y", "x"))
    (parts,) = dask.compute(chunk_polygons(arr), scheduler="synchronous")
    return dissolve_polygons(parts)


def _rasterised(ids, geoms, shape) -> np.ndarray:
    if not len(ids):
        return np.zeros(shape, np.uint32)
    return rasterize(zip(geoms, ids.tolist(), strict=True), out_shape=shape, fill=0,
                     transform=Affine.identity(), dtype="uint32")


@settings(max_examples=40, deadline=None)
@given(data=st.data(), classes=class_maps(max_side=16), connectivity=st.sampled_from([4, 8]),
       min_pixels=st.sampled_from([None, 3]))
def test_polygons_equal_single_chunk_and_rasterise_back(data, classes, connectivity,
                                                         min_pixels):
    h, w = classes.shape
    chunks = (data.draw(partitions(h)), data.draw(partitions(w)))
    seg, _ = run_segments(classes, features_for(classes, 1), chunks, connectivity, min_pixels)
    ids, geoms = _polygons(seg, chunks)
    ids1, geoms1 = _polygons(seg, (h, w))
    np.testing.assert_array_equal(ids, ids1)
    assert shapely.to_wkb(geoms).tolist() == shapely.to_wkb(geoms1).tolist()
    np.testing.assert_array_equal(ids, np.arange(1, seg.max(initial=0) + 1))
    assert shapely.is_valid(geoms).all()
    np.testing.assert_array_equal(_rasterised(ids, geoms, seg.shape), seg)
    areas = np.bincount(seg.ravel(), minlength=ids.size + 1)[1:]
    np.testing.assert_array_equal(shapely.area(geoms), areas)


def test_ring_has_a_hole_and_is_one_polygon_across_four_chunks():
    seg = np.zeros((10, 10), np.uint32)
    seg[1:9, 1:9] = 1
    seg[3:7, 3:7] = 2
    ids, geoms = _polygons(seg, 5)
    assert ids.tolist() == [1, 2]
    ring = geoms[0]
    assert ring.geom_type == "Polygon" and len(ring.interiors) == 1
    assert ring.area == 64 - 16 and len(ring.exterior.coords) == 5  # no chunk-seam vertex
    assert geoms[1].equals(shapely.box(3, 3, 7, 7))


def test_corner_contacts_give_a_multipolygon_and_touching_holes_stay_valid():
    seg = np.zeros((6, 6), np.uint32)
    seg[1:3, 1:3] = 1
    seg[3:5, 3:5] = 1  # 8-connected to the first square by a corner only
    ids, geoms = _polygons(seg, 3)
    assert geoms[0].geom_type == "MultiPolygon" and len(geoms[0].geoms) == 2
    # a hole that touches the outer boundary at a point
    seg = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.uint32)
    for chunks in (4, 2, 1, (3, 1)):
        ids, geoms = _polygons(seg, chunks)
        assert geoms[0].is_valid
        np.testing.assert_array_equal(_rasterised(ids, geoms, seg.shape), seg)
        assert shapely.to_wkb(geoms[0]) == shapely.to_wkb(_polygons(seg, 4)[1][0])


def test_large_ids_survive_vectorising():
    seg = np.zeros((4, 4), np.uint64)
    seg[:2] = 2**40 + 3
    seg[2:] = 2**33
    ids, geoms = _polygons(seg, 2)
    assert ids.tolist() == [2**33, 2**40 + 3]


def test_polygons_frame_in_map_coordinates(tmp_path):
    classes = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 2]], np.uint8)
    seg, index = run_segments(classes, None, 2, 4)
    t = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
    table = segment_table(index.stats, transform=t)
    ids, geoms = _polygons(seg, 2)
    frame = polygons_frame(ids, geoms, table, transform=t, crs="EPSG:32633")
    assert list(frame.columns) == ["id", "class", "area_px", "area", "geometry"]
    assert frame.crs.to_epsg() == 32633
    assert frame["id"].tolist() == [1, 2, 3] and frame["class"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(frame.geometry.area, frame["area"])
    assert frame.geometry.iloc[2].equals(shapely.box(500000, 3999970, 500030, 3999980))
    frame.to_file(tmp_path / "p.gpkg", driver="GPKG", engine="pyogrio")
    frame.to_parquet(tmp_path / "p.parquet")
    for back in (gpd.read_file(tmp_path / "p.gpkg"), gpd.read_parquet(tmp_path / "p.parquet")):
        assert back.crs.to_epsg() == 32633
        pd.testing.assert_frame_equal(pd.DataFrame(back.drop(columns="geometry")),
                                      pd.DataFrame(frame.drop(columns="geometry")),
                                      check_dtype=False)
        assert all(a.equals(b) for a, b in zip(back.geometry, frame.geometry, strict=True))
