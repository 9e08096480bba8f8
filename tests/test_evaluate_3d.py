"""``pipeline.evaluate`` and ``tileseg evaluate`` on label volumes: NIfTI, OME-Zarr, Zarr.

The predictions are written by tileseg's own label writers (class c stored as c + 1,
0 = no label); the truths as other tools write them (nibabel, a plain NGFF image).
"""

from __future__ import annotations

import json

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner
from scipy.optimize import linear_sum_assignment
from skimage.metrics import variation_of_information as sk_voi
from sklearn import metrics

from pipeline import evaluate as ev
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.io import Geometry
from pipeline.io._sinks import SINKS
from pipeline.testing import write_raster

SHAPE = (10, 40, 36)  # z, y, x
SPACING = (2.0, 0.5, 0.75)  # z, y, x, mm
ORIGIN = (10.0, -20.0, 30.0)  # x, y, z
NODATA = 255  # of the class blocks handed to the writers


def _affine(origin=ORIGIN, spacing=SPACING) -> np.ndarray:
    a = np.diag([*spacing[::-1], 1.0])
    a[:3, 3] = origin
    return a


def _geometry(kind: str, **kw) -> Geometry:
    return Geometry(("z", "y", "x"), SHAPE, kind=kind, affine=_affine(**kw),
                    units=("millimeter",) * 3)


@pytest.fixture(scope="module")
def maps():
    """A 4-class truth (0 = background) and a relabelled, noisy prediction with nodata."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 4, (5, 8, 6))
    truth = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 5, 1), 6, 2).astype(np.int16)
    pred = ((truth + 1) % 4).astype(np.uint8)
    noise = rng.random(SHAPE) < 0.1
    pred[noise] = rng.integers(0, 4, int(noise.sum()))
    pred[:, :6, :] = NODATA  # e.g. outside the mask
    return pred, truth


def _write_sink(fmt, directory, data, geometry, *, role="classes", n_classes=4):
    directory.mkdir(exist_ok=True)
    chunks = tuple((c,) * (n // c) + ((n % c,) if n % c else ())
                   for c, n in zip((4, 16, 16), data.shape, strict=True))
    sink = SINKS[fmt].factory(directory, "labels", geometry, shape=data.shape,
                              chunks=chunks, dtype=data.dtype, nodata=NODATA, role=role,
                              n_classes=n_classes)
    sink[tuple(slice(None) for _ in data.shape)] = data
    return sink.close()[0]


def tileseg_nifti(directory, data, **kw):
    """``labels.nii.gz`` as a tileseg run writes it."""
    return _write_sink("nifti", directory, data, _geometry("nifti", **kw))


def tileseg_ome_zarr(directory, data, **kw):
    """``labels.ome.zarr`` as a tileseg run writes it."""
    return _write_sink("ome-zarr", directory, data, _geometry("ome-zarr", **kw))


def plain_nifti(path, data, *, affine=None):
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)),
                          _affine() if affine is None else affine)
    img.header.set_xyzt_units("mm")
    img.to_filename(path)
    return path


def plain_ome_zarr(path, data, *, spacing=SPACING, image_label=False, chunks=(4, 16, 16)):
    """An NGFF 0.5 image (a label image of another tool with ``image_label``)."""
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    a = g.create_array("0", shape=data.shape, dtype=data.dtype, chunks=chunks,
                       dimension_names=["z", "y", "x"])
    a[:] = data
    axes = [{"name": n, "type": "space", "unit": "millimeter"} for n in "zyx"]
    ms = {"axes": axes, "name": "truth", "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": list(spacing)},
        {"type": "translation", "translation": list(ORIGIN[::-1])}]}]}
    ome = {"version": "0.5", "multiscales": [ms]}
    if image_label:
        ome["image-label"] = {}
    g.attrs["ome"] = ome
    return path


def plain_zarr(path, data, nodata):
    """A plain Zarr volume with the nodata attribute, as tileseg's ``labels.zarr``."""
    arr = xr.DataArray(data, dims=("z", "y", "x"), name="labels", attrs={"nodata": nodata})
    arr.to_dataset().to_zarr(path, zarr_format=3, consolidated=False)
    return path


def reference(pred, truth, valid):
    """scikit-learn and scikit-image on the flattened valid voxels."""
    t, p = truth[valid].ravel(), pred[valid].ravel()
    cm = metrics.cluster.contingency_matrix(t, p)
    rows, cols = linear_sum_assignment(cm, maximize=True)
    return {
        "table": cm,
        "adjusted_rand_index": metrics.adjusted_rand_score(t, p),
        "normalized_mutual_info": metrics.normalized_mutual_info_score(t, p),
        "overall_accuracy": cm[rows, cols].sum() / cm.sum(),
        "probabilistic_rand_index": metrics.rand_score(t, p),
        "variation_of_information": sum(sk_voi(t, p)),
    }


