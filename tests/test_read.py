from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr

from pipeline.compute import CHUNKS_PER_THREAD, chunk_budget
from pipeline.config import ComputeConfig
from pipeline.errors import InputError
from pipeline.io import default_chunk, fit_chunk, masked_float, open_image, valid_mask
from pipeline.testing import write_raster


def test_open_geotiff_lazy_with_georeferencing(scene):
    img = open_image(scene.path)
    assert img.dims == ("band", "y", "x")
    assert img.shape == (4, 320, 320)
    assert img.chunks[0] == (4,)
    assert img.rio.crs.to_epsg() == 32633
    assert img.rio.nodata == 0
    with rasterio.open(scene.path) as ds:
        assert img.rio.transform() == ds.transform
        np.testing.assert_array_equal(img.values, ds.read())


def test_chunks_honoured_and_default_is_multiple_of_tiles(scene):
    assert open_image(scene.path, chunks=48).chunks[1] == (48,) * 6 + (32,)
    side = open_image(scene.path).chunks[1][0]
    assert side % 64 == 0
    assert default_chunk((512, 512), (12000, 12000)) == 1024
    assert default_chunk((256, 256), (12000, 12000)) == 1024
    assert default_chunk((1, 12000), (12000, 12000)) == 1024
    assert default_chunk((512, 512), (300, 300)) == 300
    with pytest.raises(ValueError, match="16"):
        open_image(scene.path, chunks=8)


def test_fit_chunk_halves_until_the_working_set_fits():
    four_bands, hyperspectral = 72, 200 * 6 + 200 * 8 + 16  # bytes a pixel
    budget = 24 * 2**30 / 2 / CHUNKS_PER_THREAD  # 24 GiB, two threads
    assert fit_chunk(1024, four_bands, budget) == 1024
    assert fit_chunk(1024, hyperspectral, budget) == 512
    assert fit_chunk(1024, hyperspectral, 2**30 / CHUNKS_PER_THREAD) == 256  # the floor
    assert fit_chunk(1536, 4, 768**2 * 4) == 768
    assert fit_chunk(100, 10**6, 1) == 100  # already below the floor: kept


@pytest.mark.parametrize(("compute", "side"), [
    ({}, 1024), ({"scheduler": "processes"}, 1024),
    ({"scheduler": "tcp://127.0.0.1:8786"}, 2048),
    ({"scheduler_file": "cluster.json"}, 2048),
    # a cluster whose workers have little memory: 2048-pixel chunks would not fit
    ({"scheduler": "tcp://127.0.0.1:8786", "memory_limit": "200MiB"}, 512),
])
def test_default_chunks_grow_on_a_cluster_this_process_coordinates(tmp_path, compute, side):
    # on a cluster each block costs the client ~4 ms of CPU whatever its size: the
    # default side doubles there (still a multiple of the file's tiles), unless memory
    # is short; opening connects to nothing
    from pipeline.config import parse_config
    from pipeline.stages import open_input

    image = write_raster(tmp_path / "a.tif", np.zeros((1, 2500, 2500), np.uint8), tile=256)
    cfg = parse_config({"input": str(image), "output": str(tmp_path / "o"),
                        "compute": compute})
    opened = open_input(cfg, summarise=False)
    assert opened.image.chunks[1][0] == side
    assert opened.features.chunks[1][0] == side
    if "memory_limit" not in compute:  # never beyond the image
        small = write_raster(tmp_path / "s.tif", np.zeros((1, 700, 900), np.uint8), tile=256)
        cfg = parse_config({"input": str(small), "output": str(tmp_path / "o"),
                            "compute": compute})
        assert open_input(cfg, summarise=False).image.chunks[1:] == ((700,), (900,))


def test_chunk_budget_is_a_worker_threads_share():
    per_thread = chunk_budget(ComputeConfig(scheduler="processes", n_workers=3,
                                            threads_per_worker=2, memory_limit="4GiB"))
    assert per_thread == 4 * 2**30 / 2 / CHUNKS_PER_THREAD
    threads = chunk_budget(ComputeConfig(n_workers=2))
    processes = chunk_budget(ComputeConfig(scheduler="processes", n_workers=2))
    assert threads == processes > 0  # the machine's RAM over every thread


