"""Segments on single-band noise: time and peak memory against the image size.

Uniform noise labelled by K-means (k 8, 8-connectivity) is the worst case of the
segment stage: about one segment per 1.8 pixels (9.4 million at 4096^2), almost all of
them smaller than any minimum size. Each size and mode runs ``tileseg run`` in its own
process (``_harness.measure``: wall time, and the peak RSS of the process tree, which
is the client process here: the threaded scheduler)::

    python bench/bench_segment_memory.py                      # 2048 and 4096
    python bench/bench_segment_memory.py --sizes 4096 8192 --modes min_size

Modes: ``segments`` (no minimum size), ``min_size`` (16 pixels), ``merge``
(``min_size`` 16 then ward merging to 1000 regions). Prints a table and saves JSON
under bench/out/. A flat curve of peak RSS against size is issue 17's target; today
the segment summaries live in the client, so it grows with the number of segments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _harness import OUT, measure

MODES = {
    "segments": {"segments": {"connectivity": 8}},
    "min_size": {"segments": {"connectivity": 8}, "min_size": 16},
    "merge": {"segments": {"connectivity": 8}, "min_size": 16,
              "merge": {"criterion": "ward", "regions": 1000}},
}


def noise(size: int) -> Path:
    """A ``size``^2 uint8 noise GeoTIFF (512-pixel DEFLATE tiles), made once."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    path = OUT / "segment-memory" / f"noise{size}.tif"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part.tif")
    rng = np.random.default_rng(11)
    rows = min(size, 1024)
    with rasterio.open(part, "w", driver="GTiff", width=size, height=size, count=1,
                       dtype="uint8", tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 10, 10)) as ds:
        for r in range(0, size, rows):
            ds.write(rng.integers(0, 256, (1, rows, size), dtype=np.uint8),
                     window=((r, r + rows), (0, size)))
    part.rename(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES),
                    default=["segments", "min_size", "merge"])
    args = ap.parse_args()
    work = OUT / "segment-memory"
    rows = []
    for size in args.sizes:
        src = noise(size)
        for mode in args.modes:
            cfg = {"input": str(src), "output": str(work / f"out-{mode}-{size}"),
                   "features": ["bands"], "cluster": {"method": "kmeans", "k": 8, "seed": 0},
                   "formats": ["cog"], "postprocess": MODES[mode]}
            cfg_path = work / f"{mode}-{size}.json"
            cfg_path.write_text(json.dumps(cfg))
            m = measure([sys.executable, "-m", "pipeline.cli", "run", str(cfg_path), "-q",
                         "--overwrite"], log_path=work / f"{mode}-{size}.log")
            row = {"size": size, "mode": mode, "rc": m.returncode, "wall_s": round(m.wall_s, 2),
                   "peak_rss_mib": round(m.peak_rss_mib), "cpu_s": round(m.cpu_s, 1)}
            report = Path(cfg["output"]) / "report.json"
            if m.returncode == 0 and report.exists():
                seg = json.loads(report.read_text()).get("segments", {})
                row.update(found=seg.get("found"), segments=seg.get("segments"))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| size | mode | wall s | peak RSS MiB | segments found | after |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['size']}^2 | {r['mode']} | {r['wall_s']} | {r['peak_rss_mib']} | "
              f"{r.get('found', '-')} | {r.get('segments', '-')} |")
    (OUT / "segment-memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
