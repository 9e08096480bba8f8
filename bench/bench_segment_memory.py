"""Segments on single-band noise: time and peak memory against the image size.

Uniform noise labelled by K-means (k 8, 8-connectivity) is the worst case of the
segment stage: about one segment per 1.8 pixels (9.4 million at 4096^2), almost all of
them smaller than any minimum size. Each size and mode runs ``tileseg run`` in its own
process (``_harness.measure``: wall time, and the peak RSS of the process tree, which
is the client process here: the threaded scheduler)::

    python bench/bench_segment_memory.py                      # 2048 and 4096
    python bench/bench_segment_memory.py --sizes 4096 8192 --modes min_size
    python bench/bench_segment_memory.py --baseline-rev 181e39f  # and the in-memory resolver
    python bench/bench_segment_memory.py --volume --sizes 256 384 --modes min_size

Modes: ``segments`` (no minimum size), ``min_size`` (16 pixels), ``merge``
(``min_size`` 16 then ward merging to 1000 regions), ``merge_files`` (the same with
the merge loop's graph in files: ``postprocess.merge.graph: files``). Prints a table
and saves JSON
under bench/out/. ``--baseline-rev REV`` also runs tileseg as committed at REV (a
``git archive`` of pipeline/, e.g. the last commit whose resolver held every segment
in memory) on the same input, each run in its own process, and prints the ratios.
Segments and ``min_size`` are bounded by chunks (peak RSS flat in the image size);
region merging (``merge``) holds the leaves' graph in memory where it fits in half the
memory available, ``merge_files`` a fixed part of it (RESULTS 11e, 11f).
With ``--volume``, the sizes are a cube's side: single-band noise volumes ``(z, y, x)``
(a Zarr store of 128^3 chunks, the default chunk of a volume), 6-connected segments
(the most of them), the outputs in Zarr.
Before the measured runs, each source and mode runs once on 512^2 noise (not
recorded): the compiled kernels are then in numba's cache, so that no measured run
pays for compiling them (seconds, and a few hundred MiB of the peak).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _harness import OUT, measure
from run_bench import child_env, pipeline_env, snapshot_pipeline

MODES = {
    "segments": {"segments": {"connectivity": 8}},
    "min_size": {"segments": {"connectivity": 8}, "min_size": 16},
    "merge": {"segments": {"connectivity": 8}, "min_size": 16,
              "merge": {"criterion": "ward", "regions": 1000}},
    # the merge loop's graph in files whatever the memory (auto takes them where the
    # graph in memory would take more than half of it)
    "merge_files": {"segments": {"connectivity": 8}, "min_size": 16,
                    "merge": {"criterion": "ward", "regions": 1000, "graph": "files"}},
}


def _made_once(name: str, write: Any) -> Path:
    """``OUT/segment-memory/<name>``, written by ``write(partial path, rng)`` if missing."""
    import numpy as np

    path = OUT / "segment-memory" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"part-{name}")
        write(part, np.random.default_rng(11))
        part.rename(path)
    return path


def noise(size: int) -> Path:
    """A ``size``^2 uint8 noise GeoTIFF (512-pixel DEFLATE tiles), made once."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    def write(part: Path, rng: Any) -> None:
        rows = min(size, 1024)
        with rasterio.open(part, "w", driver="GTiff", width=size, height=size, count=1,
                           dtype="uint8", tiled=True, blockxsize=512, blockysize=512,
                           compress="deflate", crs="EPSG:32633",
                           transform=from_origin(500000, 5000000, 10, 10)) as ds:
            for r in range(0, size, rows):
                ds.write(rng.integers(0, 256, (1, rows, size), dtype=np.uint8),
                         window=((r, r + rows), (0, size)))
    return _made_once(f"noise{size}.tif", write)


def noise_volume(size: int) -> Path:
    """A ``size``^3 uint8 noise volume ``(band, z, y, x)`` in Zarr (128^3 chunks), made once."""
    import numpy as np
    import zarr

    def write(part: Path, rng: Any) -> None:
        side = min(size, 128)
        arr = zarr.open_array(str(part), mode="w", shape=(1, size, size, size),
                              chunks=(1, side, side, side), dtype="uint8")
        for z in range(0, size, side):
            arr[0, z:z + side] = rng.integers(0, 256, (min(side, size - z), size, size),
                                              dtype=np.uint8)
    return _made_once(f"noise{size}.zarr", write)


