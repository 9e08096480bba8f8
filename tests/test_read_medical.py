"""Readers of medical and microscopy inputs: NIfTI, DICOM, OME-TIFF/WSI, OME-Zarr, Zarr."""

from __future__ import annotations

import copy
import pickle
import random
import time

import dask.array as dska
import numpy as np
import pytest
import xarray as xr

from pipeline.errors import InputError
from pipeline.io import Geometry, open_image, open_with_geometry, read_overview
from pipeline.testing import write_raster

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

RNG = np.random.default_rng(7)


def _lazy(da: xr.DataArray) -> None:
    assert isinstance(da.data, dska.Array)
    assert len(da.chunks[0]) == 1  # the band axis is one chunk
    assert isinstance(da.attrs["geometry"], Geometry)
    assert da.name == "image"


# --- NIfTI -------------------------------------------------------------------------------

AFFINE = np.array([[0.8, 0.0, 0.1, -10.0], [0.0, 0.9, 0.0, -20.0],
                   [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]])


def _nifti(path, data, *, slope=None, inter=None, version=1):
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(data, AFFINE)
    img.set_qform(np.diag([0.8, 0.9, 2.5, 1.0]), code=1)
    img.set_sform(AFFINE, code=2)
    img.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return str(path)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_3d_values_affine_codes_zooms_units(tmp_path, name):
    data = RNG.integers(-500, 500, (40, 30, 20), dtype=np.int16)
    path = _nifti(tmp_path / name, data, slope=2.0, inter=-3.0)
    da, geom = open_with_geometry(path, chunks=16)
    _lazy(da)
    assert da.dims == ("band", "z", "y", "x") and da.shape == (1, 20, 30, 40)
    assert da.chunks[1:] == ((16, 4), (16, 14), (16, 16, 8))
    assert da.dtype == np.float32  # scaled
    np.testing.assert_allclose(da.values[0], nib.load(path).get_fdata().transpose(2, 1, 0))
    assert da.attrs["source"] == path and da.attrs["geometry"] is geom
    assert geom.kind == "nifti" and geom.dims == ("z", "y", "x") and geom.shape == (20, 30, 40)
    np.testing.assert_array_equal(geom.affine, nib.load(path).affine)
    np.testing.assert_allclose(geom.affine, AFFINE)
    assert geom.extra["sform_code"] == 2 and geom.extra["qform_code"] == 1
    np.testing.assert_allclose(geom.extra["qform"], np.diag([0.8, 0.9, 2.5, 1.0]))
    assert geom.extra["nifti_version"] == 1
    assert geom.extra["xyzt_units"] == nib.load(path).header["xyzt_units"]
    np.testing.assert_allclose(geom.spacing, (2.5, 0.9, 0.8), rtol=1e-6)  # zooms, z y x
    assert geom.units == ("millimeter",) * 3
    assert da.rio.nodata is None


def test_nifti_integer_shift_keeps_integers_and_gz_reads_slabs(tmp_path):
    data = RNG.integers(0, 200, (24, 20, 33), dtype=np.uint8)
    path = _nifti(tmp_path / "s.nii.gz", data, slope=1.0, inter=-100.0)
    da = open_image(path, chunks=16)
    assert da.dtype == np.int16  # 0..255 - 100 fits int16, not uint8
    np.testing.assert_array_equal(da.values[0], data.transpose(2, 1, 0).astype(int) - 100)
    # the reads are z-slabs of full x, y extent (gzip has no random access)
    graph = da.data.__dask_graph__()
    reads = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("array-")
             and "rechunk" not in str(k[0])]
    assert len(reads) == 3  # ceil(33 / 16) slabs


def test_nifti_4d_bands_version_2_and_2d(tmp_path):
    d4 = RNG.random((10, 12, 8, 3)).astype(np.float32)
    da, geom = open_with_geometry(_nifti(tmp_path / "b.nii.gz", d4, version=2))
    assert da.shape == (3, 8, 12, 10) and da.chunks[0] == (3,)
    np.testing.assert_array_equal(da.values, d4.transpose(3, 2, 1, 0))
    assert geom.extra["nifti_version"] == 2 and geom.shape == (8, 12, 10)
    d2 = RNG.integers(-100, 100, (50, 40), dtype=np.int8)
    img = nib.Nifti1Image(d2, np.eye(4))
    nib.save(img, tmp_path / "c.nii")
    da, geom = open_with_geometry(tmp_path / "c.nii")
    assert da.dims == ("band", "y", "x") and da.shape == (1, 40, 50)
    assert da.dtype == np.int16  # int8 widened
    np.testing.assert_array_equal(da.values[0], d2.T)
    assert geom.dims == ("y", "x") and geom.units == (None, None)  # units unknown


