"""``tileseg run --resume``: a run killed with SIGKILL continues from its finished chunks.

Real subprocesses, killed (their whole process group) once the ledger lists some chunks;
the resumed output is compared with an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
import zarr

from pipeline.synthetic import make_scene

TILESEG = [sys.executable, "-m", "pipeline.cli"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    return make_scene(d / "scene.tif", size=2048, bands=4, n_classes=5, cell=128, border=12,
                      tile=128, seed=3).path


def _config(d: Path, scene: Path, **over) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    data = {"input": str(scene), "output": "out", "features": ["bands"], "chunks": 128,
            "cluster": {"method": "kmeans", "k": 5, "seed": 0, "sample_size": 20000},
            "postprocess": {"segments": {"connectivity": 8}, "min_size": 16},
            "compute": {"n_workers": 1}, **over}
    p = d / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _start(cfg: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*TILESEG, "run", str(cfg), "-q", *args], cwd=cfg.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _run(cfg: Path, *args: str) -> tuple[int, str]:
    p = _start(cfg, *args)
    _, err = p.communicate(timeout=180)
    return p.returncode, err


def _kill_after(cfg: Path, lines: int = 3, timeout: float = 120) -> None:
    """Start a run and SIGKILL its process group once its ledger has ``lines`` lines."""
    p = _start(cfg)
    ledger = cfg.parent / ".out.partial" / "ledger.jsonl"
    end = time.monotonic() + timeout
    while not (ledger.exists() and ledger.read_text().count("\n") >= lines):
        assert p.poll() is None, f"the run ended first: {p.communicate()[1]}"
        assert time.monotonic() < end, "no ledger"
        time.sleep(0.005)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    assert not (cfg.parent / "out").exists(), "killed too late"


def _raster(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _same_outputs(a: Path, b: Path) -> None:
    for name in ("labels.tif", "segments.tif"):
        np.testing.assert_array_equal(_raster(a / name), _raster(b / name), err_msg=name)
    for name in ("labels.zarr", "segments.zarr"):
        za, zb = (zarr.open_group(str(d / name), mode="r")[name[:-5]] for d in (a, b))
        np.testing.assert_array_equal(za[:], zb[:], err_msg=name)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "segments.parquet"),
                                  pd.read_parquet(b / "segments.parquet"))
    ma, mb = (json.loads((d / "model.json").read_text()) for d in (a, b))
    assert ma["centroids"] == mb["centroids"]
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert ra["segments"] == rb["segments"]
    assert ra["classes"] == rb["classes"] if "classes" in ra else True


@pytest.fixture(scope="module")
def reference(tmp_path_factory, scene):
    cfg = _config(tmp_path_factory.mktemp("ref"), scene)
    rc, err = _run(cfg)
    assert rc == 0, err
    return cfg.parent / "out"


def test_sigkill_then_resume_reuses_chunks_and_matches_an_uninterrupted_run(
        tmp_path, scene, reference):
    cfg = _config(tmp_path, scene)
    _kill_after(cfg)
    rc, err = _run(cfg, "--resume", "--set", "cluster.k=4")
    assert rc == 2, err
    last = err.strip().splitlines()[-1]
    assert "cluster.k: 5 -> 4" in last and "without --resume" in last, err
    assert (tmp_path / ".out.partial" / "manifest.json").exists()  # staging kept
    rc, err = _run(cfg, "--resume")
    assert rc == 0, err
    _same_outputs(reference, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    resume = report["resume"]
    assert 0 < resume["chunks_reused"] < resume["chunks_total"] == 256, resume
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "out"]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]


def test_changed_input_is_refused(tmp_path, scene):
    import shutil

    own = tmp_path / "scene.tif"
    shutil.copy(scene, own)
    cfg = _config(tmp_path, own)
    _kill_after(cfg)
    os.utime(own, ns=(1, 1))
    rc, err = _run(cfg, "--resume")
    assert rc == 2 and "input differs" in err.strip().splitlines()[-1], err
    assert (tmp_path / ".out.partial").exists()


def test_corrupt_chunk_is_computed_again(tmp_path, scene, reference):
    cfg = _config(tmp_path, scene)
    _kill_after(cfg, lines=6)
    ledger = tmp_path / ".out.partial" / "ledger.jsonl"
    rec = [json.loads(line) for line in ledger.read_text().splitlines()
           if line.endswith("}")]
    labels = [r for r in rec if r["raster"] == "labels"]
    store = zarr.open_array(str(tmp_path / ".out.partial" / "output" / "labels.zarr"),
                            path="labels", mode="r+")
    (y0, y1), (x0, x1) = labels[0]["region"]
    store[y0:y1, x0:x1] = (store[y0:y1, x0:x1] + 1) % 5  # a chunk that lies
    rc, err = _run(cfg, "--resume")
    assert rc == 0, err
    _same_outputs(reference, tmp_path / "out")
    resume = json.loads((tmp_path / "out" / "report.json").read_text())["resume"]
    assert resume["chunks_reused"] == len(labels) - 1, resume


def test_resume_without_reusable_work_and_a_second_kill(tmp_path, scene, reference):
    """A torn ledger line is ignored; a resumed run killed again resumes again."""
    cfg = _config(tmp_path, scene)
    _kill_after(cfg)
    ledger = tmp_path / ".out.partial" / "ledger.jsonl"
    with open(ledger, "a") as f:
        f.write('{"raster": "labels", "reg')  # torn by the kill
    p = _start(cfg, "--resume")
    n = ledger.read_text().count("\n")
    end = time.monotonic() + 120
    while ledger.read_text().count("\n") < n + 3 and p.poll() is None:
        assert time.monotonic() < end
        time.sleep(0.005)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    assert not (tmp_path / "out").exists(), "killed too late"
    rc, err = _run(cfg, "--resume")
    assert rc == 0, err
    _same_outputs(reference, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "out"]


def test_resume_on_a_local_cluster(tmp_path, scene, reference):
    """With ``scheduler: processes`` the workers write the Zarr chunks; a resume reuses them."""
    cfg = _config(tmp_path, scene, compute={"scheduler": "processes", "n_workers": 2})
    _kill_after(cfg, lines=6)
    rc, err = _run(cfg, "--resume")
    assert rc == 0, err
    _same_outputs(reference, tmp_path / "out")
    resume = json.loads((tmp_path / "out" / "report.json").read_text())["resume"]
    assert resume["chunks_reused"] > 0, resume
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "out"]


def test_resume_with_merging_sweeps_half_written_chunk_files(tmp_path, scene):
    """A chunk file a kill left half-written (zarr's ``*.partial``) never reaches the output;
    a resumed run with region merging gives the merges of an uninterrupted one."""
    merge = {"segments": {"connectivity": 8}, "min_size": 16,
             "merge": {"criterion": "baatz_schape", "regions": 50, "boundary": 1.0}}
    ref = _config(tmp_path / "ref", scene, postprocess=merge)
    rc, err = _run(ref)
    assert rc == 0, err
    cfg = _config(tmp_path / "k", scene, postprocess=merge)
    _kill_after(cfg)
    store = tmp_path / "k" / ".out.partial" / "output" / "labels.zarr" / "labels"
    planted = store / "c" / "0" / "0.0123456789abcdef.partial"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"torn")
    rc, err = _run(cfg, "--resume")
    assert rc == 0, err
    a, b = tmp_path / "ref" / "out", tmp_path / "k" / "out"
    np.testing.assert_array_equal(_raster(a / "segments.tif"), _raster(b / "segments.tif"))
    pd.testing.assert_frame_equal(pd.read_parquet(a / "hierarchy.parquet"),
                                  pd.read_parquet(b / "hierarchy.parquet"))
    assert not list(b.rglob("*.partial")) and not list((tmp_path / "k").glob(".*"))
    report = json.loads((b / "report.json").read_text())
    assert report["segments"]["merge"]["regions"] == 50 and report["resume"]["chunks_reused"]
