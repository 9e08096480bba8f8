"""The cost of hierarchical region merging (``postprocess.merge``) against segments only.

    python bench/bench_merge.py                              # 16384 x 16384 x 4, 3 rounds
    python bench/bench_merge.py --size 4096 --rounds 3 --pipeline-rev HEAD
    python bench/bench_merge.py --report bench/out/merge-4096.json

Runs the real CLI (``tileseg run``) on the bench's synthetic scene (``make_scene.py``,
built or reused in ``bench/data/``), each approach in its own process measured from
outside (``_harness.measure``: wall time, CPU, peak RSS of the process tree), the
approaches interleaved round by round so that other load on the machine hits them alike:

- ``segments``: features ``[bands]``, K-means k = 8 (as ``run_bench.py``), threads,
  ``postprocess: {segments: {connectivity: 8}, min_size: 16}``, ``formats: [cog]``;
- ``merge-ward``: the same + ``merge: {criterion: ward, regions: 1000}``;
- ``merge-baatz``: the same + ``merge: {criterion: baatz_schape, regions: 1000}`` (its
  squared features are summed in the segments pass);
- ``merge-baatz-boundary``: + ``boundary: 1.0`` (one more pass over the leaves and the
  features: the border contrasts; ``merge_contrast`` in the timings).

Prints median wall time (min-max), CPU, peak RSS, the wall-time ratio to ``segments``
paired within each round (target of the issue: at most 1.5 at 16384^2), the stage
timings of ``report.json`` (``timings_s``, medians) and its ``segments.merge`` (leaves,
merges, regions, seconds of the merge itself: the statistics pass + the in-memory merge
loop + the cut). ``--json`` (default ``bench/out/merge-<size>.json``) keeps every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _harness import OUT, SceneParams, ensure_scene, measure, stages_table, tile_for
from run_bench import (
    child_env,
    clear,
    machine_info,
    pipeline_env,
    scene_pixels,
    snapshot_pipeline,
    source_info,
    tileseg_cmd,
    warm_page_cache,
)

BASE_POST: dict[str, Any] = {"segments": {"connectivity": 8}, "min_size": 16}
APPROACHES: dict[str, dict[str, Any] | None] = {
    "segments": None,
    "merge-ward": {"criterion": "ward", "regions": 1000},
    "merge-baatz": {"criterion": "baatz_schape", "regions": 1000},
    "merge-baatz-boundary": {"criterion": "baatz_schape", "regions": 1000, "boundary": 1.0},
}
BASELINE = "segments"
TARGET = 1.5  # the issue: merging adds at most 50 % to the segments-only run


def write_config(name: str, scene: Path, out: Path, args: argparse.Namespace) -> Path:
    import yaml

    post: dict[str, Any] = dict(BASE_POST)
    merge = APPROACHES[name]
    if merge is not None:
        post["merge"] = dict(merge, regions=args.regions)
    cfg: dict[str, Any] = {
        "input": str(scene.resolve()),
        "output": str(out.resolve()),
        "chunks": args.chunks,
        "features": ["bands"],
        "cluster": {"method": "kmeans", "k": args.k, "seed": 0},
        "compute": {"scheduler": "threads", "n_workers": None},
        "formats": ["cog"],
        "postprocess": post,
    }
    path = out.parent / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_one(name: str, scene: Path, work: Path, args: argparse.Namespace,
            log_name: str = "log.txt", keep: bool = False) -> dict[str, Any]:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    out = d / "out"
    clear(out)
    cfg = write_config(name, scene, out, args)
    cmd = [*tileseg_cmd(args.pipeline_src), "run", str(cfg), "--overwrite", "-q"]
    env = child_env(pipeline_env(args.pipeline_src))
    load = [round(x, 2) for x in os.getloadavg()]
    m = measure(cmd, env=env, log_path=d / log_name, cwd=work)
    rec: dict[str, Any] = {
        "approach": name, "cmd": m.cmd, "returncode": m.returncode, "wall_s": m.wall_s,
        "cpu_s": m.cpu_s, "peak_rss_mib": m.peak_rss_mib,
        "peak_rss_tree_mib": m.peak_rss_tree_mib, "maxrss_single_mib": m.maxrss_single_mib,
        "load_avg_before": load, "rss_timeline": m.timeline,
    }
    if m.returncode != 0:
        rec["error"] = m.log[-3000:]
        return rec
    report = json.loads((out / "report.json").read_text())
    rec["timings_s"] = report.get("timings_s", {})
    seg = report.get("segments") or {}
    rec["segments"] = {k: v for k, v in seg.items() if k != "merge" and not isinstance(v, dict)
                       and not isinstance(v, list)}
    if "merge" in seg:
        rec["merge"] = seg["merge"]
    if not (args.keep_outputs or keep):
        clear(out)
    return rec


def leaf_degrees(leaves_zarr: Path, connectivity: int = 8, strip: int = 1024
                 ) -> dict[str, Any]:
    """The leaves' adjacency from ``leaves.zarr/leaves`` (0 = no leaf): edge count and
    neighbours per leaf (max, median, mean), read in strips of rows (not measured)."""
    import numpy as np
    import zarr

    t0 = time.perf_counter()
    group = zarr.open_group(str(leaves_zarr), mode="r", use_consolidated=False)
    n = int(dict(group.attrs["tileseg_leaves"])["n_leaves"])  # type: ignore[arg-type]
    arr = group["leaves"]
    h = arr.shape[0]
    keys = []
    for y in range(0, h, strip):
        a = np.asarray(arr[y:min(h, y + strip + 1)]).astype(np.int64)  # type: ignore[index]
        shifts = [(a[:, :-1], a[:, 1:]), (a[:-1], a[1:])]
        if connectivity == 8:
            shifts += [(a[:-1, :-1], a[1:, 1:]), (a[:-1, 1:], a[1:, :-1])]
        for p, q in shifts:
            ok = (p != q) & (p > 0) & (q > 0)
            if ok.any():
                lo, hi = np.minimum(p[ok], q[ok]), np.maximum(p[ok], q[ok])
                keys.append(np.unique(lo * (n + 1) + hi))
    key = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    deg = (np.bincount(key // (n + 1), minlength=n + 1)
           + np.bincount(key % (n + 1), minlength=n + 1))[1:]
    return {"leaves": n, "edges": int(key.size), "max_degree": int(deg.max()) if n else 0,
            "median_degree": float(np.median(deg)) if n else 0.0,
            "mean_degree": round(float(deg.mean()), 2) if n else 0.0,
            "seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------- summary


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    ok = [r for r in runs if r["returncode"] == 0]
    base = {r["round"]: r for r in ok if r["approach"] == BASELINE}
    rows = []
    for n in names:
        mine = [r for r in ok if r["approach"] == n]
        row: dict[str, Any] = {"approach": n, "runs": len(mine),
                               "failed": sum(1 for r in runs
                                             if r["approach"] == n and r["returncode"] != 0)}
        if not mine:
            rows.append(row)
            continue
        walls = [r["wall_s"] for r in mine]
        row.update(wall_s=_med(walls), wall_s_min=min(walls), wall_s_max=max(walls),
                   cpu_s=_med([r["cpu_s"] for r in mine]),
                   peak_rss_mib=_med([r["peak_rss_mib"] for r in mine]))
        row["x_segments"] = _med([r["wall_s"] / base[r["round"]]["wall_s"] for r in mine
                                  if r["round"] in base])
        row["cpu_x_segments"] = _med([r["cpu_s"] / base[r["round"]]["cpu_s"] for r in mine
                                      if r["round"] in base])
        keys = list(dict.fromkeys(k for r in mine for k in r.get("timings_s", {})))
        row["timings_s"] = {k: _med([r["timings_s"].get(k, 0.0) for r in mine]) for k in keys}
        row["timings_s"]["outside_run"] = _med(
            [r["wall_s"] - r["timings_s"].get("total", 0.0) for r in mine])
        row["segments"] = mine[0].get("segments", {})
        merges = [r["merge"] for r in mine if r.get("merge")]
        if merges:
            row["merge"] = {k: merges[0][k] for k in ("criterion", "leaves", "merges",
                                                      "regions") if k in merges[0]}
            row["merge"]["seconds"] = _med([m["seconds"] for m in merges])
            stats = [r["timings_s"].get("merge_contrast") for r in mine
                     if r.get("merge") and "merge_contrast" in r["timings_s"]]
            loops = [r["merge"]["seconds"] - r["timings_s"].get("merge_contrast", 0.0)
                     for r in mine if r.get("merge")]
            row["merge"]["stats_pass_s"] = _med([s for s in stats if s is not None])
            row["merge"]["loop_and_cut_s"] = _med(loops)
        rows.append(row)
    return rows


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def connectivity_note(d: dict[str, Any]) -> str:
    return f"8-connected contacts in leaves.zarr of {d.get('from', 'a merge run')}"


def format_tables(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = ["| approach | runs | wall s (min-max) | x segments (paired) | CPU s | "
             "CPU x segments | peak RSS MiB |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if not r["runs"]:
            lines.append(f"| {r['approach']} | 0 | failed ({r['failed']}) | - | - | - | - |")
            continue
        lines.append(
            f"| {r['approach']} | {r['runs']} | {r['wall_s']:.1f} "
            f"({r['wall_s_min']:.1f}-{r['wall_s_max']:.1f}) | {_f(r['x_segments'], '.2f')} | "
            f"{r['cpu_s']:.1f} | {_f(r['cpu_x_segments'], '.2f')} | "
            f"{r['peak_rss_mib']:.0f} |")
    lines += stages_table(rows, "stages (report.json timings_s, medians; outside_run = "
                          "process wall - total):", missing="-")
    merged = [r for r in rows if r.get("merge")]
    if merged:
        lines += ["", "segments.merge (report.json; seconds = statistics pass + merge loop "
                  "+ cut, medians):", "",
                  "| approach | segments found | leaves (after min_size) | merges | regions | "
                  "merge s | stats pass s | loop + cut s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in merged:
            m = r["merge"]
            lines.append(f"| {r['approach']} | {r['segments'].get('found', '-')} | "
                         f"{m.get('leaves')} | {m.get('merges')} | "
                         f"{m.get('regions')} | {_f(m.get('seconds'), '.2f')} | "
                         f"{_f(m.get('stats_pass_s'), '.2f')} | "
                         f"{_f(m.get('loop_and_cut_s'), '.2f')} |")
    verdicts = []
    for r in rows:
        if r["approach"] != BASELINE and r.get("x_segments") is not None:
            ok = "holds" if r["x_segments"] <= TARGET else "MISSED"
            verdicts.append(f"- {r['approach']} / {BASELINE}: {r['x_segments']:.2f} "
                            f"(target <= {TARGET}: {ok})")
    if verdicts:
        lines += ["", "target (wall time, paired per round):", "", *verdicts]
    if info.get("leaf_degrees"):
        d = info["leaf_degrees"]
        lines += ["", f"leaf adjacency ({connectivity_note(d)}): {d['leaves']} leaves, "
                  f"{d['edges']} edges, neighbours per leaf: max {d['max_degree']}, median "
                  f"{d['median_degree']:g}, mean {d['mean_degree']:g}"]
    loads = info.get("load_avg_runs")
    if loads:
        lines += ["", f"load average (1 min) before each run: {min(loads):.1f}-{max(loads):.1f}"
                  f" (median {statistics.median(loads):.1f}); at start "
                  f"{info.get('load_avg_at_start')}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384, help="scene side (default 16384; "
                    "bench/data/, built or reused)")
    ap.add_argument("--scene", type=Path, help="input GeoTIFF instead of the synthetic scene")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--approaches", default=",".join(APPROACHES),
                    help=f"comma-separated, from {list(APPROACHES)}")
    ap.add_argument("--k", type=int, default=8, help="K-means k (default 8, as run_bench)")
    ap.add_argument("--regions", type=int, default=1000, help="merge down to N regions")
    ap.add_argument("--chunks", type=int, default=None, help="tileseg chunks (default: its own)")
    ap.add_argument("--workdir", type=Path, default=OUT / "merge", help="outputs and logs")
    ap.add_argument("--keep-outputs", action="store_true")
    ap.add_argument("--degree", action=argparse.BooleanOptionalAction, default=True,
                    help="after the rounds, count the leaves' neighbours in the last merge "
                    "run's leaves.zarr (not measured)")
    ap.add_argument("--json", type=Path, help="default bench/out/merge-<size>.json")
    ap.add_argument("--no-warm", action="store_true", help="skip reading the scene into "
                    "the page cache first")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="run every approach once, untimed, on a 256 x 256 scene first "
                    "(numba's on-disk cache then holds the merge kernels)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--pipeline-rev", metavar="REV", help="measure tileseg as committed at "
                     "REV (a git archive snapshot of pipeline/) instead of the working tree")
    src.add_argument("--pipeline-src", type=Path, metavar="DIR")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="run nothing: print the tables of a saved --json file again")
    args = ap.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print(format_tables(saved["summary"], saved["machine"]))
        return 0
    names = [n.strip() for n in args.approaches.split(",") if n.strip()]
    unknown = [n for n in names if n not in APPROACHES]
    if unknown:
        ap.error(f"unknown approach(es) {unknown}; expected some of {list(APPROACHES)}")
    if BASELINE in names:  # the baseline first in every round
        names.remove(BASELINE)
        names.insert(0, BASELINE)
    args.workdir = args.workdir.resolve()
    sha = None
    if args.pipeline_rev:
        args.pipeline_src, sha = snapshot_pipeline(args.pipeline_rev, args.workdir)
    if args.pipeline_src is not None:
        args.pipeline_src = args.pipeline_src.resolve()
    given_scene = args.scene
    if args.scene is None:
        args.scene, _ = ensure_scene(SceneParams(size=args.size, tile=tile_for(args.size)))
    scene = args.scene.resolve()
    work = args.workdir / scene.stem
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    info["tileseg_source"] = source_info(args.pipeline_src, sha)
    pixels = scene_pixels(scene)
    print(f"scene {scene} ({pixels / 1e6:.1f} MPix); {info['cpu']}, {info['cores']} cores, "
          f"{info['ram_gib']} GiB; load average {info['load_avg_at_start']}; tileseg: "
          f"{info['tileseg_source']}", flush=True)
    if not args.no_warm:
        warm_page_cache(scene)
    if args.warmup:
        small, _ = ensure_scene(SceneParams(size=256, tile=256),
                                work / "warmup" / "scene.tif", quiet=True)
        for n in names:
            rec = run_one(n, small, work / "warmup", args)
            print(f"warm-up {n} on 256 x 256: {rec['wall_s']:.1f} s "
                  f"(exit {rec['returncode']})", flush=True)
            if "error" in rec:
                print(rec["error"][-1500:], file=sys.stderr)
    degree_from = next((n for n in reversed(names) if APPROACHES[n]), None)
    runs: list[dict[str, Any]] = []
    t_start = time.time()
    for rnd in range(args.rounds):
        for n in names:
            keep = args.degree and rnd == args.rounds - 1 and n == degree_from
            rec = run_one(n, scene, work, args, log_name=f"log-r{rnd}.txt", keep=keep)
            rec["round"] = rnd
            runs.append(rec)
            if "error" in rec:
                status = f"FAILED (exit {rec['returncode']})"
            else:
                status = (f"{rec['wall_s']:.1f} s, {rec['peak_rss_mib']:.0f} MiB, load "
                          f"{rec['load_avg_before'][0]:.1f}")
                if rec.get("merge"):
                    m = rec["merge"]
                    status += (f"; merge: {m.get('leaves')} leaves, {m.get('merges')} merges, "
                               f"{m.get('seconds')} s (merge_contrast "
                               f"{rec['timings_s'].get('merge_contrast', 0.0):.2f} s)")
            print(f"[round {rnd + 1}/{args.rounds}] {n}: {status}", flush=True)
            if "error" in rec:
                print(rec["error"][-1500:], file=sys.stderr)
    if args.degree and degree_from is not None:
        store = work / degree_from / "out" / "leaves.zarr"
        if store.exists():
            info["leaf_degrees"] = {**leaf_degrees(store), "from": degree_from}
            if not args.keep_outputs:
                clear(work / degree_from / "out")
    info["load_avg_runs"] = [r["load_avg_before"][0] for r in runs]
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["minutes"] = round((time.time() - t_start) / 60, 1)
    rows = summarise(runs, names)
    print(f"\n{scene.name}: {pixels / 1e6:.1f} MPix, {args.rounds} round(s), k = {args.k}, "
          f"merge to {args.regions} regions\n")
    print(format_tables(rows, info))
    path = args.json or OUT / f"merge-{args.size if given_scene is None else scene.stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, "scene": {"path": str(scene), "pixels": pixels},
                                "argv": sys.argv, "runs": runs, "summary": rows},
                               indent=2, default=str))
    print(f"\nsaved {path}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
