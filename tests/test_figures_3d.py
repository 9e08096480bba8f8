"""comparison.png of a volume: three orthogonal mid-planes, read alone, at their aspect."""

from __future__ import annotations

import threading

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from PIL import Image
from scipy import ndimage as ndi

import pipeline
from pipeline.config import parse_config
from pipeline.io._geometry import Geometry
from pipeline.io._user_mask import UserMask
from pipeline.report import planes_figure, planes_figure_size
from pipeline.runner import run
from pipeline.stages._fit import _mid_planes, write_comparison

# voxels of 2 mm (z) x 0.5 mm x 0.5 mm
AFFINE = np.array([[0.5, 0, 0, -12.0], [0, 0.5, 0, -10.0], [0, 0, 2.0, -20.0],
                   [0, 0, 0, 1.0]])
TEXTURE = {"texture": {"stat": "gaussian", "sigma_units": 1.0}}


def _volume(shape=(20, 40, 48), seed=7) -> np.ndarray:
    """(z, y, x) int16 with smooth tissue-like classes and noise."""
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.normal(size=shape), (1, 3, 3))
    q = np.digitize(f, np.quantile(f, [0.25, 0.5, 0.75]))
    return (q * 60 + 20 + rng.normal(0, 4, shape)).astype(np.int16)


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("fig3d")
    img = nib.Nifti1Image(_volume().transpose(2, 1, 0).copy(), AFFINE)  # stored (x, y, z)
    img.header.set_xyzt_units("mm")
    nib.save(img, d / "vol.nii.gz")
    config = parse_config({
        "input": str(d / "vol.nii.gz"), "output": str(d / "out"), "chunks": 16,
        "features": ["bands", TEXTURE], "cluster": {"k": 3, "seed": 0},
        "report": {"comparison": [2, 3]}})
    return config, run(config)


def test_volume_comparison_png_has_the_planes_layout(volume_run):
    _, result = volume_run
    png = result.output / "comparison.png"
    assert "comparison.png" in result.report["outputs"]
    # rows: original, k=3 (the run's), k=2; columns: axial 40 x 48 (20 x 24 mm),
    # coronal 20 x 48 (40 x 24 mm), sagittal 20 x 40 (40 x 20 mm). The tallest plane
    # (40 mm) is a row of 3 in: columns 1.8, 1.8 and 1.5 in; width 0.4 + 5.1 + 2 * 0.15
    # + 2.0 = 7.8 in, height 0.7 + 3 * 3.0 + 2 * 0.15 + 0.1 = 10.1 in, at 100 dpi
    expected = planes_figure_size([(40, 48), (20, 48), (20, 40)],
                                  [(0.5, 0.5), (2.0, 0.5), (2.0, 0.5)], 3)
    assert expected == (780, 1010)
    with Image.open(png) as im:
        assert im.size == expected


def test_planes_carry_the_runs_features_and_labels(volume_run):
    """With no decimation the planes' labels are the run's labels there, exactly."""
    config, result = volume_run
    image = pipeline.open_image(config.input, chunks=16)
    planes = _mid_planes(config, image, 1024)
    labels = np.asarray(nib.load(result.output / "labels.nii.gz").dataobj).transpose(2, 1, 0)
    assert [(p.name, p.dim, p.index, p.step) for p in planes] == [
        ("axial", "z", 10, 1), ("coronal", "y", 20, 1), ("sagittal", "x", 24, 1)]
    assert [p.spacing for p in planes] == [(0.5, 0.5), (2.0, 0.5), (2.0, 0.5)]
    truth = [labels[10], labels[:, 20], labels[:, :, 24]]
    for plane, ref in zip(planes, truth, strict=True):
        # NIfTI stores class + 1 (0: no label)
        np.testing.assert_array_equal(result.model.predict_block(plane.features) + 1, ref)
        assert plane.image.shape == (1, *ref.shape)
    # decimated to 24 voxels on the long side: every second voxel of each plane
    small = _mid_planes(config, image, 24)
    assert [p.step for p in small] == [2, 2, 2]
    assert small[0].image.shape == (1, 20, 24) and small[0].spacing == (1.0, 1.0)
    np.testing.assert_array_equal(result.model.predict_block(small[1].features) + 1,
                                  labels[:, 20][::2, ::2])


