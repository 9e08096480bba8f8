"""Output formats: the sink registry, NIfTI and OME-Zarr sinks."""

from __future__ import annotations

import itertools
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import ome_zarr_models
import pytest
import zarr

from pipeline.io._geometry import Geometry
from pipeline.io._omezarr_sink import OmeZarrSink, pyramid_steps
from pipeline.io._sinks import (
    SINKS,
    Sink,
    SinkSpec,
    encode_block,
    output_name,
    register_sink,
    sink_spec,
    stored_dtype,
)
from pipeline.io._write import palette

SHAPE = (6, 70, 90)  # z, y, x
CHUNKS = ((4, 2), (32, 32, 6), (40, 40, 10))
SPACING = (2.0, 0.5, 0.5)  # thick slices


def _affine(spacing=SPACING, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """Voxel (x, y, z) to world, axis-aligned, positive spacing."""
    a = np.diag([*spacing[::-1], 1.0])
    a[:3, 3] = origin
    return a


def _geometry(shape=SHAPE, *, affine=None, kind="nifti", units=("millimeter",) * 3,
              **extra) -> Geometry:
    n = len(shape)
    affine = _affine() if affine is None else affine
    return Geometry(("z", "y", "x")[-n:], shape, kind=kind, affine=affine,
                    units=units[-n:], extra=extra)


def _classes(shape=SHAPE, n_classes=5, dtype=np.uint8, nodata=255, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, n_classes, shape).astype(dtype)
    data[rng.random(shape) < 0.1] = nodata
    return data


def _regions(chunks):
    edges = [np.cumsum((0, *c)) for c in chunks]
    for index in itertools.product(*(range(len(c)) for c in chunks)):
        yield tuple(slice(int(e[i]), int(e[i + 1])) for e, i in zip(edges, index, strict=True))


def _write(sink: Sink, data: np.ndarray, chunks) -> list[Path]:
    """Write every block once, in shuffled order, from a thread pool; close."""
    regions = list(_regions(chunks))
    random.Random(1).shuffle(regions)

    def put(region):
        sink[region] = data[region].copy()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, regions))
    return sink.close()


def _make(fmt, directory, geometry, data, chunks, *, role="classes", nodata=255, **kw):
    return SINKS[fmt].factory(directory, "labels", geometry, shape=data.shape, chunks=chunks,
                              dtype=data.dtype, nodata=nodata, role=role, **kw)


def _encoded(data, nodata=255, dtype=np.uint8):
    return np.where(data == nodata, 0, data.astype(np.int64) + 1).astype(dtype)


# --- registry ---------------------------------------------------------------------------

def test_registry():
    assert {"cog", "zarr", "nifti", "ome-zarr"} <= set(SINKS)
    cog, zarr_, nifti, ome = (SINKS[k] for k in ("cog", "zarr", "nifti", "ome-zarr"))
    assert (cog.suffix, cog.volumes, cog.images, cog.factory) == (".tif", False, True, None)
    assert (zarr_.suffix, zarr_.volumes, zarr_.images, zarr_.factory) == (".zarr", True, True,
                                                                          None)
    assert (nifti.suffix, nifti.volumes, nifti.images) == (".nii.gz", True, True)
    assert (ome.suffix, ome.volumes, ome.images) == (".ome.zarr", True, True)
    assert callable(nifti.factory) and callable(ome.factory)
    assert not cog.accepts(3) and cog.accepts(2) and nifti.accepts(3)
    assert output_name("nifti", "labels") == "labels.nii.gz"
    assert output_name("ome-zarr", "confidence") == "confidence.ome.zarr"
    assert output_name("cog", "labels") == "labels.tif"
    assert output_name("zarr", "segments") == "segments.zarr"
    assert sink_spec("nifti") is nifti
    with pytest.raises(ValueError, match="unknown output format 'png'"):
        output_name("png", "labels")


def test_register_sink(monkeypatch):
    monkeypatch.setattr("pipeline.io._sinks.SINKS", dict(SINKS))
    from pipeline.io import _sinks

    spec = SinkSpec("npy", ".npy", volumes=True, images=True, factory=None)
    register_sink(spec)
    register_sink(spec)  # the same spec again: nothing happens
    assert _sinks.SINKS["npy"] is spec and output_name("npy", "x") == "x.npy"
    other = SinkSpec("npy", ".npz", volumes=True, images=True, factory=None)
    with pytest.raises(ValueError, match="already registered"):
        register_sink(other)
    register_sink(other, replace=True)
    assert output_name("npy", "x") == "x.npz"
    with pytest.raises(ValueError, match="suffix"):
        register_sink(SinkSpec("bad", "npy", volumes=True, images=True, factory=None))
    with pytest.raises(ValueError, match="neither"):
        register_sink(SinkSpec("bad", ".b", volumes=False, images=False, factory=None))
    assert "npy" not in SINKS  # the module's registry was patched, not changed