def test_nifti_is_lazy_big_sparse_file_not_read(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 1024))
    hdr.set_data_dtype(np.uint16)  # a 2 GiB volume, sparse on disk
    path = tmp_path / "big.nii"
    with open(path, "wb") as f:
        hdr.write_to(f)
        f.truncate(int(hdr.get_data_offset()) + 2 * 1024**3)
    t0 = time.perf_counter()
    da, geom = open_with_geometry(path)
    assert time.perf_counter() - t0 < 2.0
    assert da.chunks[1:] == ((128,) * 8,) * 3  # the volume default
    assert da.data.npartitions == 512
    assert int(da[0, 500:502, 3:5, 7:9].sum()) == 0  # one chunk read, not the file
    blob = pickle.dumps(da.data)  # picklable graph (process schedulers), no data in it
    assert len(blob) < 10**6


@pytest.mark.parametrize("content", [b"\x00" * 10, b"not a nifti" * 100])
def test_nifti_broken_header(tmp_path, content):
    path = tmp_path / "broken.nii"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"broken\.nii: NIfTI header is unreadable.*"
                                         r"expected a NIfTI-1/2 file"):
        open_image(path)


def test_nifti_truncated_data(tmp_path):
    path = _nifti(tmp_path / "t.nii", np.ones((20, 20, 20), np.float32))
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(InputError, match="expected a complete NIfTI file"):
        open_image(path)


def test_nifti_level_beyond(tmp_path):
    path = _nifti(tmp_path / "l.nii", np.ones((4, 4, 4), np.float32))
    with pytest.raises(InputError, match="input_level 1"):
        open_image(path, level=1)


# --- DICOM -------------------------------------------------------------------------------


def _ct():
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def _series(directory, positions, *, base=None, series_uid=None, shuffle=True,
            slope=None, inter=None, prefix="img"):
    """Write one CT slice a position, files in shuffled order, InstanceNumbers wrong."""
    from pydicom.uid import generate_uid

    base = base or _ct()
    directory.mkdir(exist_ok=True)
    names = list(range(len(positions)))
    if shuffle:
        random.Random(3).shuffle(names)
    planes = []
    for k, z in enumerate(positions):
        ds = copy.deepcopy(base)
        ds.ImagePositionPatient = [-158.0, -179.0, float(z)]
        ds.InstanceNumber = (7 * k) % 5 + 1  # not the order of the slices
        ds.SOPInstanceUID = generate_uid()
        if series_uid is not None:
            ds.SeriesInstanceUID = series_uid
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, inter
        px = RNG.integers(0, 2000, (ds.Rows, ds.Columns), dtype=np.int16)
        planes.append(px)
        ds.PixelData = px.tobytes()
        ds.save_as(directory / f"{prefix}{names[k]:03d}.dcm", enforce_file_format=True)
    return np.stack(planes)


