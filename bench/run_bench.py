"""Benchmark tileseg against the I/O floor and its peers, each in its own process.

    python bench/run_bench.py --size 4096 --repeat 3 --json bench/out/bench-4096.json
    python bench/run_bench.py --approaches floor,tileseg,tileseg-cog,minibatch,inmemory
    python bench/run_bench.py --scene my.tif --approaches floor,tileseg-proc1,tileseg-proc2

Every approach runs as a whole process (interpreter start-up and imports included) and is
measured from outside: wall time, user + system CPU time of the process tree, and peak
resident memory (the polled sum over the process and all its descendants, Dask worker
processes included, or the kernel's per-process maximum if larger). With ``--repeat N``
the approaches run round-robin N times; the table gives medians, and the ratios are
medians of ratios paired within one round (the machine is shared, so only runs close in
time compare well). ``--read-count`` (on by default) runs tileseg once more with a
read counter (``bench/_readhook``) and reports how often it read each input tile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import (
    BENCH,
    OUT,
    SKIP_EXIT,
    Measurement,
    SceneParams,
    ensure_scene,
    inmemory_safe,
    measure,
    stages_table,
    tile_for,
)


@dataclass(frozen=True)
class Approach:
    """One contender: a tileseg configuration, the floor, or a peer script."""

    name: str
    title: str
    script: str | None = None  # a bench/ script; None: tileseg
    scheduler: str = "threads"
    n_workers: int | None = None
    formats: tuple[str, ...] = ("cog", "zarr")
    postprocess: tuple[tuple[str, Any], ...] = ()  # the config's postprocess: entries

    @property
    def is_tileseg(self) -> bool:
        return self.script is None


APPROACHES = {a.name: a for a in [
    Approach("floor", "I/O floor (rasterio: 2 readers, 1 writer)", script="io_floor.py"),
    Approach("tileseg", "tileseg, threads, cog+zarr"),
    Approach("tileseg-cog", "tileseg, threads, cog", formats=("cog",)),
    Approach("tileseg-post", "tileseg, threads, cog, majority r=2 + segments + min_size 16",
             formats=("cog",),
             postprocess=(("majority", {"radius": 2}), ("segments", True), ("min_size", 16))),
    Approach("tileseg-proc1", "tileseg, 1 worker process, cog+zarr", scheduler="processes",
             n_workers=1),
    Approach("tileseg-proc2", "tileseg, 2 worker processes, cog+zarr", scheduler="processes",
             n_workers=2),
    Approach("minibatch", "sklearn MiniBatchKMeans 1M sample + per-tile predict",
             script="peer_minibatch.py"),
    Approach("faiss", "faiss k-means 1M sample + per-tile search", script="peer_faiss.py"),
    Approach("otb", "OTB ImageClassifier (1-NN on centroids)", script="peer_otb.py"),
    Approach("daskml", "dask-ml KMeans (central crop)", script="peer_daskml.py"),
    Approach("inmemory", "whole image in memory + sklearn KMeans",
             script="peer_sklearn_inmemory.py"),
]}
DEFAULT = "floor,tileseg,tileseg-cog,minibatch,faiss,otb,daskml,inmemory"


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python and library versions."""
    from importlib import metadata

    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ["tileseg", "numpy", "dask", "distributed", "xarray", "rioxarray", "rasterio",
                 "zarr", "numba", "scikit-learn", "faiss-cpu", "dask-ml", "psutil"]:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        import rasterio

        versions["GDAL"] = rasterio.__gdal_version__
    except ImportError:
        pass
    otb = shutil.which("otbcli_ImageClassifier")
    if otb:
        import subprocess

        q = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "otb-bin"],
                           capture_output=True, text=True)
        versions["otb-bin"] = q.stdout.strip() or "installed"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": cpu, "cores": cores, "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(), "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": versions,
    }