def test_encoding():
    block = np.array([0, 3, 254, 255], np.uint8)
    assert encode_block(block, "classes", 255, np.dtype(np.uint8)).tolist() == [1, 4, 255, 0]
    wide = np.array([0, 300, 65535], np.uint16)
    assert encode_block(wide, "classes", 65535, np.dtype(np.uint16)).tolist() == [1, 301, 0]
    assert encode_block(np.array([0, 7], np.uint16), "classes", 65535,
                        np.dtype(np.uint8)).tolist() == [1, 8]
    ids = np.array([0, 2**40], np.uint64)
    assert encode_block(ids, "ids", 0, np.dtype(np.uint64)) is ids
    assert stored_dtype("classes", np.uint8, 255) == np.uint8
    assert stored_dtype("classes", np.uint16, 256) == np.uint16
    assert stored_dtype("classes", np.uint16, 12) == np.uint8
    assert stored_dtype("ids", np.uint32) == np.uint32
    assert stored_dtype("values", np.uint8) == np.uint8
    with pytest.raises(ValueError, match="role"):
        stored_dtype("weights", np.uint8)


# --- NIfTI ------------------------------------------------------------------------------

def test_nifti_classes_round_trip(tmp_path):
    data = _classes()
    affine = _affine()
    affine[0, 0] = -0.5  # radiological x, as many NIfTIs have it
    geometry = _geometry(affine=affine, sform_code=1, qform_code="scanner", xyzt_units=10)
    sink = _make("nifti", tmp_path, geometry, data, CHUNKS, n_classes=5)
    assert (tmp_path / ".labels.nifti.npy").exists()
    assert _write(sink, data, CHUNKS) == [tmp_path / "labels.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]  # map removed

    img = nib.load(tmp_path / "labels.nii.gz")
    hdr = img.header
    assert img.shape == SHAPE[::-1]  # (x, y, z)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(hdr.get_sform(), affine)
    np.testing.assert_allclose(hdr.get_qform(), affine, atol=1e-6)
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    np.testing.assert_allclose(hdr.get_zooms(), (0.5, 0.5, 2.0))
    assert hdr.get_xyzt_units() == ("mm", "sec")  # 10 = mm | sec, as the input had it
    assert hdr.get_intent()[0] == "label"
    assert b"value = class + 1, 0 = no label" in hdr["descrip"].tobytes()
    out = np.asarray(img.dataobj)
    np.testing.assert_array_equal(out, _encoded(data).transpose(2, 1, 0))
    assert (out[data.transpose(2, 1, 0) == 255] == 0).all()


def test_nifti_ids_values_and_defaults(tmp_path):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 2**31, SHAPE).astype(np.uint32)
    ids[0] = 0
    geometry = _geometry(units=("micrometer",) * 3, kind="ome-zarr")
    (tmp_path / "ids").mkdir()
    _write(_make("nifti", tmp_path / "ids", geometry, ids, CHUNKS, role="ids", nodata=0),
           ids, CHUNKS)
    img = nib.load(tmp_path / "ids" / "labels.nii.gz")
    assert img.get_data_dtype() == np.uint32
    np.testing.assert_array_equal(np.asarray(img.dataobj), ids.transpose(2, 1, 0))
    # no codes in the geometry: nibabel's default for a new image (sform 2, qform 0)
    assert int(img.header["sform_code"]) == 2 and int(img.header["qform_code"]) == 0
    np.testing.assert_allclose(img.affine, _affine())
    assert img.header.get_xyzt_units()[0] == "micron"

    big = np.zeros((2, 3, 4), np.uint64)
    big[1, 2, 3] = 2**40
    (tmp_path / "big").mkdir()
    _write(_make("nifti", tmp_path / "big", _geometry(big.shape), big, ((2,), (3,), (4,)),
                 role="ids", nodata=0), big, ((2,), (3,), (4,)))
    img = nib.load(tmp_path / "big" / "labels.nii.gz")
    assert img.get_data_dtype() == np.int64  # no uint64 in most NIfTI readers
    assert np.asarray(img.dataobj)[3, 2, 1] == 2**40

    values = rng.integers(0, 101, SHAPE).astype(np.uint8)
    values[:, :3] = 255
    (tmp_path / "values").mkdir()
    dicom = _geometry(kind="dicom")
    _write(_make("nifti", tmp_path / "values", dicom, values, CHUNKS, role="values"),
           values, CHUNKS)
    img = nib.load(tmp_path / "values" / "labels.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), values.transpose(2, 1, 0))
    assert img.header.get_intent()[0] == "none"
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1


def test_nifti_image_2d(tmp_path):
    data = _classes((50, 37), n_classes=3)
    chunks = ((32, 18), (16, 16, 5))
    affine = np.diag([0.25, 0.5, 1.0, 1.0])
    geometry = Geometry(("y", "x"), data.shape, kind="tiff", affine=affine,
                        units=("micrometer", "micrometer"))
    _write(_make("nifti", tmp_path, geometry, data, chunks, n_classes=3), data, chunks)
    img = nib.load(tmp_path / "labels.nii.gz")
    assert img.shape == (37, 50, 1)  # (x, y, 1)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0], _encoded(data).T)
    np.testing.assert_allclose(img.header.get_zooms(), (0.25, 0.5, 1.0))
    np.testing.assert_allclose(img.affine, affine)


def test_nifti_abort(tmp_path):
    data = _classes()
    sink = _make("nifti", tmp_path, _geometry(), data, CHUNKS, n_classes=5)
    region = next(_regions(CHUNKS))
    sink[region] = data[region]
    sink.abort()
    assert list(tmp_path.iterdir()) == []


# --- OME-Zarr ---------------------------------------------------------------------------

def _ome(path: Path):
    """Validate with ome-zarr-models; return (model, multiscale, image-label or None)."""
    model = ome_zarr_models.open_ome_zarr(zarr.open_group(str(path), mode="r"))
    attrs = model.attributes
    ome = getattr(attrs, "ome", attrs)  # 0.5: under "ome"
    return model, ome.multiscales[0], getattr(ome, "image_label", None)


def _scales(multiscale):
    return [list(d.coordinateTransformations[0].scale) for d in multiscale.datasets]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_omezarr_classes(tmp_path, version):
    data = _classes()
    geometry = _geometry(ngff_version=version)
    names = ["water", "", "forest"]
    sink = _make("ome-zarr", tmp_path, geometry, data, CHUNKS, n_classes=5, class_names=names)
    assert _write(sink, data, CHUNKS) == [tmp_path / "labels.ome.zarr"]
    path = tmp_path / "labels.ome.zarr"

    model, ms, label = _ome(path)
    expected_model = (ome_zarr_models.v04 if version == "0.4" else ome_zarr_models.v05)
    assert isinstance(model, expected_model.image_label.ImageLabel)
    assert [(a.name, a.type, a.unit) for a in ms.axes] == [
        (d, "space", "millimeter") for d in "zyx"]
    # anisotropic z: only y and x are halved (z spacing 2 > y spacing 1 after the step)
    assert _scales(ms) == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0]]
    translation = ms.datasets[0].coordinateTransformations[1].translation
    assert list(translation) == [30.0, -20.0, 10.0]  # world origin in (z, y, x) order

    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == (2 if version == "0.4" else 3)
    level0, level1 = group["0"], group["1"]
    assert level0.shape == SHAPE and level0.chunks == (4, 32, 40)  # the Dask chunks
    assert level1.shape == (6, 35, 45)
    assert level0.dtype == np.uint8 and level0.fill_value == 0
    np.testing.assert_array_equal(level0[:], _encoded(data))
    np.testing.assert_array_equal(level1[:], _encoded(data)[:, ::2, ::2])
    if version == "0.5":
        assert level0.metadata.dimension_names == ("z", "y", "x")
        assert group.attrs["ome"]["version"] == "0.5"
    else:
        assert group.attrs["multiscales"][0]["version"] == "0.4"
        assert level0.metadata.dimension_separator == "/"

    colours = palette(5)
    assert [(c.label_value, tuple(c.rgba)) for c in label.colors] == [
        (c + 1, colours[c]) for c in range(5)]
    props = [p.model_dump(by_alias=True) for p in label.properties]
    assert [p["label-value"] for p in props] == [1, 2, 3, 4, 5]
    assert [p["class"] for p in props] == [0, 1, 2, 3, 4]
    assert [p["name"] for p in props] == ["water", "class 1", "forest", "class 3", "class 4"]


