"""A real Dask cluster started the usual way (`dask scheduler` + `dask worker`), by file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.compute import dask_context
from pipeline.config import ComputeConfig, parse_config
from pipeline.runner import run

pytestmark = pytest.mark.cluster


def _env(**extra: str) -> dict[str, str]:
    """A worker's environment: none of this process's AWS or GDAL settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "GDAL_", "CPL_", "VSI_"))}
    env.update(extra)
    return env


@contextmanager
def dask_cluster(where: Path, nworkers: int = 2, **worker_env: str) -> Iterator[Path]:
    """Start ``dask scheduler --scheduler-file`` and ``dask worker`` in ``where``."""
    from distributed import Client

    where.mkdir(parents=True, exist_ok=True)
    sfile = where / "scheduler.json"
    cmd = [sys.executable, "-m", "dask"]
    procs = []
    try:
        procs.append(subprocess.Popen(
            [*cmd, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sfile)], cwd=where, env=_env(), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=open(where / "scheduler.log", "w")))
        deadline = time.monotonic() + 60
        while not (sfile.exists() and sfile.stat().st_size):
            assert time.monotonic() < deadline and procs[0].poll() is None, "no scheduler"
            time.sleep(0.1)
        if nworkers:
            procs.append(subprocess.Popen(
                [*cmd, "worker", "--scheduler-file", str(sfile), "--nworkers", str(nworkers),
                 "--nthreads", "1", "--no-dashboard"], cwd=where, env=_env(**worker_env),
                start_new_session=True, stdout=subprocess.DEVNULL,
                stderr=open(where / "worker.log", "w")))
            with Client(json.loads(sfile.read_text())["address"], timeout=30) as client:
                client.wait_for_workers(nworkers, timeout=60)
        yield sfile
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Path]:
    """A scheduler and two worker processes, in a directory of their own."""
    with dask_cluster(tmp_path_factory.mktemp("cluster")) as sfile:
        yield sfile


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _base(scene) -> dict:
    return {"input": str(scene.path), "features": ["bands"],
            "cluster": {"method": "kmeans", "k": 5, "seed": 2}, "formats": ["cog"],
            "postprocess": {"segments": {"connectivity": 8}, "min_size": 16}}


def test_scheduler_file_run_equals_threads_run(cluster, scene, tmp_path, monkeypatch):
    """The same outputs on a cluster started elsewhere; the output is a relative path
    (the workers run in another directory: the segments' spill path is absolute)."""
    threads = run(parse_config({**_base(scene), "output": str(tmp_path / "t")}))
    monkeypatch.chdir(tmp_path)
    by_file = run(parse_config({**_base(scene), "output": "f", "chunks": 96,
                                "compute": {"scheduler_file": str(cluster)}}))
    assert by_file.report["config"]["compute"]["scheduler"] == "file"
    for name in ("labels.tif", "segments.tif"):
        np.testing.assert_array_equal(_read(tmp_path / "f" / name),
                                      _read(tmp_path / "t" / name))
    assert by_file.report["segments"] == threads.report["segments"]


def test_workers_that_see_the_staging_write_the_zarr_chunks(cluster, scene, tmp_path,
                                                             caplog):
    """A cluster reached by its scheduler file, on this machine's file system: the
    workers write the Zarr chunks themselves (the client keeps only the GeoTIFF)."""
    base = {**_base(scene), "formats": ["cog", "zarr"]}
    threads = run(parse_config({**base, "output": str(tmp_path / "t")}))
    with caplog.at_level("INFO", logger="pipeline.runner"):
        by_file = run(parse_config({**base, "output": str(tmp_path / "f"), "chunks": 96,
                                    "compute": {"scheduler_file": str(cluster)}}))
    assert any("they write the Zarr chunks" in r.getMessage() for r in caplog.records)
    for name in ("labels", "segments"):
        a, b = (xr.open_zarr(d / f"{name}.zarr")[name].values for d in (threads.output,
                                                                          by_file.output))
        np.testing.assert_array_equal(a, b)
    assert not list((tmp_path / "f").rglob(".probe-*"))


