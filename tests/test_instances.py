"""postprocess.instances: touching objects split into instances, the same for any chunking."""

from __future__ import annotations

import json
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import rasterio
import scipy.ndimage as ndi
import xarray as xr
from _segment_oracle import canonical, partitions, run_segments
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.postprocess import (
    auto_class,
    instance_table,
    instance_tasks,
    relabel_instances,
    resolve_instances,
    select_objects,
    split_object,
)
from pipeline.runner import plan, run
from pipeline.testing import write_raster

# --- helpers ---


def _discs(shape, discs, klass=1) -> np.ndarray:
    """A uint8 class map: ``discs`` ((centre..., radius), ...) of ``klass`` on 0."""
    grid = np.indices(shape)
    out = np.zeros(shape, np.uint8)
    for *centre, r in discs:
        d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        out[d2 <= r * r] = klass
    return out


def _library(seg, index, klass, chunks, *, max_extent=64, features=None, **opts):
    """Instances through the library on ``seg`` chunked as ``chunks``: (raster, index)."""
    dims = ("z", "y", "x")[-seg.ndim:]
    arr = xr.DataArray(da.from_array(seg, chunks=chunks), dims=dims)
    feats = None
    if features is not None:
        feats = xr.DataArray(da.from_array(features, chunks=(features.shape[0],) + tuple(chunks)),
                             dims=("feature",) + dims)
    objects = select_objects(index.stats, klass, max_extent=max_extent)
    tasks = instance_tasks(arr, objects, features=feats, **opts)
    (results,) = dask.compute(tasks.tasks, scheduler="synchronous")
    inst = resolve_instances(tasks, results)
    out = relabel_instances(arr, inst, features=feats, **opts)
    return out.data.compute(scheduler="synchronous"), inst


def _oracle(seg, index, klass, max_extent=64, **opts) -> np.ndarray:
    """Each object split alone on the whole image, renumbered by first pixel."""
    out = np.zeros(seg.shape, np.int64)
    n = 0
    lo, hi = index.stats.bbox()
    for i in np.flatnonzero(index.stats.klass == klass):
        box = tuple(slice(a, b + 1) for a, b in zip(lo[i], hi[i], strict=True))
        mask = seg[box] == i + 1
        parts = (split_object(mask, **opts) if (hi[i] - lo[i] + 1).max() <= max_extent
                 else mask.astype(np.int32))
        view = out[box]
        view[parts > 0] = parts[parts > 0] + n
        n += int(parts.max())
    return canonical(out)


# --- one object ---


def test_two_touching_discs_split_in_two_numbered_by_first_pixel():
    mask = _discs((30, 50), [(15, 14, 10), (15, 33, 10)]) > 0
    labels = split_object(mask, min_distance=3)
    assert labels.max() == 2 and labels.dtype == np.int32
    assert ((labels > 0) == mask).all()  # every pixel of the object, nothing else
    assert labels[15, 10] == 1 and labels[15, 38] == 2
    # three in a row, one alone: counts follow the discs
    mask3 = _discs((30, 80), [(15, 12, 9), (15, 29, 9), (15, 46, 9), (15, 70, 6)]) > 0
    lab, _ = ndi.label(mask3)
    assert [split_object(lab == i).max() for i in (1, 2)] == [3, 1]


def test_smoothing_and_min_distance_merge_seeds():
    mask = _discs((30, 44), [(15, 14, 10), (15, 29, 10)]) > 0
    assert split_object(mask, min_distance=3, smoothing=0).max() == 2
    assert split_object(mask, min_distance=20).max() == 1


def test_intensity_method_splits_by_the_features():
    # one square object, two bright blobs inside it: two instances
    mask = np.zeros((20, 40), bool)
    mask[2:18, 2:38] = True
    grid = np.indices(mask.shape)
    bright = sum(np.exp(-((grid[0] - 10) ** 2 + (grid[1] - c) ** 2) / 30.0) for c in (10, 30))
    labels = split_object(mask, method="intensity", intensity=bright, smoothing=1.0)
    assert labels.max() == 2 and labels[10, 5] == 1 and labels[10, 35] == 2
    with pytest.raises(ValueError, match="intensity"):
        split_object(mask, method="intensity")