def test_a_mask_leaves_the_planes_unlabelled_outside(volume_run):
    config, result = volume_run
    image = pipeline.open_image(config.input, chunks=16)
    inside = np.zeros((20, 40, 48), bool)
    inside[5:15, 10:30, 8:40] = True
    mask = UserMask(da.from_array(inside, chunks=16), "file")
    planes = _mid_planes(config, image, 1024, mask)
    unmasked = _mid_planes(config, image, 1024)
    model = result.model
    for plane, full, valid in zip(planes, unmasked,
                                  [inside[10], inside[:, 20], inside[:, :, 24]], strict=True):
        labels = model.predict_block(plane.features)
        assert (labels[~valid] == model.nodata).all()
        np.testing.assert_array_equal(labels[valid], model.predict_block(full.features)[valid])
        np.testing.assert_array_equal(plane.image, full.image)  # the image is shown whole


def test_figure_keeps_the_physical_aspect():
    planes = [np.zeros((1, 10, 20)), np.zeros((1, 5, 20)), np.zeros((1, 5, 10))]
    maps = [np.zeros(p.shape[1:], np.uint8) for p in planes]
    spacings = [(1.0, 1.0), (4.0, 1.0), (4.0, 1.0)]
    fig = planes_figure(planes, [("k=1", maps, ["a"], 255)], spacings)
    fig.canvas.draw()
    for ax, sp, plane in zip(fig.axes[:3], spacings, planes, strict=True):
        assert ax.get_aspect() == sp[0] / sp[1]
        box = ax.get_window_extent()
        h, w = plane.shape[1] * sp[0], plane.shape[2] * sp[1]
        assert box.height / box.width == pytest.approx(h / w, rel=0.02)


class _Recorder:
    """An array that records every region read from it."""

    def __init__(self, data: np.ndarray):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[tuple[slice, ...]] = []
        self._lock = threading.Lock()

    def __getitem__(self, key):
        with self._lock:
            self.reads.append(key)
        return self.data[key]


@pytest.mark.parametrize("features", [["bands"], ["bands", TEXTURE]],
                         ids=["per-voxel", "texture"])
def test_only_the_mid_planes_are_read(tmp_path, features):
    shape, chunk, voxel = (32, 48, 64), 8, (2.0, 0.5, 0.5)
    data = _volume(shape)[None]
    geometry = Geometry(dims=("z", "y", "x"), shape=shape, kind="zarr", spacing=voxel,
                        units=("millimeter",) * 3)

    def lazy(source):
        return xr.DataArray(da.from_array(source, chunks=(1, chunk, chunk, chunk)),
                            dims=("band", "z", "y", "x"),
                            attrs={"geometry": geometry, "source": "lazy"})

    config = parse_config({"input": "lazy.zarr", "output": str(tmp_path / "out"),
                           "features": features, "report": {"comparison": [2]}})
    feats = pipeline.compute_features(lazy(data), config.features)
    panels = [("k=2", pipeline.fit(feats, k=2, seed=0, sample_size=2000))]
    recorder = _Recorder(data)
    write_comparison(config, lazy(recorder), panels, tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").exists()
    # texture, sigma 1 mm, truncated at 3 sigma: sigma 0.5 voxel along z (a halo of 2),
    # 2 voxels along y and x (a halo of 6)
    reach = (2, 6, 6) if len(features) > 1 else (0, 0, 0)
    # along its normal a plane's features read the chunk [at, at + max(reach, 1)) that
    # holds it and its two neighbours of `reach` voxels: these chunk rows, no other
    rows = [range((n // 2 - r) // chunk, (n // 2 + max(r, 1) + r - 1) // chunk + 1)
            for n, r in zip(shape, reach, strict=True)]
    touched = set()
    for key in recorder.reads:
        if any(k.stop == k.start for k in key):  # dask probing the dtype
            continue
        where = tuple((k.start or 0) // chunk for k in key[1:])
        assert any(where[a] in rows[a] for a in range(3)), key
        touched.add(where)
    grid = [range(n // chunk) for n in shape]
    expected = {(z, y, x) for z in grid[0] for y in grid[1] for x in grid[2]
                if z in rows[0] or y in rows[1] or x in rows[2]}
    assert touched == expected  # every chunk of the three slabs
    if reach == (0, 0, 0):  # chunks holding a voxel of a mid-plane: 48 + 32 + 24 - 18 + 1
        assert [list(r) for r in rows] == [[2], [3], [4]] and len(touched) == 87
    else:
        assert [list(r) for r in rows] == [[1, 2], [2, 3, 4], [3, 4, 5]]
    assert len(touched) < 4 * 6 * 8