def test_omezarr_isotropic_volume_halves_z(tmp_path):
    data = _classes((8, 64, 40), n_classes=2)
    chunks = ((8,), (32, 32), (40,))
    geometry = _geometry(data.shape, affine=_affine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
                         units=("micrometer", "micrometer", None))
    _write(_make("ome-zarr", tmp_path, geometry, data, chunks, n_classes=2), data, chunks)
    _, ms, _ = _ome(tmp_path / "labels.ome.zarr")
    assert _scales(ms) == [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    assert len(ms.datasets[0].coordinateTransformations) == 1  # origin 0: no translation
    assert [a.unit for a in ms.axes] == ["micrometer", "micrometer", None]
    group = zarr.open_group(str(tmp_path / "labels.ome.zarr"), mode="r")
    np.testing.assert_array_equal(group["1"][:], _encoded(data)[::2, ::2, ::2])


def test_omezarr_ids_values_and_images(tmp_path):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 1000, SHAPE).astype(np.uint32)
    (tmp_path / "ids").mkdir()
    _write(_make("ome-zarr", tmp_path / "ids", _geometry(), ids, CHUNKS, role="ids",
                 nodata=0), ids, CHUNKS)
    model, _, label = _ome(tmp_path / "ids" / "labels.ome.zarr")
    assert isinstance(model, ome_zarr_models.v05.image_label.ImageLabel)
    assert label.colors is None and label.properties is None  # the viewer colours them
    group = zarr.open_group(str(tmp_path / "ids" / "labels.ome.zarr"), mode="r")
    assert group["0"].dtype == np.uint32
    np.testing.assert_array_equal(group["0"][:], ids)

    values = rng.integers(0, 101, SHAPE).astype(np.uint8)
    values[0] = 255
    for version in ("0.4", "0.5"):
        d = tmp_path / f"values{version}"
        d.mkdir()
        _write(_make("ome-zarr", d, _geometry(ngff_version=version), values, CHUNKS,
                     role="values"), values, CHUNKS)
        model, _, _ = _ome(d / "labels.ome.zarr")
        image = (ome_zarr_models.v04 if version == "0.4" else ome_zarr_models.v05).image.Image
        assert type(model) is image  # a plain image: no image-label
        group = zarr.open_group(str(d / "labels.ome.zarr"), mode="r")
        assert "image-label" not in (group.attrs.get("ome") or group.attrs)
        assert group["0"].fill_value == 255
        np.testing.assert_array_equal(group["0"][:], values)

    # a 2-D image tall enough for three levels (1100 -> 550 -> 275)
    image2d = _classes((1100, 40), n_classes=4)
    chunks = ((512, 512, 76), (40,))
    geometry = Geometry(("y", "x"), image2d.shape, kind="tiff", spacing=(0.25, 0.25),
                        units=("micrometer", "micrometer"))
    (tmp_path / "2d").mkdir()
    _write(_make("ome-zarr", tmp_path / "2d", geometry, image2d, chunks, n_classes=4),
           image2d, chunks)
    _, ms, _ = _ome(tmp_path / "2d" / "labels.ome.zarr")
    assert [a.name for a in ms.axes] == ["y", "x"]
    assert _scales(ms) == [[0.25, 0.25], [0.5, 0.5], [1.0, 1.0]]
    group = zarr.open_group(str(tmp_path / "2d" / "labels.ome.zarr"), mode="r")
    assert [group[str(i)].shape for i in range(3)] == [(1100, 40), (550, 20), (275, 10)]
    assert group["1"].chunks == (512, 20)
    np.testing.assert_array_equal(group["2"][:], _encoded(image2d)[::4, ::4])


