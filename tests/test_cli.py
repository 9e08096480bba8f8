from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.testing import write_raster


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def good(tmp_path, scene):
    def make(**over):
        cfg = {"input": str(scene.path), "output": str(tmp_path / "out"),
               "cluster": {"k": 4, "sample_size": 5000}}
        cfg.update(over)
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump(cfg))
        return p

    return make


def test_run_writes_outputs_and_quiet_is_silent(good, tmp_path):
    res = _invoke("run", good(), "-q")
    assert res.exit_code == 0, res.output
    assert res.output == ""
    assert (tmp_path / "out" / "labels.tif").exists()


def test_run_verbose_and_set(good, tmp_path):
    res = _invoke("run", good(), "--set", "cluster.k=3", "--set", "formats=[cog]", "-v")
    assert res.exit_code == 0, res.output
    assert "3 classes" in res.output
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert model["k"] == 3
    assert not (tmp_path / "out" / "labels.zarr").exists()


def test_dry_run_computes_and_writes_nothing(good, tmp_path):
    res = _invoke("run", good(), "--dry-run")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["input"]["bands"] == 4 and plan["features"] == ["band1", "band2", "band3",
                                                                 "band4"]
    assert "labels.tif" in plan["writes"]
    assert not (tmp_path / "out").exists()


def _bad_cases(tmp_path, scene):
    text = tmp_path / "text.tif"
    text.write_text("not a raster at all")
    trunc = tmp_path / "trunc.tif"
    data = scene.path.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    nod = write_raster(tmp_path / "nodata.tif", np.zeros((2, 40, 40), np.uint16), nodata=0,
                       tile=16)
    few = np.zeros((1, 32, 32), np.uint8)
    few[0, 0, :3] = [1, 2, 3]
    few_path = write_raster(tmp_path / "few.tif", few, nodata=0, tile=16)
    return {
        "missing input": ({"input": str(tmp_path / "missing.tif")}, "missing.tif: no such file"),
        "not a raster": ({"input": str(text)}, "text.tif: not a readable raster"),
        "truncated": ({"input": str(trunc)}, "trunc.tif: cannot read pixels rows"),
        "k < 2": ({"cluster": {"k": 1}}, "key 'cluster.k'"),
        "k > valid": ({"input": str(few_path), "cluster": {"k": 4}},
                      "few.tif: only 3 valid pixels were found for k=4"),
        "unknown key": ({"clustre": {}}, "unknown key 'clustre'"),
        "all nodata": ({"input": str(nod)}, "nodata.tif: every pixel is nodata"),
    }


@pytest.mark.parametrize("case", ["missing input", "not a raster", "truncated", "k < 2",
                                  "k > valid", "unknown key", "all nodata"])
def test_bad_input_exit_2_one_line_nothing_written(case, good, tmp_path, scene):
    over, message = _bad_cases(tmp_path, scene)[case]
    cfg = good(**over)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tileseg: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_output_is_left_untouched(good, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("mine")
    res = _invoke("run", good())
    assert res.exit_code == 2
    assert "out: output exists; pass --overwrite" in res.stderr
    assert (out / "x").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_verbose_shows_traceback(good, tmp_path):
    cfg = good(input=str(tmp_path / "missing.tif"))
    res = _invoke("run", cfg, "-v")
    assert res.exit_code != 0 and res.exception is not None


def test_missing_config_file(tmp_path):
    res = _invoke("run", tmp_path / "none.yaml")
    assert res.exit_code == 2 and "none.yaml: cannot read the config" in res.stderr


def test_help_is_fast_and_lists_commands():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.cli", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "run" in proc.stdout and "demo" in proc.stdout
    heavy = [line for line in proc.stderr.splitlines()
             if line.rstrip().endswith((" dask", " xarray", " rasterio"))]
    assert heavy == []


def test_demo_small(tmp_path):
    res = _invoke("demo", "--output", tmp_path / "demo", "--size", "256",
                  "--scheduler", "threads")
    assert res.exit_code == 0, res.output
    assert "adjusted Rand index against the truth: " in res.output
    ari = float(res.output.split("truth: ")[1].split()[0])
    assert ari >= 0.95
    for name in ("scene.tif", "truth.tif", "config.yaml", "result/labels.tif",
                 "result/labels.zarr", "result/model.json", "result/report.json"):
        assert (tmp_path / "demo" / name).exists(), name
    res = _invoke("demo", "--output", tmp_path / "demo", "--size", "256")
    assert res.exit_code == 2 and "--overwrite" in res.stderr


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_a_picture_without_map_coordinates_runs_quietly(tmp_path, scheduler):
    """A PNG has no georeferencing: tileseg works in pixels, and says nothing about it."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    picture = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    picture[16:40, 16:40] = 250
    iio.imwrite(tmp_path / "p.png", picture)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "input": str(tmp_path / "p.png"), "output": str(tmp_path / "out"),
        "features": ["lab"], "cluster": {"k": 2, "seed": 0},
        "postprocess": {"instances": {"class": "auto"}},
        "compute": {"scheduler": scheduler, "n_workers": 1}}))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert (tmp_path / "out" / "instances.tif").exists()