def check(result, ref, *, nodata):
    assert result["pixels"]["nodata"] == nodata
    assert result["pixels"]["compared"] == ref["table"].sum()
    for section in ("class", "region"):
        for key, value in result[section].items():
            if key in ref:
                assert value == pytest.approx(ref[key], abs=1e-12), key
    conf = result["class"]["confusion"]
    order = np.argsort(conf["pred_labels"])
    np.testing.assert_array_equal(np.asarray(conf["matrix"])[:, order], ref["table"])


def same_table(a, b):
    np.testing.assert_array_equal(a.truth_labels, b.truth_labels)
    np.testing.assert_array_equal(a.pred_labels, b.pred_labels)
    np.testing.assert_array_equal(a.dense(), b.dense())
    assert a.nodata_pixels == b.nodata_pixels


# ---------------------------------------------------------------- scores


def test_nifti_pair_matches_scikit_learn(tmp_path, maps):
    pred, truth = maps
    p = tileseg_nifti(tmp_path / "run", pred)
    t = plain_nifti(tmp_path / "truth.nii.gz", truth)
    r = ev.evaluate_rasters(p, t)
    valid = pred != NODATA
    check(r, reference(pred, truth, valid), nodata=int((~valid).sum()))
    assert r["labels"] == {"pred": 4, "truth": 4}
    assert r["class"]["confusion"]["pred_labels"][0] in (1, 2, 3, 4)  # stored c + 1


def test_ome_zarr_pair_matches_scikit_learn(tmp_path, maps):
    pred, truth = maps
    p = tileseg_ome_zarr(tmp_path / "run", pred)
    t = plain_ome_zarr(tmp_path / "truth.ome.zarr", truth)
    r = ev.evaluate_rasters(p, t)
    valid = pred != NODATA
    check(r, reference(pred, truth, valid), nodata=int((~valid).sum()))


@pytest.mark.parametrize("pred_format", ["ome-zarr", "zarr", "array"])
def test_mixed_formats_compare_voxel_by_voxel(tmp_path, maps, pred_format):
    pred, truth = maps
    t = plain_nifti(tmp_path / "truth.nii", truth)
    if pred_format == "ome-zarr":  # no common orientation with NIfTI: voxel size only
        p = tileseg_ome_zarr(tmp_path / "run", pred)
    elif pred_format == "zarr":
        p = plain_zarr(tmp_path / "labels.zarr", pred, NODATA)
    else:
        p = xr.DataArray(pred, dims=("z", "y", "x")).rio.write_nodata(NODATA)
    r = ev.evaluate_rasters(p, t)
    valid = pred != NODATA
    check(r, reference(pred, truth, valid), nodata=int((~valid).sum()))


def test_in_memory_volumes_match_from_arrays(maps):
    pred, truth = maps
    lazy = ev.contingency(pred, truth, chunks=16).compute()
    same_table(lazy, ev.ContingencyTable.from_arrays(pred, truth))
    r = ev.evaluate_rasters(pred[None], truth)  # (1, z, y, x): a single band
    assert r["pixels"]["nodata"] == 0 and r["labels"]["pred"] == 5


# ---------------------------------------------------------------- chunking


def test_table_does_not_depend_on_chunking(tmp_path, maps):
    pred, truth = maps
    p = tileseg_nifti(tmp_path / "run", pred)
    o = tileseg_ome_zarr(tmp_path / "run", pred)
    t = plain_nifti(tmp_path / "truth.nii.gz", truth)
    tz = plain_ome_zarr(tmp_path / "truth.ome.zarr", truth, chunks=(3, 7, 40))
    first = ev.contingency(p, t).compute()
    assert first.nodata_pixels == int((pred == NODATA).sum())
    for pp, tt, chunks in [(p, t, 16), (p, t, 37), (o, t, 16), (o, tz, 24), (p, tz, None),
                           (o, tz, None)]:
        same_table(ev.contingency(pp, tt, chunks=chunks).compute(), first)
    # irregular Dask chunks, the truth chunked otherwise
    stored = np.where(pred == NODATA, 0, pred + 1).astype(np.uint8)
    pa = xr.DataArray(da.from_array(stored, chunks=(3, 11, 7)),
                      dims=("z", "y", "x")).rio.write_nodata(0)
    ta = xr.DataArray(da.from_array(truth, chunks=(10, 5, 36)), dims=("z", "y", "x"))
    same_table(ev.contingency(pa, ta, split_every=2).compute(), first)


# ---------------------------------------------------------------- 0 = no label


def test_zero_is_no_label_only_in_tileseg_label_images(tmp_path, maps):
    pred, truth = maps
    stored = np.where(pred == NODATA, 0, pred + 1).astype(np.uint8)
    n_zero = int((stored == 0).sum())
    t = plain_nifti(tmp_path / "truth.nii.gz", truth)
    ours = [tileseg_nifti(tmp_path / "a", pred), tileseg_ome_zarr(tmp_path / "b", pred)]
    others = [plain_nifti(tmp_path / "plain.nii.gz", stored),
              plain_ome_zarr(tmp_path / "napari.ome.zarr", stored, image_label=True)]
    for p in ours:
        r = ev.evaluate_rasters(p, t)
        assert r["pixels"]["nodata"] == n_zero and r["labels"]["pred"] == 4, p
    for p in others:  # 0 is an ordinary label: only tileseg's own files say otherwise
        r = ev.evaluate_rasters(p, t)
        assert r["pixels"]["nodata"] == 0 and r["labels"]["pred"] == 5, p
    # a tileseg map as the truth too (two runs compared): 0 is left out of both
    r = ev.evaluate_rasters(ours[0], ours[1])
    assert r["pixels"]["nodata"] == n_zero and r["class"]["overall_accuracy"] == 1.0


