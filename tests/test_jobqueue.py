"""``compute.scheduler: slurm | pbs`` through dask-jobqueue: job scripts, errors, a run.

The run goes through dask-jobqueue and a stand-in ``sbatch`` on PATH that runs the job
script on this machine (the batch system is the only thing not real here).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.compute import job_script
from pipeline.config import ComputeConfig, parse_config
from pipeline.runner import run

pytest.importorskip("dask_jobqueue")

LOCAL = {"scheduler_options": {"host": "127.0.0.1"}}


def test_slurm_job_script_rendered():
    script = job_script(ComputeConfig(scheduler="slurm", jobqueue={
        "cores": 16, "memory": "60GiB", "processes": 4, "walltime": "02:00:00",
        "queue": "normal", "account": "proj", "job_extra_directives": ["--requeue"], **LOCAL}))
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in ("#SBATCH -p normal", "#SBATCH -A proj", "#SBATCH --cpus-per-task=16",
                      "#SBATCH --mem=60G", "#SBATCH -t 02:00:00", "#SBATCH --requeue"):
        assert directive in lines, script
    worker = lines[-1]
    assert "-m distributed.cli.dask_worker tcp://127.0.0.1:" in worker
    assert "--nworkers 4" in worker and "--nthreads 4" in worker


def test_pbs_job_script_rendered():
    script = job_script(ComputeConfig(scheduler="pbs", jobqueue={
        "cores": 8, "memory": "32GB", "walltime": "01:00:00", "queue": "workq",
        "resource_spec": "select=1:ncpus=8:mem=32GB", **LOCAL}))
    lines = script.splitlines()
    for directive in ("#PBS -q workq", "#PBS -l select=1:ncpus=8:mem=32GB",
                      "#PBS -l walltime=01:00:00"):
        assert directive in lines, script


def test_dry_run_shows_the_job_script(scene, write_config):
    config = write_config({"input": str(scene.path), "output": "out",
                           "compute": {"scheduler": "slurm", "jobqueue": {
                               "cores": 2, "memory": "4GiB", **LOCAL}}})
    r = CliRunner().invoke(main, ["run", str(config), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "#SBATCH --cpus-per-task=2" in r.output


@pytest.mark.parametrize("compute, expected", [
    ({"scheduler": "slurm", "jobqueue": LOCAL},
     "compute.scheduler: slurm: You must specify how much cores and memory per job"),
    ({"scheduler": "pbs", "jobqueue": {"cores": 1, "memory": "1GiB", **LOCAL}},
     "compute.scheduler: pbs: qsub is not on PATH; run tileseg where jobs are submitted"),
])
def test_jobqueue_errors_are_one_line_exit_2(scene, write_config, tmp_path, monkeypatch,
                                             compute, expected):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no qsub, no sbatch
    config = write_config({"input": str(scene.path), "output": str(tmp_path / "out"),
                           "compute": compute})
    r = CliRunner().invoke(main, ["run", str(config), "-q"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"tileseg: error: {expected}")
    assert r.output.count("\n") == 1


def test_unknown_jobqueue_option_named(scene, write_config):
    config = write_config({"input": str(scene.path), "output": "out", "compute": {
        "scheduler": "slurm", "jobqueue": {"cores": 1, "memroy": "1GiB"}}})
    r = CliRunner().invoke(main, ["run", str(config), "-q"])
    assert r.exit_code == 2
    assert "unknown dask-jobqueue option 'memroy' (did you mean 'memory'?)" in r.output


def _fake_slurm(bin_dir: Path) -> None:
    """``sbatch`` that runs the job script here in its own session; ``scancel`` ends it."""
    bin_dir.mkdir()
    scripts = {
        "sbatch": '#!/bin/bash\nd=$(dirname "$0")\ncp "${@: -1}" "$d/job.$$.sh"\n'
                  'setsid bash "$d/job.$$.sh" > "$d/job.$$.log" 2>&1 < /dev/null &\n'
                  'echo "Submitted batch job $!"\n',
        "scancel": '#!/bin/bash\nfor id in "$@"; do kill -TERM -- "-$id" 2>/dev/null; done\n'
                   "exit 0\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)


@pytest.mark.cluster
def test_slurm_run_equals_threads_run(scene, tmp_path, monkeypatch):
    _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    base = {"input": str(scene.path), "features": ["bands"], "formats": ["cog"],
            "cluster": {"method": "kmeans", "k": 5, "seed": 2}}
    slurm = {"scheduler": "slurm", "n_workers": 2, "jobqueue": {
        "cores": 1, "memory": "1GiB", "processes": 1, "death_timeout": 30, **LOCAL}}
    run(parse_config({**base, "output": str(tmp_path / "s"), "chunks": 128,
                      "compute": slurm}))
    run(parse_config({**base, "output": str(tmp_path / "t")}))
    jobs = sorted((tmp_path / "bin").glob("job.*.sh"))
    assert len(jobs) == 2 and "#SBATCH --cpus-per-task=1" in jobs[0].read_text()
    with rasterio.open(tmp_path / "s" / "labels.tif") as a, \
            rasterio.open(tmp_path / "t" / "labels.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
