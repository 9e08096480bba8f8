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

from _harness import OUT, SceneParams, ensure_scene


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
    sched_file = work / "scheduler.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                              "--scheduler-file", str(sched_file), "--port", "0",
                              "--dashboard-address", ":0"], cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(300):
            if sched_file.exists():
                break
            time.sleep(0.1)
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                   "--scheduler-file", str(sched_file), "--nworkers",
                                   str(args.workers), "--nthreads", "1",
                                   "--memory-limit", "4GiB"], cwd=work, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)  # the workers register
        cfg = {"input": str(scene), "output": str(work / "out"), "features": ["bands"],
               "cluster": {"method": "kmeans", "k": 8, "seed": 0},
               "formats": args.formats.split(","),
               "compute": {"scheduler_file": str(sched_file)}}
        if args.chunks:
            cfg["chunks"] = args.chunks
        if args.segments:
            cfg["postprocess"] = {"segments": {"connectivity": 8}, "min_size": 16}
        (work / "c.json").write_text(json.dumps(cfg))
        w0 = _cpu([worker.pid])
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pipeline.cli", "run", str(work / "c.json"), "-q"]
        if args.profile:
            # --gil: only the thread holding the GIL (what costs this process its CPU)
            cmd = ["py-spy", "record", "--rate", "200", "--gil", "-o",
                   str(Path(args.profile).resolve()), "--format",
                   "raw" if args.profile.endswith(".txt") else "flamegraph",
                   "--", *cmd]
        client = subprocess.Popen(cmd, cwd=work, env=env)
        import psutil

        proc = psutil.Process(client.pid)
        c_cpu = 0.0
        while client.poll() is None:
            try:
                t = proc.cpu_times()
                c_cpu = t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        w_cpu = _cpu([worker.pid]) - w0
        mpix = args.size * args.size / 1e6
        res = {"size": args.size, "workers": args.workers, "formats": args.formats,
               "chunks": args.chunks,
               "segments": args.segments, "rc": client.returncode, "wall_s": round(wall, 2),
               "client_cpu_s": round(c_cpu, 2), "workers_cpu_s": round(w_cpu, 2),
               "client_cpu_ms_per_mpix": round(1000 * c_cpu / mpix, 2),
               "workers_cpu_ms_per_mpix": round(1000 * w_cpu / mpix, 2),
               "client_share": round(c_cpu / max(w_cpu, 1e-9), 4),
               "load_avg": os.getloadavg()[0]}
        print(json.dumps(res))
        OUT.mkdir(parents=True, exist_ok=True)
        name = (f"client-share-{args.size}-{args.workers}w-{args.formats.replace(',', '+')}"
                + (f"-c{args.chunks}" if args.chunks else ""))
        (OUT / f"{name}.json").write_text(json.dumps(res, indent=2))
    finally:
        for p in (worker, sched):
            if p is not None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
