"""Parallel efficiency against the number of workers of a CLI-started cluster.

For each worker count N, starts a cluster the usual way (``dask scheduler
--scheduler-file F`` and ``dask worker --nworkers N --nthreads 1``, as subprocesses in
their own directory), waits for its workers, runs ``tileseg run`` on it by its
scheduler file (the same scene and config every time, each run in its own process), and
records the wall time, the client's CPU and the workers' CPU. Efficiency at N is
``wall(1) / (N x wall(N))`` (1.0: perfect scaling)::

    python bench/worker_scaling.py --size 16384 --workers 1 2 4 8 14
    python bench/worker_scaling.py --size 8192 --workers 1 2 --segments   # + min_size 16

Needs a machine with at least as many cores as the largest N (plus one for the client
and the scheduler); on fewer cores the workers share them and the curve says nothing.
Prints a table and saves JSON under bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from _harness import OUT, SceneParams, cli_cluster, ensure_scene
from client_share import run_client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 14])
    ap.add_argument("--rounds", type=int, default=1, help="runs per worker count (median)")
    ap.add_argument("--segments", action="store_true", help="with segments and min_size 16")
    ap.add_argument("--chunks", type=int, default=None, help="chunk side (default: tileseg's)")
    ap.add_argument("--memory-limit", default="4GiB", help="per worker")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    if max(args.workers) >= cores:
        print(f"warning: {cores} cores for up to {max(args.workers)} workers and a client: "
              "the workers share cores, so efficiency falls for that reason alone")
    scene, _ = ensure_scene(SceneParams(size=args.size, tile=512))
    rows = []
    for n in args.workers:
        work = Path(tempfile.mkdtemp(prefix="tileseg-scaling-"))
        try:
            with cli_cluster(work, n, memory_limit=args.memory_limit) as (sched_file, worker):
                cfg: dict[str, object] = {
                    "input": str(scene), "output": str(work / "out"), "features": ["bands"],
                    "cluster": {"method": "kmeans", "k": 8, "seed": 0}, "formats": ["cog"],
                    "compute": {"scheduler_file": str(sched_file)}}
                if args.chunks:
                    cfg["chunks"] = args.chunks
                if args.segments:
                    cfg["postprocess"] = {"segments": {"connectivity": 8}, "min_size": 16}
                runs = [run_client(cfg, work, worker) for _ in range(args.rounds)]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if any(r["rc"] != 0 for r in runs):
            raise SystemExit(f"tileseg run failed with {n} workers: {runs}")
        rows.append({"workers": n, "runs": runs,
                     **{k: statistics.median(r[k] for r in runs)
                        for k in ("wall_s", "client_cpu_s", "workers_cpu_s")}})
        print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["workers"] == 1), None)
    print(f"\n{args.size}^2, {cores} cores, segments: {args.segments}\n")
    print("| workers | wall s | speed-up | efficiency | client CPU s | workers CPU s |"
          " client / workers |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        speed = base["wall_s"] / r["wall_s"] if base else float("nan")
        r["speedup"] = round(speed, 2)
        r["efficiency"] = round(speed / r["workers"], 3)
        print(f"| {r['workers']} | {r['wall_s']:.2f} | {speed:.2f} | {r['efficiency']:.0%} | "
              f"{r['client_cpu_s']:.2f} | {r['workers_cpu_s']:.2f} | "
              f"{r['client_cpu_s'] / max(r['workers_cpu_s'], 1e-9):.1%} |")
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"worker-scaling-{args.size}" + ("-segments" if args.segments else "")
    (OUT / f"{name}.json").write_text(json.dumps({"size": args.size, "cores": cores,
                                                  "segments": args.segments, "rows": rows},
                                                 indent=2))


if __name__ == "__main__":
    main()
