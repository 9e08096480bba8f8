"""LabelWriter: the COG's streamed overviews and its layout, for any chunking."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from pipeline.io._cog import decimate, overview_factors
from pipeline.io._write import LabelWriter


def _template(labels: np.ndarray, chunk: tuple[int, int], georef: bool = True) -> xr.DataArray:
    h, w = labels.shape
    if georef:  # pixel centres of from_origin(500000, 5000000, 10, 10)
        coords = {"y": 5000000.0 - 10.0 * (np.arange(h) + 0.5),
                  "x": 500000.0 + 10.0 * (np.arange(w) + 0.5)}
    else:
        coords = {"y": np.arange(h) + 0.5, "x": np.arange(w) + 0.5}
    arr = xr.DataArray(da.from_array(labels, chunks=chunk), dims=("y", "x"), coords=coords)
    if georef:
        arr = arr.rio.write_crs("EPSG:32633")
    return arr.rio.write_nodata(255, encoded=False)


def _regions(template: xr.DataArray) -> list[tuple[slice, slice]]:
    """Every chunk's (rows, columns) region, row-major."""
    ys = np.cumsum((0,) + template.chunks[0])
    xs = np.cumsum((0,) + template.chunks[1])
    return [(slice(int(ys[i]), int(ys[i + 1])), slice(int(xs[j]), int(xs[j + 1])))
            for i in range(len(ys) - 1) for j in range(len(xs) - 1)]


def _write(tmp_path, labels, chunk, georef=True, order=None):
    template = _template(labels, chunk, georef)
    w = LabelWriter(tmp_path, template, nodata=255, n_classes=6, formats=("cog",))
    regions = _regions(template)
    for r in (regions if order is None else [regions[i] for i in order(len(regions))]):
        w[r] = labels[r]
    return w.close()[0]