def test_touching_balls_in_3d_with_spacing():
    vol = _discs((14, 24, 40), [(7, 12, 11, 7), (7, 12, 24, 7)]) > 0
    labels = split_object(vol, spacing=(1.0, 1.0, 1.0))
    assert labels.max() == 2 and ((labels > 0) == vol).all()
    assert labels[7, 12, 6] == 1 and labels[7, 12, 30] == 2


# --- chunks ---


@st.composite
def disc_scenes(draw) -> np.ndarray:
    h, w = draw(st.integers(20, 40)), draw(st.integers(20, 44))
    n = draw(st.integers(1, 7))
    discs = [(draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1)),
              draw(st.integers(2, 8))) for _ in range(n)]
    classes = _discs((h, w), discs)
    if draw(st.booleans()):  # a second foreground class touching the first
        classes[draw(st.integers(0, h - 1)):, : draw(st.integers(1, w))] = 2
    return classes


@settings(max_examples=8, deadline=None)
@given(data=st.data(), classes=disc_scenes(), smoothing=st.sampled_from([0.0, 1.5]),
       max_extent=st.sampled_from([12, 64]))
@example(data=None, classes=_discs((24, 40), [(12, 10, 8), (12, 27, 8)]), smoothing=0.0,
         max_extent=64)
def test_identical_to_the_single_chunk_run_and_to_the_oracle(data, classes, smoothing,
                                                              max_extent):
    h, w = classes.shape
    chunks = ((h,), (w,)) if data is None else (data.draw(partitions(h, 20)),
                                                 data.draw(partitions(w, 20)))
    seg, index = run_segments(classes, None, (h, w), 8)
    opts = {"min_distance": 3, "smoothing": smoothing}
    single, _ = _library(seg, index, 1, (h, w), max_extent=max_extent, **opts)
    out, inst = _library(seg, index, 1, chunks, max_extent=max_extent, **opts)
    np.testing.assert_array_equal(out, single)
    np.testing.assert_array_equal(out, _oracle(seg, index, 1, max_extent, **opts))
    assert out.dtype == np.uint32 and inst.n_instances == out.max()
    assert ((out > 0) == (classes == 1)).all()
    # the table follows the raster: sizes, boxes, first pixels, segments
    flat = out.ravel()
    np.testing.assert_array_equal(inst.stats.count, np.bincount(flat)[1:])
    firsts = np.array([np.flatnonzero(flat == i)[0] for i in range(1, out.max() + 1)],
                      dtype=np.int64)
    np.testing.assert_array_equal(inst.stats.first, firsts)
    np.testing.assert_array_equal(inst.segment, seg.ravel()[firsts])
    if data is None:
        assert out.max() == 2


def test_features_and_the_intensity_method_for_any_chunking():
    classes = _discs((36, 40), [(10, 10, 8), (10, 25, 8), (27, 20, 7)])
    grid = np.indices(classes.shape)
    bright = sum(np.exp(-((grid[0] - 10) ** 2 + (grid[1] - c) ** 2) / 20.0) for c in (10, 25))
    features = np.stack([classes * 2.0 + bright * 4, classes + bright]).astype(np.float32)
    seg, index = run_segments(classes, features, (36, 40), 8)
    opts = {"method": "intensity", "smoothing": 1.0, "offset": [0.0, 0.0],
            "weights": [1.0, 1.0]}
    ref, inst = _library(seg, index, 1, (36, 40), features=features, **opts)
    for chunks in [(7, 9), (16, 5)]:
        out, other = _library(seg, index, 1, chunks, features=features, **opts)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(other.means, inst.means)  # bit for bit
    assert ref.max() == 3
    means = inst.means
    f = features.reshape(2, -1)
    for i in range(1, 4):
        np.testing.assert_allclose(means[i - 1],
                                   f[:, ref.ravel() == i].astype(np.float64).mean(axis=1),
                                   rtol=0, atol=2.0**-17)  # 16-bit fixed-point sums


@pytest.mark.parametrize("chunks", [(14, 24, 40), (5, 7, 9), (14, 5, 40)])
def test_touching_balls_in_a_volume_for_any_chunking(chunks):
    classes = _discs((14, 24, 40), [(7, 12, 11, 7), (7, 12, 24, 7), (3, 5, 35, 3)])
    seg, index = run_segments(classes, None, classes.shape, 26)
    out, inst = _library(seg, index, 1, chunks, spacing=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, _oracle(seg, index, 1, spacing=(2.0, 1.0, 1.0)))
    assert out.max() == 3 and inst.n_split == 1
    table = instance_table(inst)
    assert list(table["voxels"]) == list(np.bincount(out.ravel())[1:])
    assert {"segment", "centroid_z", "world_centroid_x", "volume"} <= set(table.columns)


