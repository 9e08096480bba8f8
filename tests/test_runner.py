from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import xarray as xr

from pipeline.config import parse_config
from pipeline.runner import run
from pipeline.synthetic import make_scene
from pipeline.testing import write_raster


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory):
    """Larger than one 1024 chunk, with an uneven last chunk for every chunking."""
    d = tmp_path_factory.mktemp("big")
    return make_scene(d / "scene.tif", size=1100, n_classes=5, cell=128, border=20,
                      tile=256, seed=1, truth_path=d / "truth.tif")


def _run(tmp_path, name, scene_path, **over):
    cfg = {"input": str(scene_path), "output": str(tmp_path / name),
           "cluster": {"k": 5, "seed": 3, "sample_size": 20000}}
    for k, v in over.items():
        cfg[k] = v
    return run(parse_config(cfg))


def _read_outputs(out):
    with rasterio.open(out / "labels.tif") as ds:
        tif = ds.read(1)
        meta = (ds.crs, ds.transform, ds.nodata, ds.dtypes[0], ds.overviews(1),
                ds.colormap(1)[0], ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"))
    z = xr.open_zarr(out / "labels.zarr", mask_and_scale=False)
    return tif, meta, z


def _model_core(out):
    m = json.loads((out / "model.json").read_text())
    return m["centroids"], m["scaler"], m["feature_names"]


def test_outputs_bit_identical_for_any_chunking(tmp_path, big_scene):
    results = [_run(tmp_path, f"c{c}", big_scene.path, chunks=c) for c in (256, 1024, 1100)]
    ref_tif, ref_meta, ref_z = _read_outputs(results[0].output)
    for r in results[1:]:
        tif, meta, z = _read_outputs(r.output)
        np.testing.assert_array_equal(tif, ref_tif)
        np.testing.assert_array_equal(z.labels.values, ref_z.labels.values)
        assert meta == ref_meta
        assert _model_core(r.output) == _model_core(results[0].output)
        assert r.report["classes"] == results[0].report["classes"]
    np.testing.assert_array_equal(ref_z.labels.values, ref_tif)


def test_default_chunks_shrink_to_fit_the_memory_limit(tmp_path, big_scene):
    """A small memory limit halves the tile-sized default chunks; the outputs stay equal."""
    ref = _run(tmp_path, "ref", big_scene.path, chunks=1024)
    # 4 uint16 bands, 4 features: 72 bytes a pixel; 1024^2 would take 75 MB a chunk
    small = _run(tmp_path, "small", big_scene.path,
                 compute={"scheduler": "threads", "n_workers": 2, "memory_limit": "80MB"})
    assert ref.report["input"]["chunks"] == [1024, 1024]
    assert small.report["input"]["chunks"] == [256, 256]  # 80 MB / 8 per chunk
    a, _, _ = _read_outputs(ref.output)
    b, _, _ = _read_outputs(small.output)
    np.testing.assert_array_equal(a, b)


@pytest.mark.cluster
def test_threads_and_local_cluster_are_bit_identical(tmp_path, big_scene):
    a = _run(tmp_path, "threads", big_scene.path, chunks=512)
    b = _run(tmp_path, "cluster", big_scene.path, chunks=300,
             compute={"scheduler": "processes", "n_workers": 2})
    ta, _, za = _read_outputs(a.output)
    tb, _, zb = _read_outputs(b.output)
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(za.labels.values, zb.labels.values)
    assert _model_core(a.output) == _model_core(b.output)
    # the workers write the Zarr chunks and count the classes themselves
    assert a.report["classes"] == b.report["classes"]
    # and encode the COG's tiles (chunks of 300 straddle them): GDAL's file, byte for byte
    assert (a.output / "labels.tif").read_bytes() == (b.output / "labels.tif").read_bytes()


def _kernels_loaded() -> bool:
    import sys

    return "pipeline.cluster._predict" in sys.modules


@pytest.mark.cluster
def test_local_cluster_workers_start_warm_while_the_first_stage_runs_here():
    """The first stage computes on local threads; the workers join warmed up after it."""
    import dask
    import dask.threaded

    from pipeline.compute import dask_context, local_while_workers_warm
    from pipeline.config import ComputeConfig

    cfg = ComputeConfig(scheduler="processes", n_workers=2)
    with dask_context(cfg) as client:
        with local_while_workers_warm(client, cfg):
            assert dask.config.get("scheduler") is dask.threaded.get
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2  # waited for on the way out
        assert all(client.run(_kernels_loaded).values())


@pytest.mark.cluster
def test_cluster_by_address_writes_everything_here(tmp_path, big_scene):
    """A cluster reached by its address may not share our files: blocks come back."""
    from distributed import LocalCluster

    a = _run(tmp_path, "threads", big_scene.path, chunks=512)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        b = _run(tmp_path, "address", big_scene.path, chunks=512,
                 compute={"scheduler": cluster.scheduler_address})
    ta, _, za = _read_outputs(a.output)
    tb, _, zb = _read_outputs(b.output)
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(za.labels.values, zb.labels.values)
    assert a.report["classes"] == b.report["classes"]


def test_georeferencing_and_nodata_round_trip(tmp_path, scene):
    res = _run(tmp_path, "out", scene.path, chunks=100)
    out = res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.tif", "labels.zarr", "model.json", "report.json"]
    with rasterio.open(scene.path) as src:
        crs, transform = src.crs, src.transform
    tif, (tcrs, ttransform, tnodata, dtype, ovr, cmap0, layout), _ = _read_outputs(out)
    assert (tcrs, ttransform, tnodata, dtype, layout) == (crs, transform, 255, "uint8", "COG")
    assert ovr and cmap0[3] == 255
    # the nodata frame of the scene is nodata in the labels, never a class
    truth = rasterio.open(scene.truth_path).read(1)
    assert ((tif == 255) == (truth == 255)).all()
    # the Zarr store is readable with xarray and carries the CRS the CF way
    ds = xr.open_zarr(out / "labels.zarr")
    assert ds.rio.crs == crs
    assert ds.labels.rio.transform() == transform
    assert ds.labels.encoding["chunks"] == (100, 100)
    # integer labels as written, not CF-decoded floats: nodata is an attribute
    assert ds.labels.dtype == np.uint8 and ds.labels.attrs["nodata"] == 255
    assert ds.labels.rio.nodata == 255
    np.testing.assert_array_equal(ds.labels.values, tif)
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["crs"] == "EPSG:32633"
    assert report["area_unit"] == "m^2"
    assert sum(c["pixels"] for c in report["classes"]) == report["valid_pixels"]
    assert report["valid_pixels"] + report["nodata_pixels"] == 320 * 320
    assert report["nodata_pixels"] == int((truth == 255).sum())
    assert set(report["timings_s"]) >= {"open", "sample_fit", "label_write", "total"}
    assert report["classes"][0]["area"] == report["classes"][0]["pixels"] * 100.0


def test_six_band_float32_with_negative_nodata(tmp_path):
    scene = make_scene(tmp_path / "f.tif", size=200, bands=6, n_classes=4, cell=40,
                       border=10, dtype="float32", tile=64, seed=5,
                       truth_path=tmp_path / "t.tif")
    assert scene.nodata == -99999
    res = _run(tmp_path, "out", scene.path, chunks=64, cluster={"k": 4, "seed": 0})
    tif, meta, _ = _read_outputs(res.output)
    truth = rasterio.open(tmp_path / "t.tif").read(1)
    assert ((tif == 255) == (truth == 255)).all()
    from sklearn.metrics import adjusted_rand_score

    ok = truth != 255
    assert adjusted_rand_score(truth[ok], tif[ok]) > 0.95
    assert res.report["input"]["nodata"] == -99999


def test_three_band_jpeg_without_georeferencing(tmp_path):
    rng = np.random.default_rng(0)
    img = np.zeros((3, 90, 120), np.uint8)
    img[:, :, :60] = np.array([200, 40, 40])[:, None, None]
    img[:, :, 60:] = np.array([30, 30, 220])[:, None, None]
    img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    p = write_raster(tmp_path / "photo.jpg", img, crs=None, tile=None, driver="JPEG")
    res = _run(tmp_path, "out", p, chunks=32, cluster={"k": 2, "seed": 0})
    tif, (crs, transform, *_), z = _read_outputs(res.output)
    assert crs is None
    assert (tif[:, :55] == tif[0, 0]).all() and (tif[:, 65:] == tif[0, -1]).all()
    assert tif[0, 0] != tif[0, -1]
    assert res.report["area_unit"] == "pixel"


def test_formats_and_more_than_255_classes(tmp_path, scene):
    res = _run(tmp_path, "out", scene.path, formats=["zarr"],
               cluster={"k": 300, "seed": 0, "sample_size": 50000, "n_init": 1})
    assert not (res.output / "labels.tif").exists()
    z = xr.open_zarr(res.output / "labels.zarr", mask_and_scale=False)
    assert z.labels.dtype == np.uint16
    vals = z.labels.values
    assert vals.max() == 65535 and vals[vals != 65535].max() < 300
    assert res.model.nodata == 65535


def test_overwrite_replaces_only_when_complete(tmp_path, scene):
    from pipeline.errors import InputError, OutputExistsError

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError):
        _run(tmp_path, "out", scene.path)
    assert (out / "keep.txt").read_text() == "precious"
    bad = tmp_path / "trunc.tif"
    data = scene.path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.tif"):
        run(parse_config({"input": str(bad), "output": str(out)}), overwrite=True)
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    run(parse_config({"input": str(scene.path), "output": str(out),
                      "cluster": {"k": 3, "sample_size": 5000}}), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "labels.tif").exists()