# --------------------------------------------------------------------------- running


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a measured process: ours, minus what would bias it."""
    env = dict(os.environ)
    # PYTHONDONTWRITEBYTECODE (set on some CI images) would make every process, and
    # every worker it spawns, compile tileseg's sources again: ~0.3-0.5 s each that an
    # installed tileseg never pays
    for key in ("GDAL_CACHEMAX", "TILESEG_BENCH_READ_LOG", "PYTHONDONTWRITEBYTECODE"):
        env.pop(key, None)
    env.update(extra or {})
    return env


def tileseg_cmd(src: Path | None = None) -> list[str]:
    """The ``tileseg`` console script; with a source snapshot, ``python -m pipeline.cli``
    (the snapshot goes first on PYTHONPATH, see :func:`pipeline_env`)."""
    exe = Path(sys.executable).parent / "tileseg"
    if src is None and exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "pipeline.cli"]


def pipeline_env(src: Path | None, extra_path: list[str] | None = None) -> dict[str, str]:
    """Environment entries that make measured processes import ``pipeline`` from ``src``."""
    parts = list(extra_path or []) + ([str(src)] if src is not None else [])
    if not parts:
        return {}
    pp = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join(parts + ([pp] if pp else []))}


def snapshot_pipeline(rev: str, dest_root: Path) -> tuple[Path, str]:
    """Extract ``pipeline/`` at git revision ``rev`` (``git archive``); return (dir, sha).

    Benchmarks a committed version while the working tree is being edited.
    """
    import subprocess
    import tarfile

    sha = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = dest_root / f"src-{sha[:12]}"
    if not (dest / "pipeline" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        tar = dest / "pipeline.tar"
        subprocess.run(["git", "-C", str(BENCH.parent), "archive", "-o", str(tar), sha,
                        "pipeline"], check=True)
        with tarfile.open(tar) as t:
            t.extractall(dest, filter="data")
        tar.unlink()
    return dest, sha


def source_info(src: Path | None, sha: str | None) -> dict[str, Any]:
    """Which tileseg was measured: a snapshot's commit, or the working tree's state."""
    import subprocess

    if src is not None:
        return {"pipeline": f"git archive of {sha}", "path": str(src)}
    head = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(BENCH.parent), "status", "--porcelain",
                            "pipeline"], capture_output=True, text=True).stdout.strip()
    return {"pipeline": "working tree", "head": head, "pipeline_dirty": bool(dirty)}


def write_tileseg_config(a: Approach, scene: Path, out: Path, k: int,
                         chunks: int | None) -> Path:
    import yaml

    cfg: dict[str, Any] = {
        "input": str(scene.resolve()),
        "output": str(out.resolve()),
        "chunks": chunks,
        "features": ["bands"],
        "cluster": {"method": "kmeans", "k": k, "seed": 0},
        "compute": {"scheduler": a.scheduler, "n_workers": a.n_workers},
        "formats": list(a.formats),
    }
    if a.postprocess:
        cfg["postprocess"] = dict(a.postprocess)
    path = out.parent / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def command(a: Approach, scene: Path, work: Path, args: argparse.Namespace) -> tuple[list[str],
                                                                                      Path]:
    """The command line of one approach, and the output it writes (to clear first)."""
    d = work / a.name
    d.mkdir(parents=True, exist_ok=True)
    if a.is_tileseg:
        out = d / "out"
        cfg = write_tileseg_config(a, scene, out, args.k, args.chunks)
        extra = [x for s in args.tileseg_set for x in ("--set", s)]
        return [*tileseg_cmd(args.pipeline_src), "run", str(cfg), "--overwrite", "-q",
                *extra], out
    out = d / "labels.tif"
    cmd = [sys.executable, str(BENCH / a.script), "--scene", str(scene), "--out", str(out)]
    if a.name != "floor":
        cmd += ["--k", str(args.k)]
    if a.name == "daskml":
        cmd += ["--crop", str(args.daskml_crop)]
    if a.name == "otb":
        cmd += ["--ram", str(args.otb_ram)]
    return cmd, out


def clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def warm_page_cache(path: Path) -> None:
    """Read the file once so every approach reads it from the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run_one(a: Approach, scene: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd, out = command(a, scene, work, args)
    clear(out)
    env = child_env(pipeline_env(args.pipeline_src) if a.is_tileseg else None)
    m: Measurement = measure(cmd, env=env, log_path=work / a.name / "log.txt", cwd=work)
    rec: dict[str, Any] = {
        "approach": a.name, "cmd": m.cmd, "returncode": m.returncode, "wall_s": m.wall_s,
        "cpu_s": m.cpu_s, "peak_rss_mib": m.peak_rss_mib,
        "peak_rss_tree_mib": m.peak_rss_tree_mib, "maxrss_single_mib": m.maxrss_single_mib,
        "max_processes": m.max_processes, "result": m.result, "rss_timeline": m.timeline,
    }
    if m.returncode == SKIP_EXIT:
        lines = [ln for ln in m.log.splitlines() if ln.startswith("SKIP:")]
        rec["skipped"] = lines[-1][5:].strip() if lines else "skipped"
    elif m.returncode != 0:
        rec["error"] = m.log[-3000:]
    if a.is_tileseg and m.returncode == 0:
        report = json.loads((out / "report.json").read_text())
        rec["timings_s"] = report.get("timings_s", {})
        rec["pixels"] = scene_pixels(scene)
    else:
        rec["pixels"] = m.result.get("pixels", scene_pixels(scene))
    if not args.keep_outputs and m.returncode == 0:
        clear(out)
    return rec


_PIXELS: dict[Path, int] = {}


def scene_pixels(scene: Path) -> int:
    if scene not in _PIXELS:
        import rasterio

        with rasterio.open(scene) as src:
            _PIXELS[scene] = src.width * src.height
    return _PIXELS[scene]


def warmup(scene: Path, work: Path, args: argparse.Namespace) -> None:
    """Untimed tileseg runs on a small scene of the same bands and data type: K-means
    with the default outputs, then with post-processing, so that numba's cache holds
    every kernel a measured run uses (a fresh --pipeline-rev snapshot has none)."""
    import rasterio

    with rasterio.open(scene) as src:
        bands, dtype = src.count, src.dtypes[0]
    params = SceneParams(size=256, bands=bands, tile=256, dtype=dtype)
    small, _ = ensure_scene(params, work / "warmup" / "scene.tif", quiet=True)
    for name in ("tileseg", "tileseg-post"):
        cmd, out = command(APPROACHES[name], small, work / "warmup", args)
        clear(out)
        m = measure(cmd, env=child_env(pipeline_env(args.pipeline_src)),
                    log_path=work / "warmup" / "log.txt", cwd=work)
        print(f"warm-up {name} run on 256 x 256: {m.wall_s:.1f} s (exit {m.returncode})",
              flush=True)


# --------------------------------------------------------------------------- read count


def read_count(scene: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run tileseg (threads, default outputs) with the read counter; summarise its log."""
    import numpy as np
    import rasterio

    a = APPROACHES[args.read_count_approach]
    cmd, out = command(a, scene, work / "readcount", args)
    clear(out)
    log = work / "readcount" / "reads.tsv"
    log.unlink(missing_ok=True)
    env = child_env({"TILESEG_BENCH_READ_LOG": str(log),
                     **pipeline_env(args.pipeline_src, [str(BENCH / "_readhook")])})
    m = measure(cmd, env=env, log_path=work / "readcount" / "log.txt", cwd=work)
    if m.returncode != 0:
        return {"approach": a.name, "error": m.log[-3000:]}
    with rasterio.open(scene) as src:
        height, width, count = src.height, src.width, src.count
        th, tw = src.block_shapes[0]
    target = os.path.realpath(scene)
    per_tile = np.zeros(((height + th - 1) // th, (width + tw - 1) // tw))
    calls = 0
    pixels = 0.0
    pids = set()
    other = 0
    for line in log.read_text().splitlines() if log.exists() else []:
        parts = line.split("\t")
        if len(parts) != 8:
            continue
        pid, _kind, name, nb, row, col, h, w = parts
        if os.path.realpath(name) != target:
            other += 1
            continue
        nb, row, col, h, w = (int(v) for v in (nb, row, col, h, w))
        calls += 1
        pids.add(pid)
        pixels += nb * h * w
        if h > 0 and w > 0:
            r0, r1 = row // th, (row + h - 1) // th
            c0, c1 = col // tw, (col + w - 1) // tw
            per_tile[r0:r1 + 1, c0:c1 + 1] += nb / count
    if not args.keep_outputs:
        clear(out)
    return {
        "approach": a.name, "read_calls": calls, "processes": len(pids),
        "other_reads": other,
        "passes": pixels / (count * height * width),
        "tile_reads_min": float(per_tile.min()), "tile_reads_median":
        float(np.median(per_tile)), "tile_reads_max": float(per_tile.max()),
        "tiles": int(per_tile.size),
        "method": "rasterio.io.DatasetReader.read/read_masks wrapped by an import hook "
                  "(bench/_readhook/sitecustomize.py); counts read requests, in band-tiles "
                  "(a request for all bands of a tile = 1)",
    }


# --------------------------------------------------------------------------- summary


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Medians per approach, and ratios paired within each round."""
    rows = []
    by = {n: [r for r in runs if r["approach"] == n] for n in names}
    floor_by_round = {r["round"]: r for r in by.get("floor", []) if r["returncode"] == 0}
    for n in names:
        ok = [r for r in by[n] if r["returncode"] == 0]
        row: dict[str, Any] = {"approach": n, "title": APPROACHES[n].title, "runs": len(ok)}
        skipped = [r for r in by[n] if "skipped" in r]
        failed = [r for r in by[n] if "error" in r]
        if not ok:
            row["note"] = (f"skipped: {skipped[0]['skipped']}" if skipped else
                           "failed" if failed else "not run")
            rows.append(row)
            continue
        row["mpix"] = ok[0]["pixels"] / 1e6
        row["wall_s"] = _median([r["wall_s"] for r in ok])
        row["wall_s_min"] = min(r["wall_s"] for r in ok)
        row["wall_s_max"] = max(r["wall_s"] for r in ok)
        row["cpu_s"] = _median([r["cpu_s"] for r in ok])
        row["peak_rss_mib"] = _median([r["peak_rss_mib"] for r in ok])
        row["mpix_s"] = _median([r["pixels"] / 1e6 / r["wall_s"] for r in ok])
        paired = []
        for r in ok:
            f = floor_by_round.get(r["round"])
            if f is not None:
                paired.append((f["pixels"] / f["wall_s"]) / (r["pixels"] / r["wall_s"]))
        row["x_floor"] = _median(paired)
        # CPU seconds per pixel over the floor's: less sensitive to other load than wall
        paired_cpu = [(r["cpu_s"] / r["pixels"])
                      / (floor_by_round[r["round"]]["cpu_s"] / floor_by_round[r["round"]]["pixels"])
                      for r in ok if r["round"] in floor_by_round]
        row["cpu_x_floor"] = _median(paired_cpu)
        if failed:
            row["note"] = f"{len(failed)} run(s) failed"
        if n == "daskml" and ok[0]["result"].get("crop"):
            cy, cx = ok[0]["result"]["crop"]
            row["note"] = f"{cy} x {cx} crop; {ok[0]['result'].get('n_iter')} Lloyd passes"
        if ok[0].get("timings_s"):
            keys = ok[0]["timings_s"].keys()
            row["timings_s"] = {k: _median([r["timings_s"].get(k, 0.0) for r in ok])
                                for k in keys}
            row["timings_s"]["outside_run"] = _median(
                [r["wall_s"] - r["timings_s"].get("total", 0.0) for r in ok])
        stages = [r["result"].get("stages_s") for r in ok if r["result"].get("stages_s")]
        if stages:
            row["stages_s"] = {k: _median([s[k] for s in stages]) for k in stages[0]}
        rows.append(row)
    return rows


def speedups(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float]]:
    """Median over rounds of (tileseg MPix/s) / (peer MPix/s), per tileseg variant."""
    ok = [r for r in runs if r["returncode"] == 0]
    rate = {(r["approach"], r["round"]): r["pixels"] / r["wall_s"] for r in ok}
    rounds = sorted({r["round"] for r in ok})
    out: dict[str, dict[str, float]] = {}
    for t in (n for n in names if APPROACHES[n].is_tileseg):
        out[t] = {}
        for p in (n for n in names if not APPROACHES[n].is_tileseg and n != "floor"):
            vals = [rate[(t, i)] / rate[(p, i)] for i in rounds
                    if (t, i) in rate and (p, i) in rate]
            if vals:
                out[t][p] = statistics.median(vals)
    return out


#: Wall-time ratios between tileseg variants that issue 7 sets targets for.
PAIRS = [("tileseg-post", "tileseg-cog", "post-processing on / K-means only (target <= 2)"),
         ("tileseg-proc1", "tileseg-proc2", "1 worker process / 2 (target >= 1.7)")]


def pair_ratios(runs: list[dict[str, Any]], names: list[str]) -> list[tuple[str, float]]:
    """Median over rounds of wall(a) / wall(b) for each pair of :data:`PAIRS` run."""
    wall = {(r["approach"], r["round"]): r["wall_s"] for r in runs if r["returncode"] == 0}
    out = []
    for a, b, label in PAIRS:
        vals = [wall[(a, i)] / wall[(b, i)] for (n, i) in wall if n == a and (b, i) in wall]
        if a in names and b in names and vals:
            out.append((f"{a} / {b}: {label}", statistics.median(vals)))
    return out


def _fmt(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def format_tables(rows: list[dict[str, Any]], sp: dict[str, dict[str, float]],
                  reads: dict[str, Any] | None,
                  pairs: list[tuple[str, float]] | None = None) -> str:
    lines = ["| approach | MPix | wall s | MPix/s | CPU s | peak RSS MiB | x floor | CPU x floor "
             "| note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        wall = _fmt(r.get("wall_s"), ".2f")
        if r.get("runs", 0) > 1:
            wall += f" ({r['wall_s_min']:.2f}-{r['wall_s_max']:.2f})"
        lines.append(
            f"| {r['approach']} | {_fmt(r.get('mpix'), '.1f')} | {wall} | "
            f"{_fmt(r.get('mpix_s'), '.2f')} | {_fmt(r.get('cpu_s'), '.1f')} | "
            f"{_fmt(r.get('peak_rss_mib'), '.0f')} | {_fmt(r.get('x_floor'), '.2f')} | "
            f"{_fmt(r.get('cpu_x_floor'), '.2f')} | {r.get('note', '')} |")
    peers = sorted({p for v in sp.values() for p in v})
    if sp and peers:
        lines += ["", "tileseg speed-up over each peer (MPix/s ratio, paired per round; "
                  ">1: tileseg faster):", "",
                  "| tileseg variant | " + " | ".join(peers) + " |",
                  "| --- | " + " | ".join("---:" for _ in peers) + " |"]
        for t, v in sp.items():
            lines.append(f"| {t} | " + " | ".join(_fmt(v.get(p), ".2f") for p in peers) + " |")
    if pairs:
        lines += ["", "variant ratios (wall time, paired per round):", ""]
        lines += [f"- {label}: {v:.2f}" for label, v in pairs]
    lines += stages_table(rows, "tileseg stages (report.json timings_s, medians; "
                          "outside_run = process wall - total: start-up, imports, exit):",
                          label="variant")
    peer_stages = [r for r in rows if r.get("stages_s")]
    if peer_stages:
        lines += ["", "peer stages (seconds inside the script, medians):", ""]
        for r in peer_stages:
            lines.append(f"- {r['approach']}: " + ", ".join(
                f"{k} {v:.2f}" for k, v in r["stages_s"].items()))
    if reads:
        lines += [""]
        if "error" in reads:
            lines.append(f"input reads ({reads['approach']}): the counting run failed")
        else:
            lines.append(
                f"input reads ({reads['approach']}): {reads['read_calls']} read requests in "
                f"{reads['processes']} process(es), {reads['passes']:.2f} full passes over "
                f"the input; each of the {reads['tiles']} file tiles read "
                f"{reads['tile_reads_min']:g}-{reads['tile_reads_max']:g} times "
                f"(median {reads['tile_reads_median']:g})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="approaches: " + ", ".join(
                                     f"{a.name} ({a.title})" for a in APPROACHES.values()))
    ap.add_argument("--scene", type=Path, help="input GeoTIFF (default: build with --size)")
    ap.add_argument("--size", type=int, default=12000, help="scene side when building "
                    "(default 12000; bench/data/, reused)")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--approaches", default=DEFAULT,
                    help=f"comma-separated, or 'all' (default {DEFAULT})")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (medians reported)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--chunks", type=int, default=None, help="tileseg chunks (default: its own)")
    ap.add_argument("--tileseg-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra --set for every tileseg run (repeatable)")
    ap.add_argument("--daskml-crop", type=int, default=2048, help="dask-ml crop side; 0: all")
    ap.add_argument("--otb-ram", type=int, default=2048, help="OTB -ram hint (MB)")
    ap.add_argument("--read-count", action=argparse.BooleanOptionalAction, default=True,
                    help="count tileseg's reads of the input (one extra run)")
    ap.add_argument("--read-count-approach", default="tileseg",
                    help="tileseg variant for the read count (default tileseg)")
    ap.add_argument("--workdir", type=Path, default=OUT, help="outputs and logs (bench/out)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the label outputs")
    ap.add_argument("--json", type=Path, help="save machine, runs and summary as JSON")
    ap.add_argument("--no-warm", action="store_true",
                    help="do not read the scene into the page cache first")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="run tileseg once, untimed, on a 256 x 256 scene first (numba's "
                    "on-disk cache then holds the compiled kernels, as after any first run)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--pipeline-rev", metavar="REV",
                     help="benchmark tileseg as committed at git revision REV (a `git "
                     "archive` snapshot of pipeline/ in the workdir) instead of the "
                     "installed working tree")
    src.add_argument("--pipeline-src", type=Path, metavar="DIR",
                     help="benchmark the `pipeline` package found in DIR")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="run nothing: print the tables of a saved --json file again")
    args = ap.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        names = list(dict.fromkeys(r["approach"] for r in saved["runs"]))
        print(format_tables(summarise(saved["runs"], names), speedups(saved["runs"], names),
                            saved.get("read_count"), pair_ratios(saved["runs"], names)))
        return 0
    sha = None
    if args.pipeline_rev:
        args.pipeline_src, sha = snapshot_pipeline(args.pipeline_rev, args.workdir.resolve())
    if args.pipeline_src is not None:
        args.pipeline_src = args.pipeline_src.resolve()
        sys.path.insert(0, str(args.pipeline_src))

    names = list(APPROACHES) if args.approaches == "all" else [
        n.strip() for n in args.approaches.split(",") if n.strip()]
    unknown = [n for n in names if n not in APPROACHES]
    if unknown:
        ap.error(f"unknown approach(es) {unknown}; expected some of {list(APPROACHES)}")
    if args.scene is None:
        params = SceneParams(size=args.size, bands=args.bands, tile=tile_for(args.size))
        args.scene, _ = ensure_scene(params)
    scene = args.scene.resolve()
    if not scene.exists():
        ap.error(f"--scene {scene}: no such file")
    work = args.workdir.resolve() / scene.stem
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    pixels = scene_pixels(scene)
    print(f"scene {scene} ({pixels / 1e6:.1f} MPix, {scene.stat().st_size / 2**20:.0f} MiB); "
          f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB; load average "
          f"{info['load_avg_at_start']}", flush=True)
    info["tileseg_source"] = source_info(args.pipeline_src, sha)
    if not args.no_warm:
        warm_page_cache(scene)
    if args.warmup and any(APPROACHES[n].is_tileseg for n in names):
        warmup(scene, work, args)

    skipped_now: dict[str, str] = {}
    if "inmemory" in names:
        import rasterio

        with rasterio.open(scene) as src:
            ok, why = inmemory_safe(src.width * src.height, src.count)
        if not ok:
            skipped_now["inmemory"] = f"whole image in memory {why}"
    runs: list[dict[str, Any]] = []
    for n, why in skipped_now.items():
        runs.append({"approach": n, "round": 0, "returncode": SKIP_EXIT, "skipped": why})
    skip_after: set[str] = set(skipped_now)
    for rnd in range(args.repeat):
        for n in names:
            if n in skip_after:
                continue
            rec = run_one(APPROACHES[n], scene, work, args)
            rec["round"] = rnd
            runs.append(rec)
            status = ("skipped: " + rec["skipped"] if "skipped" in rec else
                      f"FAILED (exit {rec['returncode']})" if "error" in rec else
                      f"{rec['wall_s']:.2f} s, {rec['peak_rss_mib']:.0f} MiB")
            print(f"[round {rnd + 1}/{args.repeat}] {n}: {status}", flush=True)
            if "skipped" in rec:
                skip_after.add(n)
            if "error" in rec:
                print(rec["error"][-1500:], file=sys.stderr)
    reads = read_count(scene, work, args) if args.read_count else None
    rows = summarise(runs, names)
    sp = speedups(runs, names)
    print()
    print(format_tables(rows, sp, reads, pair_ratios(runs, names)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": info, "scene": {"path": str(scene), "pixels": pixels,
                                       "bytes": scene.stat().st_size},
            "argv": sys.argv, "runs": runs, "summary": rows, "speedups": sp,
            "read_count": reads}, indent=2, default=str))
        print(f"\nsaved {args.json}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
