"""The COG assembled from encoded tiles (pipeline.io._cog_tiles) against GDAL's own."""

from __future__ import annotations

import struct
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401 - the .rio accessor
import tifffile
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from pipeline.io import LabelWriter
from pipeline.io._cog_tiles import TileAssembler, TileGrid, block_tiles, join_tiles
from pipeline.stages._write import _groups

TRANSFORM = from_origin(500000, 5000000, 10, 10)


def _raster(h: int, w: int, dtype: str, nodata: int, seed: int = 0, georef: bool = True
            ) -> tuple[np.ndarray, xr.DataArray]:
    rng = np.random.default_rng(seed)
    high = 8 if dtype == "uint8" else 2**20 if dtype == "uint32" else 300
    a = rng.integers(0, high, (h, w)).astype(dtype)
    a[: h // 3, : w // 4] = a[0, 0]  # something that compresses
    a[:2, :3] = nodata
    x = xr.DataArray(a, dims=("y", "x"))
    if georef:
        x = x.rio.write_crs("EPSG:32633").rio.write_transform(TRANSFORM)
    return a, x


def _regions(h: int, w: int, ch: int, cw: int) -> list[tuple[slice, slice]]:
    return [(slice(i, min(i + ch, h)), slice(j, min(j + cw, w)))
            for i in range(0, h, ch) for j in range(0, w, cw)]


def _gdal_cog(tmp: Path, a: np.ndarray, x: xr.DataArray, nodata: int,
              n_classes: int | None, predictor: bool) -> tuple[Path, LabelWriter]:
    """The COG :class:`LabelWriter` streams and GDAL encodes."""
    tmp.mkdir()
    arr = x.copy(data=da.from_array(a, chunks=256))
    w = LabelWriter(tmp, arr, nodata=nodata, n_classes=n_classes, formats=("cog",),
                    predictor=predictor)
    for r in _regions(*a.shape, 256, 256):
        w[r] = a[r]
    w.close()
    return tmp / "labels.tif", w


def _assembled(path: Path, a: np.ndarray, x: xr.DataArray, nodata: int,
               colormap: dict | None, predictor: bool, ch: int, cw: int,
               bigtiff: bool | None = None) -> TileAssembler:
    grid = TileGrid.of(*a.shape, a.dtype, nodata, predictor)
    asm = TileAssembler(path, grid, x, colormap, bigtiff=bigtiff)
    regions = _regions(*a.shape, ch, cw)
    for r in regions[::-1]:  # blocks arrive in any order
        asm.add(block_tiles(a[r], r, grid))
    asm.finish()
    return asm


CASES = [  # dtype, nodata, classes (colour table), predictor, georeferenced
    ("uint8", 255, 8, False, True),
    ("uint8", 255, None, True, True),
    ("uint32", 0, None, False, True),
    ("uint16", 65535, 300, False, True),
    ("uint8", 255, 8, False, False),
]


@pytest.mark.parametrize(("dtype", "nodata", "n_classes", "predictor", "georef"), CASES)
def test_same_file_as_gdal_cog_driver(tmp_path, dtype, nodata, n_classes, predictor, georef):
    a, x = _raster(700, 1100, dtype, nodata, georef=georef)
    gdal, writer = _gdal_cog(tmp_path / "gdal", a, x, nodata, n_classes, predictor)
    colormap = None if n_classes is None else writer.colormap()
    asm = _assembled(tmp_path / "ours.tif", a, x, nodata, colormap, predictor, 300, 450)
    assert asm.encoded_here > 0  # tiles straddling blocks were assembled here
    assert (tmp_path / "ours.tif").read_bytes() == gdal.read_bytes()
    assert not asm.spool_path.exists()


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ch=st.integers(40, 800), cw=st.integers(40, 800))
def test_same_bytes_for_any_chunking(tmp_path_factory, ch, cw):
    tmp = tmp_path_factory.mktemp("chunks")
    a, x = _raster(600, 700, "uint8", 255, seed=3)
    _assembled(tmp / "one.tif", a, x, 255, None, False, 600, 700)
    _assembled(tmp / "many.tif", a, x, 255, None, False, ch, cw)
    assert (tmp / "many.tif").read_bytes() == (tmp / "one.tif").read_bytes()


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ch=st.integers(40, 400), cw=st.integers(40, 400), size=st.sampled_from([1, 4]))
def test_tiles_joined_by_groups_of_blocks_give_the_same_file(tmp_path_factory, ch, cw, size):
    # on a cluster a worker joins the tiles a group of blocks fills (2 x 2 blocks)
    # and encodes them; the rest still reaches the assembler as pieces
    tmp = tmp_path_factory.mktemp("groups")
    a, x = _raster(900, 1000, "uint8", 255, seed=5)
    _assembled(tmp / "one.tif", a, x, 255, None, False, 900, 1000)
    grid = TileGrid.of(*a.shape, a.dtype, 255)
    regions = _regions(*a.shape, ch, cw)
    numblocks = (-(-a.shape[0] // ch), -(-a.shape[1] // cw))
    groups = _groups(numblocks, size)
    assert sorted(i for g in groups for i in g) == list(range(len(regions)))
    asm = TileAssembler(tmp / "joined.tif", grid, x, None)
    joined_here = 0
    for members in groups[::-1]:
        tiles = join_tiles([block_tiles(a[regions[i]], regions[i], grid) for i in members]
                           + [None], grid)
        asm.add(tiles)
        joined_here += len(tiles.complete)
    asm.finish()
    assert (tmp / "joined.tif").read_bytes() == (tmp / "one.tif").read_bytes()
    total = sum(r * c for r, c in map(grid.tiles, range(grid.n_levels)))
    assert joined_here + asm.encoded_here == total


def test_cog_layout_values_and_overviews(tmp_path):
    a, x = _raster(1300, 900, "uint32", 0)
    _assembled(tmp_path / "c.tif", a, x, 0, None, False, 512, 512)
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.profile["compress"] == "deflate" and ds.block_shapes == [(512, 512)]
        assert ds.crs.to_epsg() == 32633 and ds.transform == TRANSFORM and ds.nodata == 0
        np.testing.assert_array_equal(ds.read(1), a)
        assert ds.overviews(1) == [2, 4]
        for f in ds.overviews(1):
            shape = (-(-1300 // f), -(-900 // f))
            np.testing.assert_array_equal(ds.read(1, out_shape=shape), a[::f, ::f])
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        ifds = [p.offset for p in tif.pages]
        data = [p.tags[324].value for p in tif.pages]
    # every IFD before any tile; the smallest overview's tiles first, rows in order
    assert max(ifds) < min(min(d) for d in data)
    assert [min(d) for d in data] == sorted((min(d) for d in data), reverse=True)
    assert all(list(d) == sorted(d) for d in data)


def test_bigtiff_layout_reads_back(tmp_path):
    a, x = _raster(600, 700, "uint8", 255)
    _assembled(tmp_path / "b.tif", a, x, 255, None, False, 256, 256, bigtiff=True)
    head = (tmp_path / "b.tif").read_bytes()[:8]
    assert struct.unpack("<2sHHH", head) == (b"II", 43, 8, 0)
    with rasterio.open(tmp_path / "b.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(ds.read(1), a)
        np.testing.assert_array_equal(ds.read(1, out_shape=(300, 350)), a[::2, ::2])


def test_missing_or_repeated_tiles_are_errors(tmp_path):
    a, x = _raster(600, 700, "uint8", 255)
    grid = TileGrid.of(600, 700, "uint8", 255)
    asm = TileAssembler(tmp_path / "m.tif", grid, x, None)
    regions = _regions(600, 700, 300, 350)
    for r in regions[:-1]:
        asm.add(block_tiles(a[r], r, grid))
    with pytest.raises(ValueError, match="never written"):
        asm.finish()
    assert not (tmp_path / "m.tif").exists()
    asm = TileAssembler(tmp_path / "r.tif", grid, x, None)
    whole = (slice(0, 600), slice(0, 700))
    asm.add(block_tiles(a, whole, grid))
    with pytest.raises(ValueError, match="twice"):
        asm.add(block_tiles(a, whole, grid))
    asm.abort()
    assert not asm.spool_path.exists()