def _gdal_overviews(tmp_path, labels):
    """Overviews GDAL itself builds with nearest resampling, as a reference."""
    path = tmp_path / "gdal.tif"
    h, w = labels.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1,
                       dtype="uint8", tiled=True, blockxsize=16, blockysize=16) as ds:
        ds.write(labels, 1)
        if overview_factors(h, w):
            ds.build_overviews(overview_factors(h, w), Resampling.nearest)
    with rasterio.open(path) as ds:
        return [ds.read(1, out_shape=(-(-h // f), -(-w // f)))
                for f in overview_factors(h, w)]


@settings(max_examples=15, deadline=None)
@given(h=st.integers(16, 600), w=st.integers(16, 600), cy=st.integers(16, 300),
       cx=st.integers(16, 300), seed=st.integers(0, 2**16))
def test_streamed_overviews_match_gdal_nearest_for_any_chunking(tmp_path_factory, h, w, cy,
                                                                 cx, seed):
    tmp = tmp_path_factory.mktemp("ovr")
    labels = np.random.default_rng(seed).integers(0, 7, (h, w)).astype(np.uint8)
    labels[labels == 6] = 255
    rng = np.random.default_rng(seed + 1)
    cog = _write(tmp, labels, (cy, cx), order=rng.permutation)
    with rasterio.open(cog) as ds:
        assert ds.overviews(1) == overview_factors(h, w)
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(ds.read(1), labels)
    ours = []
    for level in range(len(overview_factors(h, w))):
        with rasterio.open(cog, overview_level=level) as ov:
            ours.append(ov.read(1))
    for f, ov, ref in zip(overview_factors(h, w), ours, _gdal_overviews(tmp, labels),
                          strict=True):
        np.testing.assert_array_equal(ov, labels[::f, ::f])
        if h % f == 0 and w % f == 0:  # else GDAL steps by the size ratio, not f
            np.testing.assert_array_equal(ov, ref)
    # only the COG is left: the streamed GeoTIFF, overviews and VRT are removed
    assert sorted(p.name for p in tmp.iterdir()) == ["gdal.tif", "labels.tif"]


def test_cog_keeps_georeferencing_nodata_and_colours(tmp_path):
    labels = np.random.default_rng(0).integers(0, 6, (1000, 600)).astype(np.uint8)
    cog = _write(tmp_path, labels, (256, 256))
    with rasterio.open(cog) as ds:
        assert ds.crs.to_epsg() == 32633
        assert ds.transform == from_origin(500000.0, 5000000.0, 10.0, 10.0)
        assert ds.nodata == 255
        assert ds.colormap(1)[255] == (0, 0, 0, 0)
        assert ds.colormap(1)[0][3] == 255
        assert ds.overviews(1) == [2]  # down to about 256 pixels
        assert ds.block_shapes == [(512, 512)]
        assert ds.profile["compress"] == "deflate"
        assert ds.tags()["AREA_OR_POINT"] == "Area"


def test_cog_of_an_image_without_georeferencing(tmp_path):
    labels = np.random.default_rng(1).integers(0, 6, (300, 200)).astype(np.uint8)
    cog = _write(tmp_path, labels, (128, 128), georef=False)
    with rasterio.open(cog) as ds:
        assert ds.crs is None
        np.testing.assert_array_equal(ds.read(1), labels)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_decimate_takes_the_pixels_on_the_factor_grid(factor):
    full = np.arange(23 * 17).reshape(23, 17)
    got = np.full(((23 + factor - 1) // factor, (17 + factor - 1) // factor), -1)
    for y0 in range(0, 23, 5):
        for x0 in range(0, 17, 7):
            region = (slice(y0, min(y0 + 5, 23)), slice(x0, min(x0 + 7, 17)))
            part = decimate(full[region], region, factor)
            if part is not None:
                assert (got[part[0]] == -1).all()  # every overview pixel from one block
                got[part[0]] = part[1]
    np.testing.assert_array_equal(got, full[::factor, ::factor])


@pytest.mark.parametrize("dtype, nodata", [(np.uint8, 255), (np.uint16, 65535), (np.int32, 9)])
def test_class_counts_match_bincount(dtype, nodata):
    from pipeline.io._write import _class_counts

    rng = np.random.default_rng(3)
    block = rng.integers(0, 7, (37, 41)).astype(dtype)  # odd size: the unrolled tail
    block[rng.random(block.shape) < 0.2] = nodata
    ref = np.bincount(block.ravel().astype(np.int64), minlength=nodata + 1)
    np.testing.assert_array_equal(_class_counts(block, 6, nodata),
                                  np.append(ref[:6], ref[nodata]))


@pytest.mark.parametrize("formats", [("cog",), ("zarr",), ("cog", "zarr")])
@pytest.mark.parametrize("dtype", ["uint8", "uint32"])
def test_read_back_gives_the_finished_raster(tmp_path, formats, dtype):
    """A closed writer reads its raster back with the template's chunks (the segments'
    second pass); uint32 IDs stream through the ZSTD temporary and come out exact."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, (300, 260)).astype(dtype)
    labels[:3] = 255
    if dtype == "uint32":
        labels[5:9] = 2**32 - 2
    template = _template(labels, (64, 100)).astype(dtype)
    w = LabelWriter(tmp_path, template, nodata=255, formats=formats, stem="ids")
    with pytest.raises(RuntimeError, match="close the writer"):
        w.read_back()
    for r in _regions(template)[::-1]:  # any order
        w[r] = labels[r]
    assert sorted(p.name for p in w.close()) == sorted(
        {"cog": "ids.tif", "zarr": "ids.zarr"}[f] for f in formats)
    back = w.read_back()
    assert back.chunks == template.chunks and back.dtype == labels.dtype
    np.testing.assert_array_equal(back.compute(), labels)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("formats", [("cog",), ("zarr",), ("cog", "zarr")])
def test_read_back_while_the_cog_is_encoded(tmp_path, formats):
    """After finish_streams a second pass reads the raster (the kept stream) while
    another thread encodes the COG from it; close then finishes the rest, and
    remove_streams leaves only the outputs."""
    import concurrent.futures

    rng = np.random.default_rng(6)
    labels = rng.integers(0, 6, (300, 260)).astype(np.uint8)
    template = _template(labels, (64, 100))
    w = LabelWriter(tmp_path, template, nodata=255, n_classes=6, formats=formats)
    for r in _regions(template):
        w[r] = labels[r]
    w.finish_streams()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        encoding = pool.submit(w.encode_cog, keep_streams=True, threads=1)
        np.testing.assert_array_equal(w.read_back().compute(), labels)
        encoding.result()
    np.testing.assert_array_equal(w.read_back().compute(), labels)  # stream still kept
    w.remove_streams()
    outputs = w.close()  # the COG is not encoded again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in outputs)
    assert sorted(p.name for p in outputs) == sorted(
        {"cog": "labels.tif", "zarr": "labels.zarr"}[f] for f in formats)
    np.testing.assert_array_equal(w.read_back().compute(), labels)  # from the COG now
    if "cog" in formats:
        with rasterio.open(tmp_path / "labels.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), labels)
            assert ds.overviews(1)


def test_worker_side_zarr_writes_skip_the_empty_chunk_check(tmp_path):
    """store_part (a worker's share) opens the store with the writer's Zarr config
    and writes chunks the writer's process reads back unchanged."""
    pytest.importorskip("zarr")
    from pipeline.io._write import ZARR_WRITE_CONFIG, _open_stores, store_part

    labels = np.full((64, 48), 255, np.uint8)
    labels[:32] = 3
    template = _template(labels, (32, 48))
    w = LabelWriter(tmp_path, template, nodata=255, n_classes=6, formats=("zarr",))
    remote = w.remote(shared=True)
    for r in _regions(template):
        part = store_part(labels[r], r, remote)
        assert part.tiles is None  # no COG
        assert part.block is None  # the chunk is written: nothing to send back
        w.add(r, part.block, part.hist)
    array = _open_stores[remote["zarr"]]
    if hasattr(array, "with_config"):
        assert array.config.write_empty_chunks is ZARR_WRITE_CONFIG["write_empty_chunks"]
    w.close()
    np.testing.assert_array_equal(w.read_back().compute(), labels)
    assert w.counts[3] == 32 * 48 and w.counts[-1] == 32 * 48