def test_dicom_series_sorted_by_position_rescaled_spacing(tmp_path):
    d = tmp_path / "ct"
    positions = [-75.0 + 2.5 * k for k in range(7)]
    planes = _series(d, positions)
    (d / "notes.txt").write_text("not DICOM")  # ignored
    da, geom = open_with_geometry(d, chunks=64)
    _lazy(da)
    assert da.dims == ("band", "z", "y", "x") and da.shape == (1, 7, 128, 128)
    assert da.chunks[1:] == ((7,), (64, 64), (64, 64))
    assert np.issubdtype(da.dtype, np.integer)  # slope 1, intercept -1024
    np.testing.assert_array_equal(da.values[0], planes.astype(np.int32) - 1024)
    assert geom.kind == "dicom" and geom.units == ("millimeter",) * 3
    np.testing.assert_allclose(geom.spacing, (2.5, 0.661468, 0.661468))  # not SliceThickness
    # RAS+: the LPS affine with its first two rows negated (dcm2niix's convention)
    np.testing.assert_allclose(geom.affine, [[-0.661468, 0, 0, 158.0],
                                             [0, -0.661468, 0, 179.0],
                                             [0, 0, 2.5, -75.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(geom.world(np.array([[6, 0, 0]]))[0, 0], -60.0)  # S of z=6
    # a list of files, in any order, gives the same volume
    files = sorted(str(p) for p in d.glob("*.dcm"))[::-1]
    np.testing.assert_array_equal(open_image(files).values, da.values)


def test_dicom_float_rescale_and_descending_normal(tmp_path):
    d = tmp_path / "mr"
    planes = _series(d, [10.0, 7.0, 4.0, 1.0], slope=0.5, inter=1.25)
    da, geom = open_with_geometry(d)
    assert da.dtype == np.float32
    np.testing.assert_allclose(da.values[0], planes[::-1] * 0.5 + 1.25)  # sorted ascending
    assert geom.spacing[0] == pytest.approx(3.0)
    assert geom.affine[2, 3] == pytest.approx(1.0)


def test_dicom_multiframe(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _ct()
    frames = RNG.integers(0, 1000, (4, ds.Rows, ds.Columns), dtype=np.int16)
    order = [2, 0, 3, 1]  # frames stored out of order
    ds.NumberOfFrames = 4
    ds.PixelData = frames[order].tobytes()
    shared = Dataset()
    ori, meas = Dataset(), Dataset()
    ori.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    meas.PixelSpacing = [0.5, 0.75]
    shared.PlaneOrientationSequence = Sequence([ori])
    shared.PixelMeasuresSequence = Sequence([meas])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        item.PlanePositionSequence = Sequence([pos])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    del ds.ImagePositionPatient, ds.PixelSpacing
    ds.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    da, geom = open_with_geometry(tmp_path / "mf.dcm")
    assert da.shape == (1, 4, ds.Rows, ds.Columns)
    np.testing.assert_array_equal(da.values[0], frames.astype(np.int32) - 1024)
    assert geom.spacing == pytest.approx((3.0, 0.5, 0.75))


def test_dicom_two_series(tmp_path):
    d = tmp_path / "two"
    _series(d, [0.0, 2.0, 4.0], series_uid="1.2.3.4")
    _series(d, [6.0, 8.0], series_uid="1.2.3.5", prefix="other")  # same directory
    with pytest.raises(InputError, match=r"two: files of 2 series .*expected the files of "
                                         r"one series"):
        open_image(d)


def test_dicom_missing_slice(tmp_path):
    d = tmp_path / "gap"
    _series(d, [0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.raises(InputError, match=r"a slice is missing between 4\.000 and 8\.000"):
        open_image(d)


def test_dicom_irregular_spacing(tmp_path):
    d = tmp_path / "irregular"
    _series(d, [0.0, 2.0, 4.0, 6.2, 8.2])
    with pytest.raises(InputError, match="irregular slice spacing"):
        open_image(d)


def test_dicom_differing_rows_and_no_dicom(tmp_path):
    d = tmp_path / "rows"
    _series(d, [0.0, 2.0, 4.0])
    from pydicom.data import get_testdata_file

    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # 64 x 64
    mr.SeriesInstanceUID = _ct().SeriesInstanceUID
    mr.save_as(d / "mr.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="differ in Rows"):
        open_image(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no DICOM image found"):
        open_image(empty)


# --- OME-TIFF and whole-slide TIFF -------------------------------------------------------


def _ome_pyramid(path, rgb, *, levels=3, tile=256):
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        opts = {"tile": (tile, tile), "photometric": "rgb"}
        tw.write(rgb, subifds=levels - 1, metadata={
            "axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": 0.3, "PhysicalSizeYUnit": "µm"}, **opts)
        for lvl in range(1, levels):
            f = 2 ** lvl
            tw.write(rgb[::f, ::f], subfiletype=1, **opts)
    return str(path)


def test_ome_tiff_pyramid_levels_shapes_spacing(tmp_path):
    rgb = RNG.integers(0, 255, (1000, 1200, 3), dtype=np.uint8)
    path = _ome_pyramid(tmp_path / "slide.ome.tif", rgb)
    da, geom = open_with_geometry(path)
    _lazy(da)
    assert da.dims == ("band", "y", "x") and da.shape == (3, 1000, 1200)
    assert da.chunks[2] == (1024, 176)  # a multiple of the 256 tiles near 1024
    assert geom.kind == "tiff" and geom.extra["levels"] == 3 and geom.extra["level"] == 0
    assert geom.spacing == pytest.approx((0.3, 0.25))
    assert geom.units == ("micrometer", "micrometer")
    np.testing.assert_array_equal(da[:, 300:700, 500:900].values,
                                  rgb[300:700, 500:900].transpose(2, 0, 1))
    one, g1 = open_with_geometry(path, level=1, chunks=128)
    assert one.shape == (3, 500, 600) and one.chunks[1][0] == 128
    assert g1.spacing == pytest.approx((0.6, 0.5)) and g1.extra["level"] == 1
    np.testing.assert_array_equal(one.values, rgb[::2, ::2].transpose(2, 0, 1))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(one)).values, one.values)
    with pytest.raises(InputError, match=r"input_level 3 is beyond the 3 pyramid level"):
        open_image(path, level=3)


def test_read_overview_uses_a_coarse_level(tmp_path, monkeypatch):
    rgb = RNG.integers(0, 255, (1000, 1200, 3), dtype=np.uint8)
    path = _ome_pyramid(tmp_path / "slide.ome.tif", rgb)
    from pipeline.io import _ome

    opened = []
    original = _ome._TiffLevel.__init__

    def spy(self, path, level, *args, **kwargs):
        opened.append(level)
        original(self, path, level, *args, **kwargs)

    monkeypatch.setattr(_ome._TiffLevel, "__init__", spy)
    small, factors = read_overview(path, 256)
    assert small.shape == (3, 250, 300) and factors == (4.0, 4.0)
    np.testing.assert_array_equal(small, rgb[::4, ::4].transpose(2, 0, 1))
    assert opened[-1] == 2  # the coarsest level >= 256 on its long side
    small, factors = read_overview(path, 400, level=1)  # relative to level 1
    assert small.shape == (3, 500, 600) and factors == (1.0, 1.0)
    small, factors = read_overview(path, 100)  # coarsest level, then strided
    assert small.shape == (3, 84, 100) and factors == (12.0, 12.0)


def test_ome_tiff_stack_channels_and_timepoints(tmp_path):
    stack = RNG.integers(0, 4000, (2, 5, 64, 80), dtype=np.uint16)  # C Z Y X
    tifffile.imwrite(tmp_path / "s.ome.tif", stack, metadata={
        "axes": "CZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0})
    da, geom = open_with_geometry(tmp_path / "s.ome.tif")
    assert da.dims == ("band", "z", "y", "x")
    np.testing.assert_array_equal(da.values, stack)
    assert geom.spacing == pytest.approx((2.0, 0.5, 0.5))
    tifffile.imwrite(tmp_path / "t.ome.tif", np.zeros((3, 4, 32, 32), np.uint8),
                     metadata={"axes": "TZYX"})
    with pytest.raises(InputError, match="several timepoints"):
        open_image(tmp_path / "t.ome.tif")


def test_svs_mpp_and_geotiff_keeps_gdal(tmp_path):
    rgb = RNG.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    desc = "Aperio Image Library v12.0.15\r\n400x300 [0,0 400x300] (256x256) JPEG/RGB Q=70" \
           "|AppMag = 20|MPP = 0.4990"
    with tifffile.TiffWriter(tmp_path / "a.svs") as tw:
        tw.write(rgb, tile=(256, 256), photometric="rgb", description=desc)
        tw.write(rgb[::4, ::4], tile=(256, 256), photometric="rgb", subfiletype=1)
    da, geom = open_with_geometry(tmp_path / "a.svs")
    assert geom.kind == "tiff" and geom.extra["format"] == "svs"
    assert geom.spacing == pytest.approx((0.499, 0.499))
    np.testing.assert_array_equal(da.values, rgb.transpose(2, 0, 1))
    # a GeoTIFF, even tiled with overviews, stays on GDAL's path (CRS, transform)
    p = write_raster(tmp_path / "geo.tif", np.ones((1, 64, 64), np.uint8), tile=16)
    img, g = open_with_geometry(p)
    assert g.kind == "gdal" and g.crs is not None and g.transform == img.rio.transform()
    assert "geometry" not in open_image(p).attrs  # GDAL rasters: only open_with_geometry's


# --- OME-Zarr and plain Zarr -------------------------------------------------------------

VOL = RNG.integers(0, 1000, (2, 16, 64, 48), dtype=np.uint16)  # c z y x


def _ome_zarr(path, fmt, *, data=VOL, axes="czyx", levels=3):
    g = zarr.open_group(path, mode="w", zarr_format=fmt)
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    meta = [{"name": a, "type": kinds[a], **({"unit": "micrometer"} if kinds[a] == "space"
                                              else {})} for a in axes]
    datasets = []
    for lvl in range(levels):
        f = 2 ** lvl
        sub = data[(Ellipsis, slice(None, None, f), slice(None, None, f))]
        kw = {"dimension_names": list(axes)} if fmt == 3 else {}
        a = g.create_array(str(lvl), shape=sub.shape, dtype=sub.dtype,
                           chunks=(1,) * (len(axes) - 3) + (8, 32, 32), **kw)
        a[:] = sub
        scale = [1.0] * (len(axes) - 3) + [2.0, 0.5 * f, 0.5 * f]
        datasets.append({"path": str(lvl), "coordinateTransformations": [
            {"type": "scale", "scale": scale},
            {"type": "translation", "translation": [0.0] * (len(axes) - 3) + [10.0, 5.0, 3.0]}]})
    ms = {"axes": meta, "datasets": datasets, "name": "vol"}
    if fmt == 2:
        g.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return g


@pytest.mark.parametrize(("fmt", "version"), [(2, "0.4"), (3, "0.5")])
def test_ome_zarr_levels_axes_units(tmp_path, fmt, version):
    from ome_zarr_models import v04, v05

    group = _ome_zarr(tmp_path / "v.zarr", fmt)
    (v04 if fmt == 2 else v05).Image.from_zarr(group)  # the fixture is valid NGFF
    da, geom = open_with_geometry(tmp_path / "v.zarr", chunks=32)
    _lazy(da)
    assert da.dims == ("band", "z", "y", "x") and da.shape == (2, 16, 64, 48)
    np.testing.assert_array_equal(da.values, VOL)
    assert geom.kind == "ome-zarr" and geom.extra["ngff_version"] == version
    assert geom.extra["levels"] == 3 and geom.units == ("micrometer",) * 3
    assert geom.spacing == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(geom.affine, [[0.5, 0, 0, 3], [0, 0.5, 0, 5],
                                                [0, 0, 2, 10], [0, 0, 0, 1]])
    one, g1 = open_with_geometry(tmp_path / "v.zarr", level=2)
    assert one.shape == (2, 16, 16, 12) and g1.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(one.values, VOL[:, :, ::4, ::4])
    with pytest.raises(InputError, match="input_level 3 is beyond the 3 pyramid"):
        open_image(tmp_path / "v.zarr", level=3)
    small, factors = read_overview(tmp_path / "v.zarr", 30)
    assert small.shape == (2, 16, 32, 24) and factors == (1.0, 2.0, 2.0)


def test_ome_zarr_timepoints_and_2d(tmp_path):
    _ome_zarr(tmp_path / "t.zarr", 3, data=np.zeros((3, 2, 16, 64, 48), np.uint8),
              axes="tczyx", levels=1)
    with pytest.raises(InputError, match="several timepoints"):
        open_image(tmp_path / "t.zarr")
    _ome_zarr(tmp_path / "t1.zarr", 2, data=VOL[None, :1], axes="tczyx", levels=1)
    da = open_image(tmp_path / "t1.zarr")  # one timepoint: dropped
    assert da.shape == (1, 16, 64, 48)
    g = zarr.open_group(tmp_path / "p.zarr", mode="w", zarr_format=3)
    g.create_array("0", data=VOL[0, 0].astype(np.int8), dimension_names=["y", "x"])
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0]}]}]}]}
    da, geom = open_with_geometry(tmp_path / "p.zarr")
    assert da.dims == ("band", "y", "x") and da.dtype == np.int16
    assert geom.units == (None, None)


