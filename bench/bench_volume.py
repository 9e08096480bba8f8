"""Wall time and peak memory of ``tileseg run`` on OME-Zarr volumes, against a Zarr I/O floor.

    python bench/bench_volume.py                                # 256^3, 512^3, 1024x1024x512
    python bench/bench_volume.py --sizes 256,512 --repeat 3
    python bench/bench_volume.py --sizes 64 --repeat 1          # smoke-sized

The input is a synthetic single-band uint16 volume (a head-like ellipsoid on a dark
background, three smooth tissue classes inside, a slight bias field, Gaussian noise),
stored as an OME-Zarr image (NGFF 0.5 on Zarr v3, axes z/y/x in millimetres, 128^3
chunks, Blosc zstd level 5 with byte shuffle: the codec of tileseg's OME-Zarr outputs).
It is generated chunk by chunk (every voxel a function of its global index and the
seed), so building it takes one chunk of memory, and cached under ``bench/data/``.
Sizes are ``N`` (an N^3 cube) or ``XxYxZ`` (``1024x1024x512``: z = 512 slices).

Each approach runs in its own process, measured as a whole (``_harness.measure``: wall
time from process start, CPU of the process tree, peak RSS of the process tree):

- ``floor``: the I/O floor for volumes: ``dask.array.from_zarr`` of level 0, then
  ``to_zarr`` of the same uint16 volume with the same chunks and codec (Zarr v3), Dask
  threads (one per core);
- ``read``: the read floor: decode every chunk once (each reduced to its maximum), no
  write; tileseg must do at least this;
- ``floor-u8`` (on request): ``floor`` with each voxel reduced to one byte (``v >> 4``)
  before it is written (noisy bytes: no cheaper to encode than the uint16 copy);
- ``kmeans-zarr``: ``tileseg run``, features ``[bands]``, K-means k = 4 (seed 0),
  ``formats: [zarr]``;
- ``kmeans-omezarr``: the same with ``formats: [ome-zarr]`` (the label image and its
  pyramid);
- ``segments-zarr``: ``kmeans-zarr`` plus ``postprocess: {segments: {connectivity: 26}}``
  (``segments.zarr`` and ``segments.parquet``).

The store is read once before the runs (page cache); tileseg runs once, untimed, on a
32^3 volume per variant first, so that numba's on-disk cache holds its kernels. With
``--repeat N`` the approaches run round-robin N times: medians, and ratios to the floor
paired within each round.
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

import numpy as np
from _harness import DATA, OUT, measure, report_result
from run_bench import (
    child_env,
    clear,
    machine_info,
    pipeline_env,
    snapshot_pipeline,
    source_info,
    tileseg_cmd,
)

CHUNK = 128
APPROACHES = ("floor", "read", "floor-u8", "kmeans-zarr", "kmeans-omezarr", "segments-zarr")
DEFAULT = "floor,read,kmeans-zarr,kmeans-omezarr,segments-zarr"
DEFAULT_SIZES = "256,512,1024x1024x512"
#: class means of background, tissue A, B, C; the noise's standard deviation
MEANS = (40.0, 700.0, 1100.0, 1600.0)
NOISE = 60.0
SPACING_MM = 0.5
#: what a tileseg variant changes in the config
VARIANTS: dict[str, dict[str, Any]] = {
    "kmeans-zarr": {"formats": ["zarr"]},
    "kmeans-omezarr": {"formats": ["ome-zarr"]},
    "segments-zarr": {"formats": ["zarr"], "postprocess": {"segments": {"connectivity": 26}}},
}


# --------------------------------------------------------------------------- the volume


def parse_size(text: str) -> tuple[int, int, int]:
    """``"256"`` -> (256, 256, 256); ``"1024x1024x512"`` (x, y, z) -> (512, 1024, 1024)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        return (parts[0],) * 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or XxYxZ")
    x, y, z = parts
    return z, y, x


def size_name(shape: tuple[int, int, int]) -> str:
    z, y, x = shape
    return f"{x}^3" if x == y == z else f"{x}x{y}x{z}"