def test_nodata_from_file_config_and_nan(tmp_path):
    data = np.arange(2 * 20 * 20, dtype=np.float32).reshape(2, 20, 20)
    data[0, 0, 0] = -99999
    data[1, 5, 5] = np.nan
    p = write_raster(tmp_path / "f.tif", data, nodata=-99999, tile=16)
    valid = valid_mask(open_image(p)).values
    assert not valid[0, 0] and not valid[5, 5] and valid.sum() == 398
    m = masked_float(open_image(p)).values
    assert np.isnan(m[:, 0, 0]).all() and np.isnan(m[:, 5, 5]).all()
    # a config nodata overrides the file's
    valid = valid_mask(open_image(p, nodata=1.0)).values
    assert valid[0, 0] and not valid[0, 1] and not valid[5, 5]


def test_plain_png_and_jpeg_have_pixel_coordinates(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (3, 40, 50), dtype=np.uint8)
    for driver, name in (("PNG", "a.png"), ("JPEG", "a.jpg")):
        p = write_raster(tmp_path / name, rgb, crs=None, tile=None, driver=driver)
        img = open_image(p)
        assert img.shape == (3, 40, 50)
        assert img.rio.crs is None
        assert float(img.x[0]) == 0.5 and float(img.y[0]) == 0.5


def test_mosaic_of_tiles_equals_whole(tmp_path, scene):
    from rasterio.windows import Window

    with rasterio.open(scene.path) as src:
        whole = src.read()
        paths = []
        for i, (r, c) in enumerate([(0, 0), (0, 160), (160, 0), (160, 160)]):
            win = Window(c, r, 160, 160)
            p = write_raster(tmp_path / f"t{i}.tif", src.read(window=win), nodata=0,
                             transform=src.window_transform(win), crs=src.crs.to_string())
            paths.append(str(p))
    for source in (paths[::-1], str(tmp_path / "t*.tif")):
        img = open_image(source, chunks=100)
        assert img.rio.transform() == open_image(scene.path).rio.transform()
        np.testing.assert_array_equal(img.values, whole)


def test_mosaic_rejects_other_grids(tmp_path):
    a = write_raster(tmp_path / "a.tif", np.ones((1, 16, 16), np.uint8))
    b = write_raster(tmp_path / "b.tif", np.ones((2, 16, 16), np.uint8))
    with pytest.raises(InputError, match="count"):
        open_image([a, b])


def test_zarr_input_round_trip(tmp_path, scene):
    img = open_image(scene.path)
    ds = img.to_dataset(name="image")
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False)
    z = open_image(tmp_path / "s.zarr", chunks=100)
    assert z.chunks[1][0] == 100
    np.testing.assert_array_equal(z.values, img.values)
    assert z.rio.crs == img.rio.crs
    assert z.rio.nodata == 0


def test_zarr_2d_variable(tmp_path):
    da = xr.DataArray(np.arange(400, dtype=np.float32).reshape(20, 20), dims=("y", "x"))
    da.to_dataset(name="v").to_zarr(tmp_path / "p.zarr", zarr_format=3, consolidated=False)
    z = open_image(tmp_path / "p.zarr")
    assert z.shape == (1, 20, 20)


@pytest.mark.parametrize("what", ["missing", "text", "glob"])
def test_bad_inputs(tmp_path, what):
    if what == "missing":
        src, match = tmp_path / "nope.tif", "no such file"
    elif what == "text":
        src = tmp_path / "notes.tif"
        src.write_text("hello")
        match = "not a readable raster"
    else:
        src, match = str(tmp_path / "*.tif"), "no file matches"
    with pytest.raises(InputError, match=match):
        open_image(src)


def test_unsupported_dtype(tmp_path):
    p = write_raster(tmp_path / "c.tif", np.zeros((1, 16, 16), np.complex64))
    with pytest.raises(InputError, match="complex64 is not supported"):
        open_image(p)


def test_remote_cog_over_http_on_loopback(tmp_path, scene):
    import shutil

    from pipeline.config import parse_config
    from pipeline.runner import run
    from pipeline.testing import serve_directory

    shutil.copy(scene.path, tmp_path / "remote.tif")
    url, stop = serve_directory(tmp_path)
    try:
        remote = open_image(f"{url}/remote.tif", chunks=128)
        np.testing.assert_array_equal(remote.values, open_image(scene.path).values)
        res = run(parse_config({"input": f"{url}/remote.tif", "output": str(tmp_path / "o"),
                                "cluster": {"k": 3, "sample_size": 5000}}))
        assert res.report["input"]["source"] == f"{url}/remote.tif"
    finally:
        stop()
    with pytest.raises(InputError, match="not a readable raster"):
        open_image(f"{url}/missing.tif")