def test_plain_zarr_volumes(tmp_path):
    # a bare 4-D array, no dimension names: (band, z, y, x) assumed
    a = zarr.create_array(tmp_path / "bare.zarr", shape=VOL.shape, dtype=VOL.dtype,
                          chunks=(2, 8, 32, 32), zarr_format=3)
    a[:] = VOL
    da, geom = open_with_geometry(tmp_path / "bare.zarr")
    assert da.dims == ("band", "z", "y", "x") and geom.kind == "zarr"
    assert geom.spacing == (1.0, 1.0, 1.0) and geom.affine is not None
    np.testing.assert_array_equal(da.values, VOL)
    # an xarray dataset with a (band, z, y, x) variable
    xr.DataArray(VOL, dims=("band", "z", "y", "x")).to_dataset(name="image").to_zarr(
        tmp_path / "xa.zarr", zarr_format=3, consolidated=False)
    da, geom = open_with_geometry(tmp_path / "xa.zarr", chunks=16)
    assert da.shape == VOL.shape and da.chunks[1:] == ((16,), (16,) * 4, (16,) * 3)
    np.testing.assert_array_equal(da.values, VOL)
    # a v2 group of one 3-D array without dimension names: (z, y, x), one band
    g = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=2)
    g.create_array("vol", data=VOL[0])
    da, geom = open_with_geometry(tmp_path / "g.zarr")
    assert da.shape == (1, 16, 64, 48) and geom.dims == ("z", "y", "x")
    with pytest.raises(InputError, match="input_level"):
        open_image(tmp_path / "g.zarr", level=1)