def volume_block(starts: tuple[int, int, int], shape: tuple[int, int, int],
                 full: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One block of the synthetic volume: (uint16 intensities, uint8 true classes).

    Every voxel depends only on its global index and ``seed``, so any blocking gives the
    same volume. Coordinates are normalised to [-1, 1] along each axis, so the anatomy
    is the same at every size (finer at the larger ones).
    """
    axes = []
    for a, (s, n, f) in enumerate(zip(starts, shape, full, strict=True)):
        c = (np.arange(s, s + n, dtype=np.float32) + 0.5) / f * 2 - 1
        axes.append(c.reshape([n if i == a else 1 for i in range(3)]))
    zn, yn, xn = axes
    pi = np.float32(np.pi)
    # the head: an ellipsoid with a wavy outline
    wobble = 0.03 * (np.sin(7 * pi * xn) + np.sin(5 * pi * yn + 1) + np.sin(6 * pi * zn + 2))
    r2 = (xn / 0.9) ** 2 + (yn / 0.85) ** 2 + (zn / 0.9) ** 2
    inside = r2 < (1 + wobble) ** 2
    # three tissues: level sets of a smooth field (folds, a gradient along z)
    g = (np.sin(3 * pi * xn + 0.5) * np.cos(2 * pi * yn - 0.3)
         + 0.6 * np.sin(4 * pi * zn + pi * xn + 1.0)
         + 0.4 * np.cos(5 * pi * (xn + yn) + 2 * pi * zn))
    classes = np.where(g < -0.35, 1, np.where(g < 0.45, 2, 3)).astype(np.uint8)
    classes = np.where(inside, classes, np.uint8(0))
    means = np.asarray(MEANS, dtype=np.float32)[classes]
    bias = 1 + 0.03 * xn + 0.02 * (yn * yn) - 0.02 * zn  # slight, smooth
    rng = np.random.default_rng([seed, *starts])
    values = means * bias + np.float32(NOISE) * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(np.rint(values), 0, 65535).astype(np.uint16), classes


def volume_path(shape: tuple[int, int, int], seed: int = 0) -> Path:
    z, y, x = shape
    return DATA / f"volume-{x}x{y}x{z}-u16-c{CHUNK}-s{seed}.ome.zarr"


def _blosc() -> Any:
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


def build(shape: tuple[int, int, int], seed: int = 0, *, quiet: bool = False) -> Path:
    """Write the OME-Zarr volume chunk by chunk unless a complete one exists."""
    import shutil

    import zarr

    path = volume_path(shape, seed)
    done = path / ".complete"
    if done.exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    DATA.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not quiet:
        print(f"building {path.name} ({size_name(shape)}, {np.prod(shape) / 1e6:.0f} MVox) ...",
              file=sys.stderr, flush=True)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    arr = group.create_array("0", shape=shape, chunks=(CHUNK,) * 3, dtype="uint16",
                             compressors=_blosc(), fill_value=0,
                             dimension_names=("z", "y", "x"))
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{
            "name": "synthetic head",
            "axes": [{"name": a, "type": "space", "unit": "millimeter"} for a in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [SPACING_MM] * 3}]}],
        }],
    }
    for z0 in range(0, shape[0], CHUNK):
        for y0 in range(0, shape[1], CHUNK):
            for x0 in range(0, shape[2], CHUNK):
                starts = (z0, y0, x0)
                n = tuple(min(CHUNK, f - s) for s, f in zip(starts, shape, strict=True))
                block, _ = volume_block(starts, n, shape, seed)
                arr[z0:z0 + n[0], y0:y0 + n[1], x0:x0 + n[2]] = block
    done.write_text(json.dumps({"shape": shape, "seed": seed, "means": MEANS,
                                "noise": NOISE}))
    if not quiet:
        mib = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        print(f"built {path.name} in {time.perf_counter() - t0:.0f} s ({mib:.0f} MiB)",
              file=sys.stderr, flush=True)
    return path


def warm_page_cache(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            f.read_bytes()


def store_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# --------------------------------------------------------------------------- approaches


def run_floor(path: Path, out: Path, mode: str = "floor") -> None:
    """The measured floors: read level 0 (and write it again as Zarr), Dask threads."""
    import dask
    import dask.array as da

    t0 = time.perf_counter()
    arr = da.from_zarr(str(path), component="0")
    if mode == "read":
        with dask.config.set(scheduler="threads"):
            top = int(arr.map_blocks(lambda b: np.array([[[b.max()]]]), chunks=(1, 1, 1),
                                     dtype=arr.dtype).max().compute())
        report_result(voxels=int(arr.size), max=top, read_s=time.perf_counter() - t0)
        return
    if mode == "floor-u8":
        arr = da.minimum(arr >> 4, 255).astype(np.uint8)
    with dask.config.set(scheduler="threads"):
        da.to_zarr(arr, str(out), component="volume", overwrite=True, zarr_format=3,
                   compressors=_blosc(), dimension_names=("z", "y", "x"))
    report_result(voxels=int(arr.size), chunks=list(arr.chunksize),
                  copy_s=time.perf_counter() - t0)


def write_config(name: str, path: Path, out: Path, k: int) -> Path:
    import yaml

    cfg: dict[str, Any] = {
        "input": str(path.resolve()),
        "output": str(out.resolve()),
        "features": ["bands"],
        "cluster": {"method": "kmeans", "k": k, "seed": 0},
        "compute": {"scheduler": "threads"},
        **VARIANTS[name],
    }
    cfg_path = out.parent / "config.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg_path


#: ``pipeline/`` of a committed revision (``--pipeline-rev``); None: the working tree
SRC: Path | None = None


def command(name: str, path: Path, work: Path, k: int) -> tuple[list[str], Path]:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    if name.startswith("floor") or name == "read":
        out = d / "copy.zarr"
        return [sys.executable, __file__, "--run", name, "--path", str(path),
                "--out", str(out)], out
    out = d / "out"
    return [*tileseg_cmd(SRC), "run", str(write_config(name, path, out, k)), "--overwrite",
            "-q"], out


def run_one(name: str, path: Path, work: Path, k: int, keep: bool = False) -> dict[str, Any]:
    cmd, out = command(name, path, work, k)
    clear(out)
    m = measure(cmd, env=child_env(pipeline_env(SRC)), log_path=work / name / "log.txt",
                cwd=work)
    rec: dict[str, Any] = {"approach": name, "returncode": m.returncode, "wall_s": m.wall_s,
                           "cpu_s": m.cpu_s, "peak_rss_mib": m.peak_rss_mib,
                           "peak_rss_tree_mib": m.peak_rss_tree_mib,
                           "maxrss_single_mib": m.maxrss_single_mib,
                           "max_processes": m.max_processes, "result": m.result,
                           "rss_timeline": m.timeline}
    if m.returncode != 0:
        rec["error"] = m.log[-3000:]
    elif not (name.startswith("floor") or name == "read"):
        report = json.loads((out / "report.json").read_text())
        rec["timings_s"] = report.get("timings_s", {})
        seg = report.get("segments") or {}
        if isinstance(seg, dict):
            rec["n_segments"] = seg.get("segments")
        rec["output_mib"] = {p.name: round(store_mib(p) if p.is_dir() else
                                           p.stat().st_size / 2**20, 1)
                             for p in out.iterdir() if p.name.endswith((".zarr", ".parquet"))}
    elif out.exists():
        rec["output_mib"] = {"copy.zarr": round(store_mib(out), 1)}
    if m.returncode == 0 and not keep:
        clear(out)
    return rec


def warmup(work: Path, k: int, names: list[str]) -> None:
    small = build((32, 32, 32), seed=1, quiet=True)
    for name in names:
        if name.startswith("floor") or name == "read":
            continue
        rec = run_one(name, small, work / "warmup", k)
        print(f"warm-up {name} on 32^3: {rec['wall_s']:.1f} s (exit {rec['returncode']})",
              flush=True)


# --------------------------------------------------------------------------- summary


def summarise(runs: list[dict[str, Any]], sizes: list[tuple[int, int, int]],
              names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for shape in sizes:
        sn = size_name(shape)
        floor, rd = ({r["round"]: r for r in runs if r["size"] == sn
                            and r["approach"] == f and r["returncode"] == 0}
                           for f in ("floor", "read"))
        for n in names:
            ok = [r for r in runs if r["size"] == sn and r["approach"] == n
                  and r["returncode"] == 0]
            row: dict[str, Any] = {"size": sn, "mvox": float(np.prod(shape)) / 1e6,
                                   "approach": n, "runs": len(ok)}
            if ok:
                walls = [r["wall_s"] for r in ok]
                row.update(wall_s=statistics.median(walls), wall_min=min(walls),
                           wall_max=max(walls),
                           cpu_s=statistics.median(r["cpu_s"] for r in ok),
                           peak_rss_mib=statistics.median(r["peak_rss_mib"] for r in ok),
                           peak_rss_max=max(r["peak_rss_mib"] for r in ok))
                paired = [r["wall_s"] / floor[r["round"]]["wall_s"] for r in ok
                          if r["round"] in floor]
                row["x_floor"] = statistics.median(paired) if paired else None
                paired = [r["wall_s"] / rd[r["round"]]["wall_s"] for r in ok
                          if r["round"] in rd]
                row["x_read"] = statistics.median(paired) if paired else None
                if ok[0].get("timings_s"):
                    keys = ok[0]["timings_s"].keys()
                    row["timings_s"] = {k: statistics.median(r["timings_s"].get(k, 0.0)
                                                             for r in ok) for k in keys}
                if ok[0].get("n_segments") is not None:
                    row["n_segments"] = ok[0]["n_segments"]
                row["output_mib"] = ok[0].get("output_mib")
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | MVox | approach | wall s (min-max) | MVox/s | x floor | x read "
             "| CPU s | peak RSS MiB | tileseg stages s |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if not r.get("wall_s"):
            lines.append(f"| {r['size']} | {r['mvox']:.0f} | {r['approach']} | failed "
                         "| | | | | |")
            continue
        t = r.get("timings_s") or {}
        stages = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total" and v >= 0.05)
        if r.get("n_segments") is not None:
            stages += f"; {r['n_segments']:,} segments"
        xf = " | ".join("" if r.get(c) is None else f"{r[c]:.2f}"
                        for c in ("x_floor", "x_read"))
        lines.append(
            f"| {r['size']} | {r['mvox']:.0f} | {r['approach']} | {r['wall_s']:.1f} "
            f"({r['wall_min']:.1f}-{r['wall_max']:.1f}) | {r['mvox'] / r['wall_s']:.1f} | {xf} "
            f"| {r['cpu_s']:.1f} | {r['peak_rss_mib']:.0f} | {stages} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES,
                    help=f"comma-separated N (cube) or XxYxZ (default {DEFAULT_SIZES})")
    ap.add_argument("--approaches", default=DEFAULT,
                    help=f"comma-separated, of {', '.join(APPROACHES)} (default {DEFAULT})")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per size (medians)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=OUT / "volume")
    ap.add_argument("--json", type=Path, help="save every run and the summary")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--pipeline-rev", metavar="REV",
                    help="measure tileseg as committed at REV (a git archive of pipeline/, "
                         "as run_bench.py does); default: the working tree")
    ap.add_argument("--run", help=argparse.SUPPRESS)  # internal: the measured floor
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run in ("floor", "floor-u8", "read"):
        run_floor(Path(args.path), Path(args.out), mode=args.run)
        return 0
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    names = [n.strip() for n in args.approaches.split(",") if n.strip()]
    unknown = [n for n in names if n not in APPROACHES]
    if unknown:
        ap.error(f"unknown approach(es) {unknown}; known: {', '.join(APPROACHES)}")
    global SRC
    work = args.workdir.resolve()
    sha = None
    if args.pipeline_rev:
        SRC, sha = snapshot_pipeline(args.pipeline_rev, work)
    info = machine_info()
    info["tileseg_source"] = source_info(SRC, sha)
    if not args.no_warmup:
        warmup(work, args.k, names)
    runs: list[dict[str, Any]] = []
    for shape in sizes:
        path = build(shape)
        warm_page_cache(path)
        sn = size_name(shape)
        print(f"{sn}: {path.name}, {store_mib(path):.0f} MiB on disk "
              f"({np.prod(shape) * 2 / 2**20:.0f} MiB raw)", flush=True)
        for rnd in range(args.repeat):
            for n in names:
                rec = run_one(n, path, work / sn, args.k)
                rec.update(round=rnd, size=sn)
                runs.append(rec)
                ok = rec["returncode"] == 0
                shown = (f"{rec['wall_s']:7.1f} s {rec['peak_rss_mib']:6.0f} MiB" if ok
                         else "FAILED")
                print(f"{sn:>14} {n:<15} {shown}", flush=True)
                if not ok:
                    print(rec["error"][-1500:], file=sys.stderr)
    rows = summarise(runs, sizes, names)
    print(f"\n{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB; uint16 volume, "
          f"{CHUNK}^3 chunks, k = {args.k}; {args.repeat} round(s); {info['date']}; load "
          f"average {info['load_avg_at_start']} at start, "
          f"{[round(x, 2) for x in os.getloadavg()]} at end; tileseg: {info['tileseg_source']}\n")
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "argv": sys.argv, "runs": runs,
                                         "summary": rows}, indent=2, default=str))
        print(f"\nsaved {args.json}")
    return 1 if any(not r.get("wall_s") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
