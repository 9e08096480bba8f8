"""End to end: colour + texture features and the majority filter through ``run``, on a
real RGB image (when the shared data is present) and on a generated scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.config import parse_config
from pipeline.features import FeatureSpec
from pipeline.runner import plan, run
from pipeline.testing import SHARED_DATA

RGB_BYTE = SHARED_DATA / "geotiff" / "RGB.byte.tif"
FEATURES = ["lab", {"texture": {"stat": "std", "window": 7}}]


def _run(src: Path, out: Path, chunks: int, k: int) -> tuple[dict, dict]:
    cfg = parse_config({
        "input": str(src), "output": str(out), "chunks": chunks, "features": FEATURES,
        "cluster": {"k": k, "seed": 0, "sample_size": 20000, "n_init": 1},
        "postprocess": {"majority": {"radius": 2}, "keep_raw": True},
        "formats": ["cog"],
    })
    run(cfg)
    maps = {}
    for name in ("labels", "labels_raw"):
        with rasterio.open(out / f"{name}.tif") as f:
            maps[name] = f.read(1)
            assert f.colormap(1)  # labels_* get the class colour table
    return maps, json.loads((out / "model.json").read_text())


def _check_same_for_chunks_48_and_1024(src: Path, tmp_path: Path, k: int) -> dict:
    small, model_small = _run(src, tmp_path / "c48", 48, k)
    large, model_large = _run(src, tmp_path / "c1024", 1024, k)
    for name in ("labels", "labels_raw"):
        np.testing.assert_array_equal(small[name], large[name])
    assert model_small["centroids"] == model_large["centroids"]
    # the filter changed something, and only where it may: nodata stays nodata
    assert (small["labels"] != small["labels_raw"]).any()
    np.testing.assert_array_equal(small["labels"] == 255, small["labels_raw"] == 255)
    # the model file names every feature with its parameters: enough to recompute them
    assert model_small["feature_names"] == ["lab_L", "lab_a", "lab_b", "texture_std_w7_mean"]
    specs = [FeatureSpec.parse(f) for f in model_small["features"]]
    assert [s.describe() for s in specs] == model_small["features"]
    assert specs[1].params.window == 7 and specs[1].halo == 3
    return small


def test_rgb_byte_same_labels_for_chunks_48_and_1024(tmp_path):
    if not RGB_BYTE.exists():
        pytest.skip(f"real sample data not found at {RGB_BYTE} (only in the project checkout)")
    labels = _check_same_for_chunks_48_and_1024(RGB_BYTE, tmp_path, k=5)
    with rasterio.open(RGB_BYTE) as f:
        nodata = (f.read() == 0).any(0)
    np.testing.assert_array_equal(labels["labels"] == 255, nodata)


def test_generated_scene_same_labels_for_chunks_48_and_1024(scene, tmp_path):
    labels = _check_same_for_chunks_48_and_1024(scene.path, tmp_path, k=scene.n_classes)
    with rasterio.open(scene.truth_path) as f:
        truth = f.read(1)
    np.testing.assert_array_equal(labels["labels"] == 255, truth == 255)


def test_plan_lists_the_raw_labels_when_kept(scene, tmp_path):
    cfg = parse_config({"input": str(scene.path), "output": str(tmp_path / "o"),
                        "features": FEATURES, "formats": ["cog", "zarr"],
                        "postprocess": {"majority": {"radius": 1}, "keep_raw": True}})
    p = plan(cfg)
    assert p["features"] == ["lab_L", "lab_a", "lab_b", "texture_std_w7_mean"]
    assert {"labels.tif", "labels_raw.tif", "labels.zarr", "labels_raw.zarr"} <= set(p["writes"])
