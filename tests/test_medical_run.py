"""End to end: volumes and slides through `tileseg run`, their outputs, masks and errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
import zarr
from click.testing import CliRunner
from scipy import ndimage as ndi

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.runner import run

AFFINE = np.array([[0.5, 0, 0, -28.0], [0, 0.5, 0, -24.0], [0, 0, 2.0, -40.0],
                   [0, 0, 0, 1.0]])


def _volume(shape=(20, 40, 48), seed=7) -> np.ndarray:
    """(z, y, x) int16 with four smooth tissue classes and noise."""
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.normal(size=shape), (1, 3, 3))
    q = np.digitize(f, np.quantile(f, [0.25, 0.5, 0.75]))
    return (q * 60 + 20 + rng.normal(0, 4, shape)).astype(np.int16)


def _nifti(path, vol, affine=AFFINE, codes=(2, 1)):
    img = nib.Nifti1Image(vol.transpose(2, 1, 0).copy(), affine)  # stored (x, y, z)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=codes[0])
    img.set_qform(affine, code=codes[1])
    nib.save(img, path)
    return path


def _read_nifti(path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(path)
    return np.asarray(img.dataobj).transpose(2, 1, 0), img


def _run(tmp_path, name, **cfg):
    base = {"output": str(tmp_path / name), "features": ["bands"],
            "cluster": {"method": "kmeans", "k": 4, "seed": 0, "sample_size": 20000}}
    base.update(cfg)
    return run(parse_config(base, name))


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("vol")
    return _nifti(d / "vol.nii.gz", _volume())


def test_nifti_volume_round_trip_of_geometry_and_default_formats(tmp_path, volume_file):
    res = _run(tmp_path, "a", input=str(volume_file), chunks=16,
               postprocess={"segments": {"connectivity": 26}, "min_size": {"volume": 4.0}})
    names = sorted(p.name for p in res.output.iterdir())
    assert names == ["labels.nii.gz", "labels.ome.zarr", "model.json", "report.json",
                     "segments.nii.gz", "segments.ome.zarr", "segments.parquet"]
    labels, img = _read_nifti(res.output / "labels.nii.gz")
    src = nib.load(volume_file)
    np.testing.assert_allclose(img.affine, src.affine)
    assert (int(img.header["sform_code"]), int(img.header["qform_code"])) == (2, 1)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert labels.shape == (20, 40, 48)
    # classes are stored as class + 1 (0: no label); nothing is nodata here
    assert set(np.unique(labels)) == {1, 2, 3, 4}
    report = json.loads((res.output / "report.json").read_text())
    assert report["area_unit"] == "mm^3" and report["pixel_area"] == pytest.approx(0.5)
    assert report["input"]["depth"] == 20 and report["formats"] == ["nifti", "ome-zarr"]
    assert report["input"]["geometry"]["spacing"] == [2.0, 0.5, 0.5]
    assert report["segments"]["connectivity"] == 26
    assert report["segments"]["min_pixels"] == 8  # 4 mm^3 / 0.5 mm^3 a voxel
    table = pd.read_parquet(res.output / "segments.parquet")
    np.testing.assert_allclose(table["volume"], table["voxels"] * 0.5)
    assert table["voxels"].min() >= 8
    seg, _ = _read_nifti(res.output / "segments.nii.gz")
    assert seg.max() == len(table) and seg.min() >= 1
    # the OME-Zarr label image: NGFF 0.4 (the input is not OME-Zarr), mm, z y x
    g = zarr.open_group(str(res.output / "labels.ome.zarr"), mode="r")
    ms = g.attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]
    np.testing.assert_array_equal(np.asarray(g[ms["datasets"][0]["path"]]), labels)


def test_volume_outputs_identical_for_any_chunking(tmp_path, volume_file):
    cfg = {"input": str(volume_file), "formats": ["zarr"],
           "features": ["bands", {"texture": {"stat": "gaussian", "sigma_units": 1.0}}],
           "postprocess": {"majority": {"radius": [1, 1, 2]},
                           "segments": {"connectivity": 6},
                           "min_size": 5}}
    a = _run(tmp_path, "a", chunks=16, **cfg)
    b = _run(tmp_path, "b", chunks=64, **cfg)
    for name in ("labels", "segments"):
        za = zarr.open_array(str(a.output / f"{name}.zarr"), path=name, mode="r")[...]
        zb = zarr.open_array(str(b.output / f"{name}.zarr"), path=name, mode="r")[...]
        np.testing.assert_array_equal(za, zb)
    # integer labels for xarray, as written
    import xarray as xr

    ds = xr.open_zarr(a.output / "labels.zarr")
    assert ds.labels.dtype == np.uint8 and ds.labels.dims == ("z", "y", "x")
    pd.testing.assert_frame_equal(pd.read_parquet(a.output / "segments.parquet"),
                                  pd.read_parquet(b.output / "segments.parquet"))


def test_mask_file_on_the_volume_grid(tmp_path, volume_file):
    vol = _volume()
    mask = np.zeros(vol.shape, np.uint8)
    mask[:, 8:30, 10:40] = 1
    mpath = _nifti(tmp_path / "mask.nii.gz", mask)
    res = _run(tmp_path, "m", input=str(volume_file), mask=str(mpath), chunks=16,
               formats=["nifti"])
    labels, _ = _read_nifti(res.output / "labels.nii.gz")
    assert (labels[mask == 0] == 0).all() and (labels[mask == 1] > 0).all()
    report = json.loads((res.output / "report.json").read_text())
    # chunks of 16 voxels: those with no voxel in the box are skipped
    assert report["mask"]["kind"] == "file" and report["mask"]["chunks_skipped"] > 0
    assert report["valid_pixels"] == int(mask.sum())


def test_masked_out_chunks_never_read(tmp_path):
    """A chunk the mask leaves out is never computed (nor read)."""
    import threading

    import dask
    import dask.array as da
    import xarray as xr

    from pipeline.io._user_mask import UserMask, apply_mask

    read, lock = [], threading.Lock()

    def reader(block, block_info=None):
        with lock:
            read.append(tuple(block_info[0]["chunk-location"]))
        return np.ones(block.shape, np.float32)

    source = da.zeros((2, 8, 8), chunks=(2, 4, 4), dtype=np.float32)
    feats = xr.DataArray(source.map_blocks(reader, dtype=np.float32),
                         dims=("feature", "y", "x"))
    m = np.zeros((8, 8), bool)
    m[:4, :4] = True
    mask = UserMask(da.from_array(m, chunks=4), "file",
                    np.array([[True, False], [False, False]]))
    (out,) = dask.compute(apply_mask(feats, mask).data, scheduler="threads")
    assert read == [(0, 0, 0)]
    assert np.isnan(out[:, 4:, :]).all() and np.isnan(out[:, :, 4:]).all()
    assert (out[:, :4, :4] == 1).all()


def _slide(path, tissue_box=(slice(200, 420), slice(300, 700))):
    rgb = np.full((768, 1024, 3), 235, np.uint8)
    rng = np.random.default_rng(1)
    tissue = np.zeros(rgb.shape[:2], bool)
    tissue[tissue_box] = True
    rgb[tissue] = [150, 60, 140]
    rgb[tissue & (rng.random(rgb.shape[:2]) < 0.3)] = [90, 40, 160]
    with tifffile.TiffWriter(path, bigtiff=True) as t:
        md = {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
              "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
        t.write(rgb, subifds=2, tile=(128, 128), photometric="rgb", compression="zlib",
                metadata=md)
        for lvl in (1, 2):
            t.write(rgb[:: 2**lvl, :: 2**lvl], subfiletype=1, tile=(128, 128),
                    photometric="rgb", compression="zlib")
    return path, tissue


def test_slide_with_otsu_mask_skips_glass_and_writes_ome_zarr(tmp_path):
    path, tissue = _slide(tmp_path / "slide.ome.tif")
    res = _run(tmp_path, "s", input=str(path), mask="otsu", chunks=128,
               features=["hed", "lab"], cluster={"method": "kmeans", "k": 2, "seed": 0})
    assert sorted(p.name for p in res.output.iterdir()) == [
        "labels.ome.zarr", "model.json", "report.json"]
    g = zarr.open_group(str(res.output / "labels.ome.zarr"), mode="r")
    ms = g.attrs["multiscales"][0]
    assert [(a["name"], a.get("unit")) for a in ms["axes"]] == [
        ("y", "micrometer"), ("x", "micrometer")]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.25, 0.25]
    lab = np.asarray(g[ms["datasets"][0]["path"]])
    assert (lab[~tissue] == 0).mean() > 0.97 and (lab[tissue] > 0).mean() > 0.97
    report = json.loads((res.output / "report.json").read_text())
    assert report["mask"]["foreground"] == "darker"
    assert report["mask"]["chunks_total"] == 48 and report["mask"]["chunks_skipped"] >= 30
    assert report["area_unit"] == "um^2" and report["pixel_area"] == pytest.approx(0.0625)


def test_slide_level_and_ngff_05(tmp_path):
    path, _ = _slide(tmp_path / "slide.ome.tif")
    res = _run(tmp_path, "l", input=str(path), input_level=1, ngff_version=0.5,
               cluster={"method": "kmeans", "k": 2, "seed": 0})
    g = zarr.open_group(str(res.output / "labels.ome.zarr"), mode="r")
    ome = g.attrs["ome"]
    assert ome["version"] == "0.5"
    ds0 = ome["multiscales"][0]["datasets"][0]
    assert ds0["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert g[ds0["path"]].shape == (384, 512)


def test_ome_zarr_04_input_keeps_its_version(tmp_path):
    from ome_zarr_models import open_ome_zarr

    img = (_volume((12, 32, 40)) + 100).astype(np.uint16)[None]  # (c, z, y, x)
    g = zarr.open_group(str(tmp_path / "in.ome.zarr"), mode="w", zarr_format=2)
    g.create_array("0", data=img, chunks=(1, 6, 16, 16))
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale",
                                                     "scale": [1, 2.0, 0.5, 0.5]}]}]}]
    res = _run(tmp_path, "o", input=str(tmp_path / "in.ome.zarr"),
               postprocess={"segments": True})
    for name in ("labels", "segments"):
        out = zarr.open_group(str(res.output / f"{name}.ome.zarr"), mode="r")
        open_ome_zarr(out)  # valid NGFF
        assert out.attrs["multiscales"][0]["version"] == "0.4"
    assert json.loads((res.output / "report.json").read_text())["segments"][
        "connectivity"] == 26


def test_dicom_series_to_nifti_in_ras(tmp_path):
    import copy

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = tmp_path / "series"
    series.mkdir()
    rng = np.random.default_rng(0)
    for k, z in enumerate([10.0, 12.5, 15.0, 17.5, 20.0, 22.5]):
        ds = copy.deepcopy(base)
        ds.ImagePositionPatient = [-158.0, -179.0, z]
        ds.InstanceNumber = 6 - k  # the wrong order: slices sort by position
        ds.SOPInstanceUID = generate_uid()
        px = (rng.integers(0, 3, (ds.Rows, ds.Columns)) * 500).astype(np.int16)
        ds.PixelData = px.tobytes()
        ds.save_as(series / f"s{k}.dcm", enforce_file_format=True)
    res = _run(tmp_path, "ct", input=str(series), chunks=32,
               cluster={"method": "kmeans", "k": 3, "seed": 0})
    labels, img = _read_nifti(res.output / "labels.nii.gz")
    assert labels.shape == (6, base.Rows, base.Columns)
    # RAS+: the LPS x and y axes flipped; z steps 2.5 mm along the slice normal
    assert img.affine[0, 0] < 0 and img.affine[1, 1] < 0
    assert img.affine[2, 2] == pytest.approx(2.5)
    assert img.affine[2, 3] == pytest.approx(10.0)
    assert set(np.unique(labels)) == {1, 2, 3}


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _bad(tmp_path, cfg, match):
    out = tmp_path / "bad"
    cfg = {"output": str(out), "cluster": {"k": 2, "sample_size": 1000}, **cfg}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = _cli("run", p, "-q")
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and match in lines[0], res.output
    assert not out.exists() and not list(tmp_path.glob(".bad*"))


def test_bad_volume_inputs_exit_2_with_one_line(tmp_path, volume_file):
    broken = tmp_path / "broken.nii"
    broken.write_bytes(b"\x00" * 400)
    _bad(tmp_path, {"input": str(broken)}, "broken.nii")
    _bad(tmp_path, {"input": str(volume_file), "formats": ["cog"]},
         "formats: cog cannot hold a volume")
    _bad(tmp_path, {"input": str(volume_file), "postprocess": {"polygons": True}},
         "postprocess.polygons")
    _bad(tmp_path, {"input": str(volume_file), "postprocess": {"segments":
                                                               {"connectivity": 8}}},
         "postprocess.segments.connectivity: 8")
    _bad(tmp_path, {"input": str(volume_file), "input_level": 1}, "input_level")
    other = _nifti(tmp_path / "other.nii.gz", np.ones((5, 6, 7), np.uint8))
    _bad(tmp_path, {"input": str(volume_file), "mask": str(other)}, "mask:")
    _bad(tmp_path, {"input": str(volume_file), "postprocess": {"min_size": {"area": 3}}},
         "postprocess.min_size")
    _bad(tmp_path, {"input": str(volume_file), "postprocess": {"majority":
                                                               {"radius": [1, 1]}}},
         "postprocess.majority.radius: 2 radii")


def test_bad_image_inputs_exit_2_with_one_line(tmp_path, scene):
    _bad(tmp_path, {"input": str(scene.path), "postprocess": {"segments":
                                                              {"connectivity": 26}}},
         "connectivity: 26 is not defined on an image")
    g = zarr.open_group(str(tmp_path / "t.ome.zarr"), mode="w", zarr_format=2)
    g.create_array("0", data=np.zeros((2, 1, 8, 8), np.uint16), chunks=(1, 1, 8, 8))
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 1, 1]}]}]}]
    _bad(tmp_path, {"input": str(tmp_path / "t.ome.zarr")}, "timepoint")


@pytest.mark.cluster
def test_volume_on_a_local_cluster_equals_threads(tmp_path, volume_file):
    cfg = {"input": str(volume_file), "chunks": 16, "formats": ["nifti", "zarr"],
           "postprocess": {"segments": {"connectivity": 18}}}
    a = _run(tmp_path, "t", **cfg)
    b = _run(tmp_path, "p", compute={"scheduler": "processes", "n_workers": 2}, **cfg)
    for name in ("labels", "segments"):
        np.testing.assert_array_equal(_read_nifti(a.output / f"{name}.nii.gz")[0],
                                      _read_nifti(b.output / f"{name}.nii.gz")[0])


def test_a_model_fitted_on_one_volume_labels_another(tmp_path, volume_file):
    from pipeline.runner import predict_model

    other = _nifti(tmp_path / "other.nii.gz", _volume(seed=11))
    fitted = _run(tmp_path, "fit", input=str(volume_file), formats=["nifti"])
    cfg = parse_config({"input": str(other), "output": str(tmp_path / "pred"),
                        "features": ["bands"], "formats": ["nifti"]}, "pred")
    res = predict_model(cfg, fitted.output / "model.json")
    assert res.report["model_source"] == "loaded"
    labels, img = _read_nifti(res.output / "labels.nii.gz")
    # the same intensities get the same classes: the saved centroids, not a refit
    vol = _volume(seed=11).astype(np.float64)
    centres = np.asarray(fitted.model.class_centres())[:, 0]
    expected = np.abs(vol[..., None] - centres).argmin(-1) + 1
    assert (labels == expected).mean() > 0.999


def test_cli_names_a_volume_in_voxels(tmp_path, volume_file):
    p = tmp_path / "vol.yaml"
    p.write_text(yaml.safe_dump({"input": str(volume_file), "output": str(tmp_path / "o"),
                                 "formats": ["nifti"],
                                 "cluster": {"k": 2, "seed": 0, "sample_size": 2000}}))
    res = _cli("run", p)
    assert res.exit_code == 0, res.output
    # the volume is 20 x 40 x 48 (z, y, x): width, height, then depth
    assert "segmented 48 x 40 x 20 voxels into 2 classes" in res.output
