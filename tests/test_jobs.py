"""Scheduled jobs: real ``tileseg`` processes, killed and signalled for real.

One writer per output (a lock), ``--overwrite`` that replaces only a complete output,
nothing left behind by a kill once the output is run again, SIGTERM/SIGINT exit codes,
write failures named as output errors, and a Dask worker killed mid-run.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from pipeline.synthetic import make_scene

TILESEG = [sys.executable, "-m", "pipeline.cli"]


@pytest.fixture(scope="module")
def job_scene(tmp_path_factory):
    """A 2048^2 scene: a run takes ~2 s, its label pass ~1 s on one thread."""
    d = tmp_path_factory.mktemp("jobs")
    return make_scene(d / "scene.tif", size=2048, bands=4, n_classes=5, cell=128, border=12,
                      tile=128, seed=3).path


@pytest.fixture
def cfg(tmp_path, job_scene):
    def write(**over) -> Path:
        data = {"input": str(job_scene), "output": "out", "features": ["bands"],
                "chunks": 128, "cluster": {"method": "kmeans", "k": 5, "seed": 0,
                                           "sample_size": 20000},
                "compute": {"n_workers": 1}, **over}
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump(data))
        return p

    return write


def _start(cfg: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([*TILESEG, "run", str(cfg), *args], cwd=cfg.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def _run(cfg: Path, *args: str, **kw) -> tuple[int, str]:
    p = _start(cfg, *args, **kw)
    _, err = p.communicate(timeout=120)
    return p.returncode, err


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended first: {proc.communicate()[1]}"
        assert time.monotonic() < end, f"no {path}"
        time.sleep(0.01)


def _holder(lock: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    """The lock's JSON once its run has written it (the file exists a moment before)."""
    end = time.monotonic() + timeout
    _wait_for(lock, proc, timeout)
    while not (text := lock.read_text()):
        assert proc.poll() is None, f"the run ended first: {proc.communicate()[1]}"
        assert time.monotonic() < end, f"{lock} stayed empty"
        time.sleep(0.01)
    return json.loads(text)


def _kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _labels(out: Path) -> np.ndarray:
    with rasterio.open(out / "labels.tif") as ds:
        return ds.read(1)


def _beside(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("c.yaml",))


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("WARNING")]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_run_on_an_output_exits_2_naming_the_first(cfg):
    c = cfg()
    a = _start(c, "-q")
    holder = _holder(c.parent / ".out.lock", a)
    assert holder["pid"] == a.pid and holder["host"] == socket.gethostname()
    t = time.monotonic()
    rc, err = _run(c, "-q", "--overwrite")
    took = time.monotonic() - t
    assert rc == 2 and took < 2, (rc, took, err)
    line = err.strip().splitlines()[-1]
    assert line.startswith("tileseg: error: out: in use by another run")
    assert f"pid {a.pid} on {socket.gethostname()}, started {holder['started']}" in line
    assert a.wait(timeout=120) == 0, a.communicate()[1]
    assert _beside(c.parent) == ["out"]


def test_stale_lock_of_a_dead_run_is_taken_over_another_hosts_is_not(cfg):
    c = cfg()
    lock = c.parent / ".out.lock"
    pid = _dead_pid()
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                "started": "2026-01-01T00:00:00+00:00", "command": "x"}))
    rc, err = _run(c)
    assert rc == 0, err
    assert [w for w in _warnings(err) if "took over the lock" in w and f"pid {pid}" in w]
    assert len(_warnings(err)) == 1, err
    assert _beside(c.parent) == ["out"]
    other = c.parent / ".out2.lock"
    other.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    rc, err = _run(c, "--set", "output=out2")
    assert rc == 2 and "pid 1 on elsewhere" in err and f"remove {other.name}" in err, err
    assert other.exists() and not (c.parent / "out2").exists()


def test_sigkill_mid_run_then_a_plain_rerun_cleans_up(cfg):
    c = cfg()
    p = _start(c, "-q")
    _wait_for(c.parent / ".out.partial" / "output" / "labels.zarr", p)
    _kill_group(p)
    assert {".out.lock", ".out.partial"} <= set(_beside(c.parent))
    assert not (c.parent / "out").exists()
    rc, err = _run(c)
    assert rc == 0, err
    warned = _warnings(err)
    assert len(warned) == 2, err  # the lock taken over, the staging deleted
    assert "deleted .out.partial" in warned[1] and "--resume" in warned[1]
    assert _beside(c.parent) == ["out"]
    assert not [p for p in (c.parent / "out").rglob("*") if p.name.startswith((".tmp", ".old"))]


