"""``tileseg evaluate``: the table, --json, --ignore, user errors, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn import metrics

from pipeline.cli import main
from pipeline.testing import write_raster


@pytest.fixture
def pair(tmp_path):
    """A 5-class truth (nodata 255 on a frame) and a relabelled, slightly wrong prediction."""
    rng = np.random.default_rng(0)
    truth = np.repeat(np.repeat(rng.integers(0, 5, (8, 8)), 12, 0), 12, 1).astype(np.uint8)
    pred = ((truth + 2) % 5).astype(np.uint8)
    pred[40:46, 10:70] = 3
    truth[:4] = 255
    p = write_raster(tmp_path / "pred.tif", pred, tile=32)
    t = write_raster(tmp_path / "truth.tif", truth, nodata=255, tile=32)
    return p, t, pred, truth


def invoke(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def test_table_output(pair):
    p, t, _, _ = pair
    res = invoke(p, t)
    assert res.exit_code == 0, res.output
    out = res.output
    for text in ("overall accuracy", "Cohen's kappa", "NMI (arithmetic)",
                 "adjusted Rand index", "probabilistic Rand index",
                 "variation of information", "bits", "segmentation covering", "F1",
                 "mean IoU of matches", "confusion after Hungarian matching"):
        assert text in out
    assert f"prediction  {p} (5 labels)" in out
    assert "384 nodata" in out  # 4 rows x 96


def test_json_output_matches_scikit_learn_to_four_decimals(pair):
    p, t, pred, truth = pair
    res = invoke(p, t, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    keep = truth.ravel() != 255
    y_true, y_pred = truth.ravel()[keep], pred.ravel()[keep]
    c = r["class"]
    assert c["adjusted_rand_index"] == round(metrics.adjusted_rand_score(y_true, y_pred), 4)
    assert c["normalized_mutual_info"] == round(
        metrics.normalized_mutual_info_score(y_true, y_pred), 4)
    for section in ("class", "region", "instance"):
        for value in r[section].values():
            if isinstance(value, float):
                assert value == round(value, 4)
    assert r["pixels"] == {"total": 96 * 96, "nodata": 384, "ignored": 0,
                           "compared": 96 * 96 - 384}
    assert sorted(c["matching"]) == [[p_, (p_ - 2) % 5] for p_ in range(5)]


def test_ignore_leaves_truth_pixels_out(pair):
    p, t, pred, truth = pair
    r = json.loads(invoke(p, t, "--json", "--ignore", "0").output)
    keep = (truth.ravel() != 255) & (truth.ravel() != 0)
    assert r["ignore"] == [0]
    assert r["pixels"]["compared"] == int(keep.sum())
    assert r["class"]["adjusted_rand_index"] == round(
        metrics.adjusted_rand_score(truth.ravel()[keep], pred.ravel()[keep]), 4)
    assert 0 not in r["class"]["confusion"]["truth_labels"]
    both = json.loads(invoke(p, t, "--json", "--ignore", "0", "--ignore", "4").output)
    assert both["ignore"] == [0, 4]


def test_plain_png_inputs(tmp_path):
    labels = (np.arange(64 * 64).reshape(64, 64) // 1024).astype(np.uint8)
    a = write_raster(tmp_path / "a.png", labels, crs=None, driver="PNG", tile=None)
    b = write_raster(tmp_path / "b.png", labels[::-1], crs=None, driver="PNG", tile=None)
    r = json.loads(invoke(a, b, "--json").output)
    assert r["class"]["overall_accuracy"] == 1.0
    assert r["instance"]["f1"] == 1.0


@pytest.mark.parametrize("case,message", [
    ("shape", "expected two rasters on the same grid"),
    ("crs", "CRS EPSG:32632 differs"),
    ("missing", "no such file"),
    ("bands", "expected a single-band label raster"),
    ("float", "is not a whole number"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, pair, case, message):
    p, _, pred, _ = pair
    other = tmp_path / "other.tif"
    if case == "shape":
        write_raster(other, pred[:, :-1])
    elif case == "crs":
        write_raster(other, pred, crs="EPSG:32632")
    elif case == "bands":
        write_raster(other, np.stack([pred, pred]))
    elif case == "float":
        write_raster(other, pred.astype(np.float32) + 0.5)
    res = CliRunner().invoke(main, ["evaluate", str(p), str(other)])
    assert res.exit_code == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tileseg: error: ")
    assert message in lines[0]


def test_help():
    res = invoke("--help")
    assert res.exit_code == 0 and "--ignore VALUE" in res.output and "--json" in res.output


# ---------------------------------------------------------------- memory stays bounded

# VmHWM, not getrusage: a child's ru_maxrss starts from its parent's (pytest's) peak
PEAK = textwrap.dedent("""
    import sys
    from pipeline.evaluate import evaluate_rasters
    evaluate_rasters(sys.argv[1], sys.argv[2], chunks=256)
    with open("/proc/self/status") as f:
        print("PEAK_KIB", next(l.split()[1] for l in f if l.startswith("VmHWM:")))
""")


def peak_rss_mib(pred, truth) -> float:
    """Peak RSS of a fresh process evaluating the pair (GDAL's block cache kept small)."""
    env = {**os.environ, "GDAL_CACHEMAX": "8"}
    res = subprocess.run([sys.executable, "-c", PEAK, str(pred), str(truth)],
                         capture_output=True, text=True, check=True, env=env)
    kib = next(int(line.split()[1]) for line in res.stdout.splitlines()
               if line.startswith("PEAK_KIB"))
    return kib / 1024


def regions(size: int, dy: int, dx: int, shift: int) -> np.ndarray:
    """Rectangular regions with uint32 IDs (many labels: the np.unique path)."""
    y = (np.arange(size)[:, None] + shift) // dy
    x = (np.arange(size)[None, :] + shift) // dx
    return (y * (size // dx + 2) + x).astype(np.uint32)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_the_image(tmp_path):
    # 16 times the pixels (and chunks): a 4096^2 uint32 raster is 64 MiB in memory
    small, big = 1024, 4096
    peaks = {}
    for size in (small, big):
        a = write_raster(tmp_path / f"a{size}.tif", regions(size, 61, 67, 0), tile=256)
        b = write_raster(tmp_path / f"b{size}.tif", regions(size, 59, 71, 13), tile=256)
        peaks[size] = peak_rss_mib(a, b)
    raster_mib = big * big * 4 / 2**20
    assert peaks[big] - peaks[small] < raster_mib / 2, (peaks, raster_mib)