# --- dispatch details --------------------------------------------------------------------


def test_gdal_overview_levels_and_read_overview(tmp_path):
    import rasterio
    from rasterio.enums import Resampling

    data = RNG.integers(0, 255, (2, 512, 640), dtype=np.uint8)
    p = write_raster(tmp_path / "geo.tif", data, tile=64)
    with rasterio.open(p, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.nearest)
    img, geom = open_with_geometry(p)
    assert geom.extra == {"levels": 3, "level": 0} and geom.spacing == (30.0, 30.0)
    one, g1 = open_with_geometry(p, level=1)
    assert one.shape == (2, 256, 320) and g1.spacing == (60.0, 60.0)
    assert one.rio.transform() == g1.transform and g1.crs == geom.crs
    np.testing.assert_array_equal(one.values, data[:, ::2, ::2])
    with pytest.raises(InputError, match="input_level 3 is beyond the 3 pyramid"):
        open_image(p, level=3)
    small, factors = read_overview(p, 128)
    assert small.shape == (2, 103, 128) and factors == pytest.approx((512 / 103, 5.0))
    with pytest.raises(ValueError, match="16"):
        open_with_geometry(p, chunks=8)


def test_nodata_override_and_glob_of_dicom_files(tmp_path):
    path = _nifti(tmp_path / "n.nii", np.ones((8, 8, 8), np.float32))
    assert open_image(path, nodata=0).rio.nodata == 0
    assert open_image(path).rio.nodata is None
    d = tmp_path / "ct"
    _series(d, [0.0, 1.5, 3.0])
    da = open_image(str(d / "*.dcm"))
    assert da.shape == (1, 3, 128, 128) and da.attrs["source"].endswith("(+2 files)")


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz",
                                  "anatomical.nii", "functional.nii"])
def test_nibabels_own_test_files(name):
    """Real files nibabel ships: values, bands and affine as nibabel reads them."""
    import os

    path = os.path.join(os.path.dirname(nib.__file__), "tests", "data", name)
    ref = nib.load(path)
    arr, geometry = open_with_geometry(path, chunks=16)
    _lazy(arr)
    data = np.asarray(ref.dataobj)
    expected = data[..., None] if data.ndim == 3 else data  # (x, y, z, band)
    np.testing.assert_allclose(arr.values, expected.transpose(3, 2, 1, 0), rtol=1e-6)
    np.testing.assert_allclose(geometry.affine, ref.affine)
    assert geometry.spacing == pytest.approx(tuple(ref.header.get_zooms()[:3][::-1]))