def test_objects_longer_than_max_extent_stay_whole():
    classes = _discs((30, 60), [(15, 10, 9), (15, 26, 9), (15, 45, 6)])
    classes[14:17, 30:42] = 1  # joins the three discs: one object 51 pixels wide
    seg, index = run_segments(classes, None, classes.shape, 8)
    out, inst = _library(seg, index, 1, (8, 8), max_extent=40)
    assert out.max() == 1 and inst.n_split == 0 and len(inst.objects) == 1
    row = instance_table(inst).iloc[0]  # summed from every chunk the object meets
    np.testing.assert_allclose([row["centroid_row"], row["centroid_col"]],
                               np.argwhere(out == 1).mean(axis=0))
    assert row["area_px"] == (out == 1).sum() and row["segment"] == inst.segment[0]
    out, inst = _library(seg, index, 1, (8, 8), max_extent=60)
    assert out.max() == 3 and inst.n_split == 1


def test_auto_class_is_the_class_with_fewest_pixels():
    classes = np.zeros((20, 20), np.uint8)
    classes[:, 12:] = 1
    classes[2:5, 2:5] = 2
    classes[10:12, 2:4] = 2
    _, index = run_segments(classes, None, classes.shape, 8)
    assert auto_class(index.stats, 3) == 2
    assert auto_class(index.stats, 4) == 2  # a class with no pixel is not chosen


# --- whole runs ---


def _scene(path, size=96):
    """Bright touching discs (pairs and a triple) on a dark, slightly noisy background."""
    discs = [(20, 18, 9), (20, 35, 9), (60, 20, 10), (60, 39, 10), (62, 70, 8),
             (24, 70, 7), (80, 80, 6), (80, 92, 6)]
    classes = _discs((size, size), discs)
    rng = np.random.default_rng(0)
    img = np.where(classes > 0, 200, 30) + rng.integers(0, 20, classes.shape)
    write_raster(path, img.astype(np.uint8)[None], tile=16)
    return classes


@pytest.fixture(scope="module")
def disc_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inst")
    classes = _scene(d / "discs.tif")
    pp = {"majority": {"radius": 1}, "min_size": 5,
          "instances": {"class": "auto", "min_distance": 3, "smoothing": 1.0}}
    cfgs = [parse_config({"input": str(d / "discs.tif"), "output": str(d / f"c{c}"),
                          "chunks": c, "features": ["bands"], "formats": ["cog", "zarr"],
                          "cluster": {"k": 2, "seed": 0}, "postprocess": pp})
            for c in (16, 24, 96)]
    return classes, cfgs, [run(c) for c in cfgs]


def test_run_writes_identical_instances_for_any_chunking(disc_runs):
    classes, cfgs, results = disc_runs
    writes = plan(cfgs[0])["writes"]
    assert {"instances.tif", "instances.zarr", "instances.parquet"} <= set(writes)
    rasters = []
    for r in results:
        with rasterio.open(r.output / "instances.tif") as ds:
            tif = ds.read(1)
            assert ds.nodata == 0 and ds.dtypes[0] == "uint32"
        z = xr.open_zarr(r.output / "instances.zarr", mask_and_scale=False)["instances"].values
        np.testing.assert_array_equal(z, tif)
        rasters.append(tif)
        assert {"instances.tif", "instances.zarr", "instances.parquet"} <= set(
            r.report["outputs"])
    for tif in rasters[1:]:
        np.testing.assert_array_equal(tif, rasters[0])
    tables = [pd.read_parquet(r.output / "instances.parquet") for r in results]
    for t in tables[1:]:
        pd.testing.assert_frame_equal(t, tables[0])
    reports = [r.report["instances"] for r in results]
    assert all(rep == reports[0] for rep in reports)
    # eight discs in five objects (three pairs split, two alone)
    assert reports[0]["instances"] == 8 == rasters[0].max()
    assert reports[0]["objects"] == 5 and reports[0]["split"] == 3
    assert reports[0]["chosen_by"].startswith("auto")