def _volume_modes() -> dict:
    """:data:`MODES` for volumes: 6-connected segments (8 is an image's)."""
    return {m: {**pp, "segments": {"connectivity": 6}} for m, pp in MODES.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES),
                    default=["segments", "min_size", "merge"])
    ap.add_argument("--baseline-rev", metavar="REV",
                    help="also run tileseg as committed at REV (git archive of pipeline/)")
    ap.add_argument("--volume", action="store_true",
                    help="noise volumes: the sizes are a cube's side")
    args = ap.parse_args()
    make, dims = (noise_volume, 3) if args.volume else (noise, 2)
    work = OUT / "segment-memory"
    sources: dict[str, Path | None] = {"tree": None}
    if args.baseline_rev:
        sources[f"rev {args.baseline_rev}"] = snapshot_pipeline(args.baseline_rev, work)[0]
    for mode in args.modes:  # numba's cache filled for each source: not measured
        for code in sources.values():
            _run_one(work, make(64 if args.volume else 512), 64 if args.volume else 512,
                     mode, "warm-up", code, dims)
    rows = []
    for size in args.sizes:
        src = make(size)
        for mode in args.modes:
            for label, code in sources.items():
                row = _run_one(work, src, size, mode, label, code, dims)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| size | mode | tileseg | wall s | merge s | peak RSS MiB | segments found "
          "| after |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        base = next((b for b in rows if b["size"] == r["size"] and b["mode"] == r["mode"]
                     and b["source"] != "tree"), None)
        ratio = "" if base is None or r is base or not base["wall_s"] else \
            f" ({r['wall_s'] / base['wall_s']:.2f}x time, " \
            f"{r['peak_rss_mib'] / max(base['peak_rss_mib'], 1):.2f}x RSS)"
        print(f"| {r['size']}^{dims} | {r['mode']} | {r['source']}{ratio} | {r['wall_s']} | "
              f"{r.get('merge_s', '-')} | {r['peak_rss_mib']} | {r.get('found', '-')} | "
              f"{r.get('segments', '-')} |")
    name = "segment-memory-volume.json" if args.volume else "segment-memory.json"
    (OUT / name).write_text(json.dumps(rows, indent=2))


def _run_one(work: Path, src: Path, size: int, mode: str, label: str, code: Path | None,
             dims: int = 2) -> dict:
    """One ``tileseg run`` of ``mode`` on ``src`` in its own process (``code``: a snapshot).

    ``dims``: 3 for a volume (6-connected segments, Zarr outputs).
    """
    tag = f"{mode}-{size}" + ("" if dims == 2 else "-vol") + \
        ("" if code is None else f"-{code.name}")
    cfg = {"input": str(src), "output": str(work / f"out-{tag}"),
           "features": ["bands"], "cluster": {"method": "kmeans", "k": 8, "seed": 0},
           "formats": ["cog"] if dims == 2 else ["zarr"],
           "postprocess": (MODES if dims == 2 else _volume_modes())[mode]}
    cfg_path = work / f"{tag}.json"
    cfg_path.write_text(json.dumps(cfg))
    m = measure([sys.executable, "-m", "pipeline.cli", "run", str(cfg_path), "-q",
                 "--overwrite"], log_path=work / f"{tag}.log", env=child_env(pipeline_env(code)),
                cwd=work)  # not the repository: python -m would import its pipeline/
    row = {"size": size, "mode": mode, "source": label, "rc": m.returncode,
           "wall_s": round(m.wall_s, 2), "peak_rss_mib": round(m.peak_rss_mib),
           "cpu_s": round(m.cpu_s, 1)}
    report = Path(cfg["output"]) / "report.json"
    if m.returncode == 0 and report.exists():
        seg = json.loads(report.read_text()).get("segments", {})
        row.update(found=seg.get("found"), segments=seg.get("segments"))
        if "merge" in seg:  # the merge: its graph, loop, cut and region statistics
            row.update(merge_s=seg["merge"]["seconds"], graph=seg["merge"]["graph"])
    return row


if __name__ == "__main__":
    main()