def test_omezarr_abort_and_bad_chunks(tmp_path):
    data = _classes()
    sink = _make("ome-zarr", tmp_path, _geometry(), data, CHUNKS, n_classes=5)
    assert isinstance(sink, OmeZarrSink) and isinstance(sink, Sink)
    region = next(_regions(CHUNKS))
    sink[region] = data[region]
    sink.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="regular grid"):
        _make("ome-zarr", tmp_path, _geometry(), data, ((2, 4), (70,), (90,)), n_classes=5)
    assert list(tmp_path.iterdir()) == []


def test_pyramid_steps():
    assert pyramid_steps((20, 20), (1.0, 1.0)) == []  # small: level 0 only
    assert pyramid_steps((32, 8), (1.0, 1.0)) == [(2, 2)]  # at least two levels
    assert pyramid_steps((512, 512), (1.0, 1.0)) == [(2, 2)]
    assert pyramid_steps((2048, 100), (1.0, 1.0)) == [(2, 2), (2, 2)]
    # thick slices: z is kept until y has caught up, then halved with it
    assert pyramid_steps((40, 4096, 4096), (2.0, 0.5, 0.5)) == [
        (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert pyramid_steps((1, 1024, 1024), (1.0, 1.0, 1.0)) == [(1, 2, 2)]  # one slice
