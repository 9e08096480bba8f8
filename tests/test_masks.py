"""The `mask:` key on georeferenced rasters: a vector area of interest, a raster mask."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from pipeline.config import parse_config
from pipeline.runner import run


def _run(tmp_path, name, scene, **cfg):
    base = {"input": str(scene.path), "output": str(tmp_path / name), "chunks": 64,
            "formats": ["cog"], "cluster": {"k": 5, "seed": 0, "sample_size": 20000}}
    base.update(cfg)
    return run(parse_config(base, name))


def test_vector_area_of_interest_in_another_crs(tmp_path, scene):
    with rasterio.open(scene.path) as src:
        t, crs = src.transform, src.crs
    # a box of pixel columns 70..200 and rows 30..150, sent through WGS 84
    x0, y0 = t * (70, 30)
    x1, y1 = t * (200, 150)
    aoi = gpd.GeoDataFrame(geometry=[box(min(x0, x1), min(y0, y1), max(x0, x1),
                                         max(y0, y1))], crs=crs).to_crs("EPSG:4326")
    path = tmp_path / "aoi.geojson"
    aoi.to_file(path, driver="GeoJSON")
    res = _run(tmp_path, "v", scene, mask=str(path))
    with rasterio.open(res.output / "labels.tif") as ds:
        labels = ds.read(1)
    inside = np.zeros(labels.shape, bool)
    inside[32:148, 72:198] = True  # well inside the reprojected box
    outside = np.ones(labels.shape, bool)
    outside[28:152, 68:202] = False
    assert (labels[outside] == 255).all()
    truth = rasterio.open(scene.truth_path).read(1)
    assert (labels[inside & (truth != 255)] != 255).all()
    report = json.loads((res.output / "report.json").read_text())
    assert report["mask"]["kind"] == "vector" and report["mask"]["shapes"] == 1
    # 5 x 5 chunks of 64 pixels: the box touches chunk rows 0-2 and columns 1-3
    assert report["mask"]["chunks_total"] == 25 and report["mask"]["chunks_skipped"] == 16


def test_raster_mask_same_grid_and_wrong_grid(tmp_path, scene):
    with rasterio.open(scene.path) as src:
        profile = src.profile
    m = np.zeros((320, 320), np.uint8)
    m[100:220, 40:300] = 1
    profile.update(count=1, dtype="uint8", nodata=None)
    path = tmp_path / "mask.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(m, 1)
    res = _run(tmp_path, "r", scene, mask=str(path))
    labels = rasterio.open(res.output / "labels.tif").read(1)
    assert (labels[m == 0] == 255).all()
    truth = rasterio.open(scene.truth_path).read(1)
    assert (labels[(m == 1) & (truth != 255)] != 255).all()
    # the same mask shifted by a pixel: another grid
    shifted = tmp_path / "shifted.tif"
    profile.update(transform=profile["transform"] * rasterio.Affine.translation(1, 0))
    with rasterio.open(shifted, "w", **profile) as dst:
        dst.write(m, 1)
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="another grid"):
        _run(tmp_path, "s", scene, mask=str(shifted))
    assert not (tmp_path / "s").exists()


def test_masked_runs_identical_for_any_chunking(tmp_path, scene):
    """The mask's valid fraction sizes the sample: from the shapes, not the chunks."""
    with rasterio.open(scene.path) as src:
        t, crs = src.transform, src.crs
    x0, y0 = t * (20, 40)
    x1, y1 = t * (150, 260)
    aoi = gpd.GeoDataFrame(geometry=[box(min(x0, x1), min(y0, y1), max(x0, x1),
                                         max(y0, y1))], crs=crs)
    path = tmp_path / "aoi.gpkg"
    aoi.to_file(path, driver="GPKG")
    a = _run(tmp_path, "a", scene, mask=str(path), chunks=64,
             cluster={"k": 5, "seed": 0, "sample_size": 3000})
    b = _run(tmp_path, "b", scene, mask=str(path), chunks=96,
             cluster={"k": 5, "seed": 0, "sample_size": 3000})
    la = rasterio.open(a.output / "labels.tif").read(1)
    lb = rasterio.open(b.output / "labels.tif").read(1)
    np.testing.assert_array_equal(la, lb)
    assert a.report["sample"] == b.report["sample"]
