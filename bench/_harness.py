"""Shared helpers of the benchmark scripts: scenes, process measurement, label writing.

Every script in ``bench/`` is run as ``python bench/<script>.py``; this module sits
beside them and is imported as ``_harness`` (the script's directory is on ``sys.path``).
It imports nothing heavy at module level, so the measured peer scripts pay only for
what they use.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = BENCH / "data"
OUT = BENCH / "out"

#: Exit code of a peer script that cannot run here (missing library, too little memory).
SKIP_EXIT = 3
#: Prefix of the one stdout line in which a script hands its details to the harness.
RESULT_PREFIX = "BENCH-RESULT "

# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class SceneParams:
    """What identifies a benchmark scene (the rest are make_scene's defaults)."""

    size: int = 12000
    bands: int = 4
    tile: int = 512
    seed: int = 0
    dtype: str = "uint16"
    crs: str = "EPSG:32633"

    def default_path(self) -> Path:
        return DATA / (f"scene-{self.size}x{self.size}x{self.bands}-{self.dtype}"
                       f"-t{self.tile}-s{self.seed}.tif")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".params.json")


def scene_is_current(path: Path, params: SceneParams) -> bool:
    """True when ``path`` is a complete scene written with ``params``."""
    side = _sidecar(path)
    if not (path.exists() and side.exists()):
        return False
    try:
        return json.loads(side.read_text()) == asdict(params)
    except (OSError, ValueError):
        return False