def test_killed_overwrite_run_leaves_the_old_output_intact(cfg):
    c = cfg()
    assert _run(c, "-q")[0] == 0
    before = _labels(c.parent / "out")
    stamp = (c.parent / "out" / "report.json").read_bytes()
    p = _start(c, "-q", "--overwrite", "--set", "cluster.k=3")
    _wait_for(c.parent / ".out.partial" / "output" / "labels.zarr", p)
    _kill_group(p)
    assert (c.parent / "out" / "report.json").read_bytes() == stamp
    np.testing.assert_array_equal(_labels(c.parent / "out"), before)
    rc, err = _run(c, "-q", "--overwrite", "--set", "cluster.k=3")
    assert rc == 0, err
    assert json.loads((c.parent / "out" / "report.json").read_text())["k"] == 3
    assert _beside(c.parent) == ["out"]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_the_run_keeps_its_staging_and_says_how_to_resume(cfg, sig, code):
    c = cfg()
    p = _start(c, "-q", "--set", "cluster.k=5")
    _wait_for(c.parent / ".out.partial" / "output" / "labels.zarr", p)
    os.kill(p.pid, sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0] == (f"tileseg: interrupted by {signal.Signals(sig).name}; continue with "
                        f"`tileseg run {c} --set cluster.k=5 --resume`")
    assert _beside(c.parent) == [".out.partial"]  # no lock, no output
    rc, err = _run(c, "--resume", "--set", "cluster.k=5")
    assert rc == 0, err
    assert len(_warnings(err)) == 1 and "resuming from .out.partial" in err, err
    assert _beside(c.parent) == ["out"]
    rc, err = _run(c, "--resume", "--set", "output=other")
    assert rc == 0 and "nothing to resume" in err, err


def test_swap_killed_between_its_renames_is_repaired(cfg, tmp_path):
    """Killed after out -> .out.old: the old output comes back; after both renames:
    .out.old goes. (A kill can not be timed between two renames from outside.)"""
    c = cfg()
    assert _run(c, "-q")[0] == 0
    out, old = tmp_path / "out", tmp_path / ".out.old"
    before = _labels(out)
    out.rename(old)
    (tmp_path / ".out.partial" / "output").mkdir(parents=True)
    rc, err = _run(c)  # restored, then refused: the killed run changed nothing
    assert rc == 2 and "restored the previous output from .out.old" in err, err
    np.testing.assert_array_equal(_labels(out), before)
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "labels.tif").write_text("the old one")
    rc, err = _run(c, "--overwrite")
    assert rc == 0 and "deleted .out.old" in err, err
    assert _beside(tmp_path) == ["out"]


def test_legacy_staging_of_a_dead_run_is_deleted(cfg, tmp_path):
    c = cfg()
    tmp = tmp_path / f".out.tmp-{_dead_pid()}"
    tmp.mkdir()
    (tmp / "labels.tif").write_bytes(b"x" * 100)
    rc, err = _run(c)
    assert rc == 0 and f"deleted {tmp.name}" in err, err
    assert _beside(tmp_path) == ["out"]


def _fsize_limit(limit: int):
    def set_limit() -> None:  # tileseg itself ignores SIGXFSZ: the write fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_file_size_limit_is_an_output_error(cfg, tmp_path):
    c = cfg()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    rc, err = _run(c, "-q", preexec_fn=_fsize_limit(1_000_000), env=env)
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("tileseg: error: output: out/labels.tif: File too large"), line
    assert "cannot read" not in err
    assert _beside(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mount a tmpfs of a few MB and few inodes at ``tmp_path/disk`` (root only)."""
    def mount(size: str, inodes: int) -> Path:
        disk = tmp_path / "disk"
        disk.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}",
                            "tmpfs", str(disk)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(disk)
        return disk

    mounted: list[Path] = []
    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_mid_run_is_an_output_error_and_leaves_nothing(cfg, tmp_path, small_tmpfs):
    """A real full file system (a tmpfs out of inodes while the Zarr chunks are written,
    after the free-space estimate passed): exit 2, "output: ...: No space left on
    device", nothing left on the disk but what was there."""
    disk = small_tmpfs("64m", 60)
    (disk / "keep.txt").write_text("mine")
    c = cfg(output=str(disk / "out"), formats=["cog", "zarr"])
    rc, err = _run(c, "-q")
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"tileseg: error: output: {disk}/out") and \
        "No space left on device" in line, err
    assert "cannot read" not in err
    assert sorted(p.name for p in disk.iterdir()) == ["keep.txt"]


