"""How much CPU the client of a real cluster spends against its workers.

Starts a cluster the usual way (``dask scheduler --scheduler-file F`` and
``dask worker --scheduler-file F --nworkers N``, as subprocesses in their own
directory), runs ``tileseg run`` on it by its scheduler file, and measures the CPU
seconds of the client process and of every worker process (psutil, children
included) over the run, per megapixel. The client's share says how many workers one
client can drive before it becomes the bottleneck (share s: about 1/s workers)::

    python bench/client_share.py --size 8192 --workers 2
    python bench/client_share.py --size 4096 --formats zarr   # no GeoTIFF
    python bench/client_share.py --size 16384 --chunks 2048   # a quarter of the blocks

The client's CPU has a fixed part (imports, the fit on the sample) and a part per
block; run two sizes and compare the differences (the marginal share) to see what
one more megapixel costs the client against the workers.

Prints one JSON line and saves it under bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import OUT, SceneParams, cli_cluster, ensure_scene


def _cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--formats", default="cog", help="comma-separated, e.g. cog,zarr")
    ap.add_argument("--segments", action="store_true", help="with segments and min_size 16")
    ap.add_argument("--chunks", type=int, default=None, help="chunk side (default: tileseg's)")
    ap.add_argument("--profile", default=None, metavar="SVG",
                    help="record the client with py-spy (.svg, or .txt: collapsed stacks); "
                         "its CPU is then not measured")
    args = ap.parse_args()
    scene, _ = ensure_scene(SceneParams(size=args.size, tile=512))
    work = Path(tempfile.mkdtemp(prefix="tileseg-client-share-"))
    try:
        with cli_cluster(work, args.workers) as (sched_file, worker):
            res = _run(args, scene, work, sched_file, worker)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res))
    OUT.mkdir(parents=True, exist_ok=True)
    name = (f"client-share-{args.size}-{args.workers}w-{args.formats.replace(',', '+')}"
            + (f"-c{args.chunks}" if args.chunks else ""))
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=2))


def run_client(cfg: dict[str, object], work: Path, worker: subprocess.Popen[bytes],
               profile: str | None = None) -> dict[str, float]:
    """Run ``tileseg run`` with ``cfg`` in ``work``; its wall time and CPU seconds.

    ``client_cpu_s``: the client process's (its threads and children); ``workers_cpu_s``:
    the worker processes' under ``worker`` (the ``dask worker`` nanny) over the run.
    """
    import psutil

    (work / "c.json").write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    w0 = _cpu([worker.pid])
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(work / "c.json"), "-q",
           "--overwrite"]
    if profile:
        # --gil: only the thread holding the GIL (what costs this process its CPU)
        cmd = ["py-spy", "record", "--rate", "200", "--gil", "-o", str(Path(profile).resolve()),
               "--format", "raw" if profile.endswith(".txt") else "flamegraph", "--", *cmd]
    client = subprocess.Popen(cmd, cwd=work, env=env)
    proc = psutil.Process(client.pid)
    c_cpu = 0.0
    while client.poll() is None:
        try:
            t = proc.cpu_times()
            c_cpu = t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    return {"rc": client.returncode, "wall_s": round(time.perf_counter() - t0, 2),
            "client_cpu_s": round(c_cpu, 2), "workers_cpu_s": round(_cpu([worker.pid]) - w0, 2)}


def _run(args: argparse.Namespace, scene: Path, work: Path, sched_file: Path,
         worker: subprocess.Popen[bytes]) -> dict[str, object]:
    """Run ``tileseg run`` on the cluster; return its times and CPU seconds."""
    cfg: dict[str, object] = {
        "input": str(scene), "output": str(work / "out"), "features": ["bands"],
        "cluster": {"method": "kmeans", "k": 8, "seed": 0},
        "formats": args.formats.split(","), "compute": {"scheduler_file": str(sched_file)}}
    if args.chunks:
        cfg["chunks"] = args.chunks
    if args.segments:
        cfg["postprocess"] = {"segments": {"connectivity": 8}, "min_size": 16}
    run = run_client(cfg, work, worker, args.profile)
    mpix = args.size * args.size / 1e6
    c_cpu, w_cpu = run["client_cpu_s"], run["workers_cpu_s"]
    return {"size": args.size, "workers": args.workers, "formats": args.formats,
            "chunks": args.chunks, "segments": args.segments, **run,
            "client_cpu_ms_per_mpix": round(1000 * c_cpu / mpix, 2),
            "workers_cpu_ms_per_mpix": round(1000 * w_cpu / mpix, 2),
            "client_share": round(c_cpu / max(w_cpu, 1e-9), 4),
            "load_avg": os.getloadavg()[0]}


if __name__ == "__main__":
    main()