def ensure_scene(params: SceneParams, path: Path | None = None, *,
                 quiet: bool = False) -> tuple[Path, bool]:
    """Write the scene unless an identical one exists; return (path, built).

    The file is written under a temporary name and renamed when complete, and its
    parameters go to a ``.params.json`` sidecar, so an interrupted build is never reused.
    """
    from pipeline.synthetic import make_scene

    path = Path(path) if path is not None else params.default_path()
    if scene_is_current(path, params):
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    side = _sidecar(path)
    side.unlink(missing_ok=True)
    t0 = time.perf_counter()
    if not quiet:
        print(f"building {path} ({params.size} x {params.size} x {params.bands} "
              f"{params.dtype}, {params.tile}-pixel tiles) ...", file=sys.stderr, flush=True)
    try:
        make_scene(tmp, size=params.size, bands=params.bands, dtype=params.dtype,
                   tile=params.tile, seed=params.seed, crs=params.crs)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    side.write_text(json.dumps(asdict(params)))
    if not quiet:
        print(f"built {path} in {time.perf_counter() - t0:.0f} s "
              f"({path.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr, flush=True)
    return path, True


def tile_for(size: int, tile: int = 512) -> int:
    """The internal tile side for a scene of ``size`` pixels (at most the image, >= 16)."""
    side = tile
    while side > 16 and side > size:
        side //= 2
    return side


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    """One whole-process run."""

    cmd: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_tree_mib: float
    maxrss_single_mib: float
    max_processes: int
    log: str
    result: dict[str, Any] = field(default_factory=dict)
    #: (seconds since start, process-tree RSS MiB), one point per 0.25 s at most
    timeline: list[tuple[float, float]] = field(default_factory=list)
    #: the measuring process's own peak RSS (VmHWM) when it started the child
    parent_hwm_mib: float = 0.0

    @property
    def peak_rss_mib(self) -> float:
        """The larger of the polled process-tree sum and the kernel's per-process max.

        The kernel's ``ru_maxrss`` of a child counts the measuring process's own peak
        before the child's ``exec`` (Linux carries the old address space's high-water
        mark over, and ``subprocess`` starts children with ``vfork``): a harness that
        held 1 GiB once reported 1 GiB for ``/bin/true``. :func:`measure` resets its
        own peak first where Linux allows (``/proc/self/clear_refs``); a ``ru_maxrss``
        not above the measuring process's peak at the start is not trusted, and the
        polled sum is used (unless the child exited before it was polled once).
        """
        if self.maxrss_single_mib <= self.parent_hwm_mib and self.peak_rss_tree_mib > 0:
            return self.peak_rss_tree_mib
        return max(self.peak_rss_tree_mib, self.maxrss_single_mib)


def _reset_own_peak_rss() -> float:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); return it in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def measure(cmd: list[str], *, env: dict[str, str] | None = None, log_path: Path,
            cwd: Path | None = None, interval: float = 0.02) -> Measurement:
    """Run ``cmd`` as a child process and measure it as a whole.

    Wall time runs from just before the process is started to its exit (interpreter
    start-up and imports included). Memory: a thread polls the resident set size of the
    child and all its descendants (Dask worker processes, nannies, ...) every
    ``interval`` seconds and keeps the peak of their sum; ``os.wait4`` adds the kernel's
    exact ``ru_maxrss`` of the largest single process among the child and its reaped
    descendants (unless it may be this process's own peak: see
    :attr:`Measurement.peak_rss_mib`), and their user + system CPU time (or, if
    larger, the sum of every polled process's own CPU time, which also covers
    descendants never reaped into the child, such as workers forked from a forkserver).
    """
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    peak = [0]
    nproc = [1]
    cpu_seen: dict[int, float] = {}  # pid -> its own user + system CPU, last polled
    timeline: list[tuple[float, float]] = []
    stop = threading.Event()
    parent_hwm = _reset_own_peak_rss()
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def poll() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    cpu_seen[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            nproc[0] = max(nproc[0], len(procs))
            now = time.perf_counter() - t0
            mib = total / 2**20
            if not timeline or now - timeline[-1][0] >= 0.25:
                timeline.append((round(now, 2), round(mib, 1)))
            elif mib > timeline[-1][1]:  # keep the highest point of each 0.25 s
                timeline[-1] = (timeline[-1][0], round(mib, 1))
            stop.wait(interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    poller.join()
    text = log_path.read_text(errors="replace")
    result: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    return Measurement(
        cmd=[str(c) for c in cmd], returncode=proc.returncode, wall_s=wall,
        # os.wait4 counts the child and the descendants reaped up to it; processes
        # nobody reaps into it (a multiprocessing forkserver and the workers forked
        # from it) only the polling sees: the larger of the two
        cpu_s=max(usage.ru_utime + usage.ru_stime, sum(cpu_seen.values())),
        peak_rss_tree_mib=peak[0] / 2**20,
        maxrss_single_mib=usage.ru_maxrss / 1024, max_processes=nproc[0], log=text,
        result=result, timeline=timeline, parent_hwm_mib=parent_hwm,
    )


def stages_table(rows: list[dict[str, Any]], heading: str, *, label: str = "approach",
                 missing: str = "") -> list[str]:
    """Markdown lines of the rows' ``timings_s`` (report.json stages), one column each.

    Empty when no row has stage timings; a stage a row lacks prints ``missing``.
    """
    staged = [r for r in rows if r.get("timings_s")]
    if not staged:
        return []
    keys = list(dict.fromkeys(k for r in staged for k in r["timings_s"]))
    lines = ["", heading, "", f"| {label} | " + " | ".join(keys) + " |",
             "| --- | " + " | ".join("---:" for _ in keys) + " |"]
    for r in staged:
        lines.append(f"| {r['approach']} | " + " | ".join(
            missing if (v := r["timings_s"].get(k)) is None else format(v, ".2f")
            for k in keys) + " |")
    return lines


def report_result(**info: Any) -> None:
    """Print the line the harness reads back from a measured script."""
    print(RESULT_PREFIX + json.dumps(info), flush=True)


def skip(reason: str) -> None:
    """Exit a peer script that cannot run here, saying why."""
    print(f"SKIP: {reason}", flush=True)
    raise SystemExit(SKIP_EXIT)


# --------------------------------------------------------------------------- peers


def label_profile(src: Any, *, tile: int = 512) -> dict[str, Any]:
    """The uint8 label GeoTIFF every peer and the floor write: tiled, DEFLATE, predictor 2."""
    side = tile_for(max(src.width, src.height), tile)
    return dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8",
                crs=src.crs, transform=src.transform, nodata=255, tiled=True,
                blockxsize=side, blockysize=side, compress="deflate", predictor=2,
                BIGTIFF="IF_SAFER")


def windows(height: int, width: int, side: int) -> list[Any]:
    """Row-major ``side`` x ``side`` windows covering the raster."""
    from rasterio.windows import Window

    return [Window(x, y, min(side, width - x), min(side, height - y))
            for y in range(0, height, side) for x in range(0, width, side)]


def valid_mask(block: Any, nodata: float | None) -> Any:
    """Pixels of a (bands, h, w) block where no band is nodata (or NaN)."""
    import numpy as np

    ok = np.ones(block.shape[1:], dtype=bool)
    if nodata is not None:
        ok &= (block != nodata).all(axis=0)
    if block.dtype.kind == "f":
        ok &= np.isfinite(block).all(axis=0)
    return ok


def sample_pass(path: Path, n: int, seed: int = 0) -> tuple[Any, int]:
    """Read every tile once (one thread) and keep about ``n`` random valid pixels.

    Returns ``(sample float32 (n, bands), n_valid)``: what a peer built from
    scikit-learn or faiss does to fit on a bounded sample.
    """
    import numpy as np
    import rasterio

    with rasterio.open(path) as src:
        side = src.block_shapes[0][0]
        rate = min(1.0, 1.25 * n / (src.width * src.height))
        parts = []
        n_valid = 0
        for w in windows(src.height, src.width, side):
            block = src.read(window=w)
            ok = valid_mask(block, src.nodata)
            n_valid += int(ok.sum())
            rng = np.random.default_rng([seed, w.row_off, w.col_off])
            keep = ok & (rng.random(ok.shape) < rate)
            parts.append(block[:, keep].T.astype(np.float32))
    sample = np.concatenate(parts)
    if len(sample) > n:
        sample = sample[np.random.default_rng(seed).choice(len(sample), n, replace=False)]
    return sample, n_valid


def label_pass(path: Path, out: Path, predict: Any, mean: Any, std: Any) -> None:
    """Read every tile, standardise, ``predict`` labels, write them: one tile at a time.

    ``predict`` maps a float32 ``(pixels, bands)`` array to integer labels.
    """
    import numpy as np
    import rasterio

    with rasterio.open(path) as src:
        side = src.block_shapes[0][0]
        with rasterio.open(out, "w", **label_profile(src, tile=side)) as dst:
            for w in windows(src.height, src.width, side):
                block = src.read(window=w)
                ok = valid_mask(block, src.nodata)
                labels = np.full(ok.shape, 255, dtype=np.uint8)
                if ok.any():
                    x = (block[:, ok].T.astype(np.float32) - mean) / std
                    labels[ok] = predict(np.ascontiguousarray(x, dtype=np.float32))
                dst.write(labels, 1, window=w)


# --------------------------------------------------------------------------- memory


#: Bytes per pixel and band the tutorials' in-memory K-means needs: the uint16 image,
#: float32 features of the valid pixels, scikit-learn's centred copy, the k-means++
#: candidate distances, weights, labels. Measured 66 B/pixel (4 bands) at 4096^2 here,
#: 78 at 12000^2 in PERF-NOTES: 80 keeps a margin.
INMEMORY_BYTES_PER_PIXEL_PER_BAND = 20.0


def inmemory_estimate_bytes(n_pixels: int, bands: int) -> float:
    """Estimated peak memory of ``peer_sklearn_inmemory.py`` on an image."""
    return n_pixels * bands * INMEMORY_BYTES_PER_PIXEL_PER_BAND + 300 * 2**20


def inmemory_safe(n_pixels: int, bands: int) -> tuple[bool, str]:
    """Whether the in-memory peer may run: its estimate within half the RAM and 80 %
    of what is available now (other people share this machine)."""
    import psutil

    vm = psutil.virtual_memory()
    need = inmemory_estimate_bytes(n_pixels, bands)
    limit = min(0.5 * vm.total, 0.8 * vm.available)
    msg = (f"needs ~{need / 2**30:.1f} GiB (estimate), limit {limit / 2**30:.1f} GiB "
           f"(half the RAM, 80% of the available)")
    return need <= limit, msg


@contextlib.contextmanager
def cli_cluster(work: Path, n_workers: int, *, memory_limit: str = "4GiB",
                timeout: float = 120.0) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A cluster started the usual way, as subprocesses in ``work``.

    ``dask scheduler --scheduler-file F`` and ``dask worker --scheduler-file F
    --nworkers N --nthreads 1``; yields (F, the worker nanny process) once all ``N``
    workers have registered with the scheduler, and stops both on exit.
    """
    sched_file = work / "scheduler.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                               "--scheduler-file", str(sched_file), "--port", "0",
                               "--dashboard-address", ":0"], cwd=work, env=env, **quiet)]
    try:
        deadline = time.monotonic() + timeout
        while not sched_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the scheduler did not write its file")
            time.sleep(0.1)
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                       "--scheduler-file", str(sched_file), "--nworkers",
                                       str(n_workers), "--nthreads", "1", "--memory-limit",
                                       memory_limit], cwd=work, env=env, **quiet))
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=timeout) as client:
            client.wait_for_workers(n_workers, timeout=timeout)
        yield sched_file, procs[1]
    finally:
        for p in procs[::-1]:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