def test_too_small_disk_is_refused_before_the_label_pass(cfg, tmp_path, small_tmpfs):
    disk = small_tmpfs("2m", 10000)
    c = cfg(output=str(disk / "out"), formats=["cog", "zarr"])
    t = time.monotonic()
    rc, err = _run(c, "-q")
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"tileseg: error: output: {disk}/out: needs about "), line
    assert "free" in line and time.monotonic() - t < 60
    assert list(disk.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_an_output_error(cfg, tmp_path):
    c = cfg(output="ro/out")
    (tmp_path / "ro").mkdir(mode=0o555)
    rc, err = _run(c, "-q")
    assert rc == 2 and "tileseg: error: output: ro/out: " in err and "Permission denied" in err


def test_too_little_free_space_is_refused_before_the_label_pass(cfg, tmp_path, monkeypatch):
    from pipeline.config import load_config
    from pipeline.errors import OutputError
    from pipeline.runner import run
    from pipeline.stages import _staging

    class Usage:
        free = 5_000_000

    monkeypatch.setattr(_staging.shutil, "disk_usage", lambda p: Usage)
    monkeypatch.chdir(tmp_path)
    config = load_config(cfg(formats=["cog", "zarr"]))
    with pytest.raises(OutputError) as e:
        run(config)
    # 2048^2 uint8 labels: COG (stream + overviews + COG) 1.64 + Zarr 0.3 a pixel
    assert str(e.value) == "output: out: needs about 8.1 MB, 5.0 MB free"
    assert _beside(tmp_path) == []


@pytest.mark.cluster
def test_worker_killed_mid_run_is_rescheduled(cfg, tmp_path):
    """A LocalCluster worker SIGKILLed during the label pass: same labels, exit 0."""
    import psutil

    c = cfg(output="threads", compute={"n_workers": 2}, formats=["cog"])
    assert _run(c, "-q")[0] == 0
    c = cfg(output="procs", formats=["cog"],
            compute={"scheduler": "processes", "n_workers": 2})
    p = _start(c, "-q")
    _wait_for(tmp_path / ".procs.partial" / "output" / ".labels.tiles", p)
    # the workers: forked by the forkserver (a process with children), no tracker
    workers = [k for k in psutil.Process(p.pid).children(recursive=True)
               if not k.children() and "resource_tracker" not in " ".join(k.cmdline())]
    assert workers, "no worker process"
    max(workers, key=lambda k: sum(k.cpu_times()[:2])).kill()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    np.testing.assert_array_equal(_labels(tmp_path / "procs"), _labels(tmp_path / "threads"))


@pytest.mark.cluster
def test_sigterm_closes_the_workers_of_a_local_cluster(cfg, tmp_path):
    import psutil

    c = cfg(formats=["cog"], compute={"scheduler": "processes", "n_workers": 2})
    p = _start(c, "-q")
    _wait_for(tmp_path / ".out.partial" / "output" / ".labels.tiles", p)
    kids = psutil.Process(p.pid).children(recursive=True)
    os.kill(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and err.strip().endswith("--resume`"), err
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive
    assert _beside(tmp_path) == [".out.partial"]


def test_a_signal_swallowed_where_python_ignores_exceptions_is_sent_again():
    """Raised inside a __del__ (or a gc callback of distributed), Interrupted is lost:
    the signal is delivered again, and stops the command where it can."""
    script = """if True:
        import os, signal, sys, time
        from pipeline._signals import Interrupted, stop_on_signals
        class Dropped:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # the handler raises in here: ignored by Python
        try:
            with stop_on_signals():
                Dropped()
                time.sleep(10)
        except Interrupted as exc:
            sys.exit(exc.exit_code)
    """
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert p.returncode == 143 and time.monotonic() - t < 5, p.stderr
    assert "Exception ignored" not in p.stderr