def test_run_ids_are_canonical_and_the_table_follows_them(disc_runs):
    classes, _, results = disc_runs
    out = results[0].output
    with rasterio.open(out / "instances.tif") as ds:
        tif = ds.read(1)
    np.testing.assert_array_equal(canonical(tif), tif)  # numbered by first pixel
    table = pd.read_parquet(out / "instances.parquet")
    seg_table = pd.read_parquet(out / "segments.parquet")
    assert list(table.columns[:5]) == ["id", "segment", "class", "area_px", "area"]
    assert {"row_min", "col_max", "x_min", "y_max", "centroid_row", "centroid_col",
            "centroid_x", "centroid_y", "mean_band_1"} <= set(table.columns) or \
        any(c.startswith("mean_") for c in table.columns)
    assert list(table["id"]) == list(range(1, len(table) + 1))
    np.testing.assert_array_equal(table["area_px"], np.bincount(tif.ravel())[1:])
    klass = results[0].report["instances"]["class"]
    assert set(table["class"]) == {klass}
    assert set(table["segment"]) <= set(seg_table.loc[seg_table["class"] == klass, "id"])
    rows, cols = np.indices(tif.shape)
    for i in (1, len(table)):
        np.testing.assert_allclose(table.loc[i - 1, "centroid_row"], rows[tif == i].mean())
        np.testing.assert_allclose(table.loc[i - 1, "centroid_col"], cols[tif == i].mean())
    # map units: 30 m pixels (pipeline.testing.write_raster)
    np.testing.assert_allclose(table["area"], table["area_px"] * 900.0)
    # the instances cover the discs' class exactly
    with rasterio.open(out / "labels.tif") as ds:
        labels = ds.read(1)
    assert ((tif > 0) == (labels == klass)).all()


@pytest.mark.parametrize("klass, message", [
    (5, "postprocess.instances.class: 5 is not a class of this model"),
    ("nuclei", "postprocess.instances.class: 'nuclei' is not a class of this model"),
])
def test_a_class_that_does_not_exist_exits_2_with_one_line(tmp_path, write_config, klass,
                                                           message):
    _scene(tmp_path / "discs.tif", size=48)
    cfg = write_config({"input": str(tmp_path / "discs.tif"), "output": str(tmp_path / "out"),
                        "features": ["bands"], "cluster": {"k": 2},
                        "postprocess": {"instances": {"class": klass}}})
    if isinstance(klass, int):  # the console script itself
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg)],
                              capture_output=True, text=True)
        code, stderr = proc.returncode, proc.stderr
    else:
        res = CliRunner().invoke(main, ["run", str(cfg)])
        code, stderr = res.exit_code, res.stderr
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "auto" in lines[0], stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_class_given_by_id_or_name_and_the_report(tmp_path):
    classes = _scene(tmp_path / "discs.tif", size=48)
    base = {"input": str(tmp_path / "discs.tif"), "features": ["bands"], "chunks": 16,
            "cluster": {"k": 2, "seed": 0}, "formats": ["zarr"]}
    r0 = run(parse_config({**base, "output": str(tmp_path / "a"),
                           "postprocess": {"instances": {"class": 0}}}))
    assert r0.report["instances"]["class"] == 0
    assert r0.report["instances"]["chosen_by"] == "config"
    r1 = run(parse_config({**base, "output": str(tmp_path / "b"),
                           "postprocess": {"instances": {"class": "1",
                                                         "method": "intensity"}}}))
    report = json.loads((r1.output / "report.json").read_text())
    assert report["instances"]["class"] == 1 and report["instances"]["method"] == "intensity"
    z = xr.open_zarr(r1.output / "instances.zarr", mask_and_scale=False)["instances"].values
    assert z.max() == report["instances"]["instances"] > 0
    assert (z > 0).sum() + (np.asarray(xr.open_zarr(r0.output / "instances.zarr",
                                                    mask_and_scale=False)["instances"]) > 0
                            ).sum() == classes.size


def test_the_nuclei_config_parses():
    from pipeline.config import load_config

    cfg = load_config("configs/nuclei.yaml")
    inst = cfg.postprocess.instances
    assert inst is not None and inst.klass == "auto" and cfg.postprocess.segments is not None