def test_gdal_and_aws_settings_reach_workers_started_elsewhere(cluster, scene, tmp_path,
                                                               monkeypatch):
    """Workers started without any AWS variable read s3:// input: forwarded by the run."""
    import boto3
    from _s3_server import moto_server, use_s3

    with moto_server() as endpoint:
        use_s3(monkeypatch, endpoint)
        boto3.client("s3").create_bucket(Bucket="data")
        boto3.client("s3").upload_file(str(scene.path), "data", "scene.tif")
        monkeypatch.setenv("CPL_TILESEG_MARK", "forwarded")
        with dask_context(ComputeConfig(scheduler_file=str(cluster)),
                          sources="s3://data/scene.tif") as client:
            seen = client.run(lambda: {k: os.environ.get(k) for k in (
                "CPL_TILESEG_MARK", "AWS_S3_ENDPOINT", "AWS_VIRTUAL_HOSTING",
                "GDAL_CACHEMAX", "GDAL_HTTP_MAX_RETRY")})
        host = endpoint.removeprefix("http://")
        assert len(seen) == 2 and all(v == {
            "CPL_TILESEG_MARK": "forwarded", "AWS_S3_ENDPOINT": host,
            "AWS_VIRTUAL_HOSTING": "FALSE", "GDAL_CACHEMAX": "64",
            "GDAL_HTTP_MAX_RETRY": "5"} for v in seen.values()), seen
        config = {**_base(scene), "input": "s3://data/scene.tif", "chunks": 160,
                  "compute": {"scheduler_file": str(cluster)}}
        config["postprocess"] = {}
        got = run(parse_config({**config, "output": str(tmp_path / "s3")}))
    want = run(parse_config({**_base(scene), "postprocess": {}, "output": str(tmp_path / "t")}))
    np.testing.assert_array_equal(_read(tmp_path / "s3" / "labels.tif"),
                                  _read(tmp_path / "t" / "labels.tif"))
    assert got.report["classes"] == want.report["classes"]


def _cli(write_config, scene, compute: dict, **extra: object):
    out = write_config({}).parent / "out"
    config = write_config({**_base(scene), "output": str(out), "compute": compute, **extra})
    return CliRunner().invoke(main, ["run", str(config), "-q"])


@pytest.mark.parametrize("content, expected", [
    (None, "no such file; start the cluster with `dask scheduler --scheduler-file"),
    ("{not json", "not a scheduler file (expected the JSON that `dask scheduler "),
    ('{"type": "Scheduler"}', "names no scheduler address"),
])
def test_bad_scheduler_file_is_one_line_exit_2(scene, write_config, tmp_path, content,
                                               expected):
    sfile = tmp_path / "s.json"
    if content is not None:
        sfile.write_text(content)
    r = _cli(write_config, scene, {"scheduler_file": str(sfile)})
    assert r.exit_code == 2
    assert r.output.startswith(f"tileseg: error: compute.scheduler_file: {sfile}: {expected}")
    assert r.output.count("\n") == 1


def test_unreachable_scheduler_is_one_line_exit_2(scene, write_config, tmp_path):
    sfile = tmp_path / "s.json"
    sfile.write_text(json.dumps({"address": "tcp://127.0.0.1:9"}))  # nothing listens
    r = _cli(write_config, scene, {"scheduler_file": str(sfile), "connect_timeout": 1})
    assert r.exit_code == 2
    assert r.output.startswith(f"tileseg: error: compute.scheduler_file: {sfile}: no "
                               "scheduler answers at tcp://127.0.0.1:9 within 1 s (")
    assert r.output.count("\n") == 1


def test_both_scheduler_and_scheduler_file_refused(scene, write_config):
    r = _cli(write_config, scene, {"scheduler_file": "s.json", "scheduler": "tcp://h:1"})
    assert r.exit_code == 2 and "give scheduler (an address) or scheduler_file" in r.output


def test_input_the_workers_cannot_see_is_one_line_exit_2(cluster, scene, write_config,
                                                         tmp_path, monkeypatch):
    (tmp_path / "scene.tif").symlink_to(scene.path)
    monkeypatch.chdir(tmp_path)  # a relative path: the workers run in another directory
    r = _cli(write_config, scene, {"scheduler_file": str(cluster)}, input="scene.tif")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("tileseg: error: scene.tif: no such file (working directory ")
    assert "not readable from the cluster's worker tcp://127.0.0.1:" in r.output
    assert r.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_version_mismatch_is_one_line_exit_2(scene, write_config, tmp_path):
    """A worker whose environment has another tileseg installed."""
    fake = tmp_path / "site" / "tileseg-9.9.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: tileseg\nVersion: 9.9\n")
    with dask_cluster(tmp_path / "cl", nworkers=1, PYTHONPATH=str(fake.parent)) as sfile:
        r = _cli(write_config, scene, {"scheduler_file": str(sfile)})
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"tileseg: error: compute.scheduler_file: {sfile}: versions "
                               "differ from this process's: tileseg 9.9 on tcp://127.0.0.1:")
    here = version("tileseg")
    assert r.output.rstrip().endswith(f"(here {here}); install the same versions everywhere")
    assert r.output.count("\n") == 1


def test_scheduler_without_workers_is_one_line_exit_2(scene, write_config, tmp_path):
    with dask_cluster(tmp_path / "cl", nworkers=0) as sfile:
        r = _cli(write_config, scene, {"scheduler_file": str(sfile), "connect_timeout": 1})
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"tileseg: error: compute.scheduler_file: {sfile}: the "
                               "scheduler at tcp://127.0.0.1:")
    assert "has no workers (none joined within 1 s); start some with `dask worker`" in r.output
    assert r.output.count("\n") == 1
