"""Wall time and peak memory of ``tileseg run`` (and the I/O floor) against image size.

    python bench/scaling.py                                   # 4096^2 .. 24576^2
    python bench/scaling.py --sizes 2048,4096,8192 --approaches floor,tileseg-cog

Builds (or reuses) one scene per size in bench/data/, runs each approach in its own
process exactly as ``run_bench.py`` does (same measurement: whole process, peak RSS of
the process tree), and draws time and memory against the pixel count into
``bench/scaling.png`` (matplotlib). ``--json`` keeps the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _harness import BENCH, OUT, SceneParams, ensure_scene, tile_for
from run_bench import (
    APPROACHES,
    machine_info,
    run_one,
    snapshot_pipeline,
    source_info,
    warm_page_cache,
    warmup,
)


def plot(results: list[dict[str, Any]], runs: list[dict[str, Any]], path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m, ax_l) = plt.subplots(1, 3, figsize=(16, 4.4))
    for name in dict.fromkeys(r["approach"] for r in results):
        pts = sorted((r["mpix"], r["wall_s"], r["peak_rss_mib"]) for r in results
                     if r["approach"] == name and r.get("wall_s") is not None)
        if not pts:
            continue
        x = [p[0] for p in pts]
        ax_t.plot(x, [p[1] for p in pts], "o-", label=APPROACHES[name].title)
        ax_m.plot(x, [p[2] for p in pts], "o-", label=APPROACHES[name].title)
    ax_m.axhline(1024, color="grey", ls="--", lw=1, label="1 GiB (issue 7 target)")
    ax_t.set(xlabel="image size (MPix)", ylabel="wall time (s)", title="time")
    ax_m.set(xlabel="image size (MPix)", ylabel="peak RSS (MiB, process tree)",
             title="memory", ylim=(0, None))
    # memory over time at the largest size: the last run of each approach there
    ok = [r for r in runs if r["returncode"] == 0 and r.get("rss_timeline")]
    if ok:
        biggest = max(r["size"] for r in ok)
        last = {r["approach"]: r for r in ok if r["size"] == biggest}
        for name, r in last.items():
            t, mib = zip(*r["rss_timeline"], strict=True)
            ax_l.plot(t, mib, lw=1, label=APPROACHES[name].title)
            timings = r.get("timings_s")
            if timings and name == "tileseg":
                # stage ends, assuming run() returns just before the process exits
                start = r["wall_s"] - timings["total"]
                edge = start
                for stage in ("open", "sample_fit", "label_write", "cog"):
                    edge += timings.get(stage, 0.0)
                    ax_l.axvline(edge, color="grey", lw=0.6, ls=":")
                    ax_l.text(edge, 0.02, stage, rotation=90, fontsize=7, ha="right",
                              va="bottom", transform=ax_l.get_xaxis_transform())
        ax_l.set(xlabel="seconds since process start", ylabel="RSS (MiB, process tree)",
                 title=f"memory over time, {biggest} x {biggest} (stage ends approx.)",
                 ylim=(0, None))
    for ax in (ax_t, ax_m, ax_l):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4096,8192,12000,16384,24576",
                    help="comma-separated image sides (default 4096,8192,12000,16384,24576)")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--approaches", default="floor,tileseg",
                    help="run_bench.py approach names (default floor,tileseg)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size (medians)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--tileseg-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--pipeline-rev", metavar="REV",
                    help="benchmark tileseg as committed at REV (see run_bench.py)")
    ap.add_argument("--workdir", type=Path, default=OUT)
    ap.add_argument("--plot", type=Path, default=BENCH / "scaling.png")
    ap.add_argument("--json", type=Path, help="save the raw results")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    names = [n.strip() for n in args.approaches.split(",") if n.strip()]
    unknown = [n for n in names if n not in APPROACHES]
    if unknown:
        ap.error(f"unknown approach(es) {unknown}")
    # run_one reads these run_bench options
    args.daskml_crop, args.otb_ram, args.keep_outputs = 2048, 2048, False
    args.pipeline_src, sha = None, None
    if args.pipeline_rev:
        args.pipeline_src, sha = snapshot_pipeline(args.pipeline_rev, args.workdir.resolve())
        sys.path.insert(0, str(args.pipeline_src))
    info = machine_info()
    info["tileseg_source"] = source_info(args.pipeline_src, sha)
    results: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    warmed = False
    for size in sizes:
        params = SceneParams(size=size, bands=args.bands, tile=tile_for(size))
        scene, _ = ensure_scene(params)
        work = args.workdir.resolve() / scene.stem
        work.mkdir(parents=True, exist_ok=True)
        warm_page_cache(scene)
        if not warmed and any(APPROACHES[n].is_tileseg for n in names):
            warmup(scene, work, args)
            warmed = True
        for rnd in range(args.repeat):
            for n in names:
                rec = run_one(APPROACHES[n], scene, work, args)
                rec.update(round=rnd, size=size)
                runs.append(rec)
                ok = rec["returncode"] == 0
                print(f"{size:>6} {n:<14} " + (f"{rec['wall_s']:8.2f} s {rec['peak_rss_mib']:7.0f}"
                                               " MiB" if ok else "FAILED"), flush=True)
                if not ok:
                    print(rec.get("error", rec.get("skipped", ""))[-1500:], file=sys.stderr)
        for n in names:
            ok = [r for r in runs if r["size"] == size and r["approach"] == n
                  and r["returncode"] == 0]
            row = {"size": size, "mpix": size * size / 1e6, "approach": n, "runs": len(ok)}
            if ok:
                row.update(wall_s=statistics.median(r["wall_s"] for r in ok),
                           cpu_s=statistics.median(r["cpu_s"] for r in ok),
                           peak_rss_mib=statistics.median(r["peak_rss_mib"] for r in ok))
                if ok[0].get("timings_s"):
                    row["timings_s"] = {k: statistics.median(r["timings_s"][k] for r in ok)
                                        for k in ok[0]["timings_s"]}
            results.append(row)
    print("\n| size | MPix | approach | wall s | MPix/s | CPU s | peak RSS MiB |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        if r.get("wall_s") is None:
            print(f"| {r['size']} | {r['mpix']:.1f} | {r['approach']} | failed | | | |")
            continue
        print(f"| {r['size']} | {r['mpix']:.1f} | {r['approach']} | {r['wall_s']:.2f} | "
              f"{r['mpix'] / r['wall_s']:.2f} | {r['cpu_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    plot(results, runs, args.plot, f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB; "
         f"{args.bands}-band uint16, k={args.k}; {info['date']}")
    print(f"\nplot: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "argv": sys.argv, "runs": runs,
                                         "results": results}, indent=2, default=str))
        print(f"saved {args.json}")
    return 1 if any(r.get("wall_s") is None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