def test_ignore_zero_leaves_the_truth_background_out(tmp_path, maps):
    pred, truth = maps
    p = tileseg_nifti(tmp_path / "run", pred)
    t = plain_nifti(tmp_path / "truth.nii.gz", truth)
    r = ev.evaluate_rasters(p, t, ignore=[0])
    valid = pred != NODATA
    ref = reference(pred, truth, valid & (truth != 0))
    assert r["pixels"]["ignored"] == int((valid & (truth == 0)).sum())
    assert r["class"]["adjusted_rand_index"] == pytest.approx(ref["adjusted_rand_index"])
    assert r["class"]["normalized_mutual_info"] == pytest.approx(
        ref["normalized_mutual_info"])


# ---------------------------------------------------------------- grids


def test_a_two_d_nifti_compares_with_a_two_d_raster(tmp_path):
    labels = np.repeat(np.arange(4, dtype=np.uint8), 64).reshape(16, 16)
    sink_dir = tmp_path / "run"
    sink_dir.mkdir()
    g = Geometry(("y", "x"), labels.shape, kind="nifti", affine=np.eye(4))
    sink = SINKS["nifti"].factory(sink_dir, "labels", g, shape=labels.shape,
                                  chunks=((16,), (16,)), dtype=labels.dtype, nodata=NODATA,
                                  role="classes", n_classes=4)
    sink[:, :] = labels
    p = sink.close()[0]  # stored as (x, y, 1): a volume of one slice
    t = write_raster(tmp_path / "truth.tif", labels * 10)
    r = ev.evaluate_rasters(p, t)
    assert r["class"]["overall_accuracy"] == 1.0 and r["pixels"]["compared"] == labels.size


@pytest.mark.parametrize("what,message", [
    ("shape", "36 x 40 x 9 voxels (x, y, z) but"),
    ("origin", "(origin or orientation)"),
    ("spacing", "voxel size"),
    ("ome-spacing", "voxel size 0.75 x 0.5 x 1 millimeter"),
    ("ome-origin", "(origin or orientation)"),
])
def test_different_grids_are_refused(tmp_path, maps, what, message):
    pred, truth = maps
    if what.startswith("ome"):
        p = tileseg_ome_zarr(tmp_path / "run", pred)
        if what == "ome-spacing":
            t = plain_ome_zarr(tmp_path / "truth.ome.zarr", truth, spacing=(1.0, 0.5, 0.75))
        else:
            t = tileseg_ome_zarr(tmp_path / "other", pred, origin=(10.0, -20.0, 35.0))
    else:
        p = tileseg_nifti(tmp_path / "run", pred)
        affine = {"origin": _affine(origin=(15.0, -20.0, 30.0)),
                  "spacing": _affine(spacing=(2.0, 0.5, 0.8))}.get(what)
        t = plain_nifti(tmp_path / "truth.nii.gz", truth[:9] if what == "shape" else truth,
                        affine=affine)
    with pytest.raises(InputError, match="same grid") as err:
        ev.evaluate_rasters(p, t)
    text = str(err.value)
    assert message in text and str(p) in text and str(t) in text and "\n" not in text


# ---------------------------------------------------------------- the command line


def test_cli_json_on_volumes(tmp_path, maps):
    pred, truth = maps
    p = tileseg_nifti(tmp_path / "run", pred)
    t = plain_ome_zarr(tmp_path / "truth.ome.zarr", truth)
    res = CliRunner().invoke(main, ["evaluate", str(p), str(t), "--json", "--ignore", "0"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    valid = (pred != NODATA) & (truth != 0)
    ref = reference(pred, truth, valid)
    assert r["pred"] == str(p) and r["ignore"] == [0]
    assert r["class"]["adjusted_rand_index"] == round(ref["adjusted_rand_index"], 4)
    assert r["pixels"]["nodata"] == int((pred == NODATA).sum())
    text = CliRunner().invoke(main, ["evaluate", str(p), str(t)])
    assert text.exit_code == 0 and "adjusted Rand index" in text.output


def test_cli_grid_mismatch_exits_2_with_one_line(tmp_path, maps):
    pred, truth = maps
    p = tileseg_nifti(tmp_path / "run", pred)
    t = plain_nifti(tmp_path / "truth.nii.gz", truth,
                    affine=_affine(origin=(10.0, -20.0, 40.0)))
    res = CliRunner().invoke(main, ["evaluate", str(p), str(t), "--json"])
    assert res.exit_code == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tileseg: error: ")
    assert str(p) in lines[0] and str(t) in lines[0] and "same grid" in lines[0]
