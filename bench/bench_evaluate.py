"""Wall time and peak memory of ``tileseg evaluate`` on two large label rasters.

Two pairs are built once under ``bench/data`` (tile by tile, bounded memory) and reused:

- ``classes``: a uint8 class map (the synthetic scene's Voronoi classes, nodata frame)
  against a relabelled copy with 3 % of the pixels changed: few labels, the
  ``bincount`` path;
- ``regions``: two uint32 maps of ~60-pixel rectangles on offset grids (about 100 000
  regions each at 20000 x 20000): many labels, the ``np.unique`` path.

Each evaluation runs in its own process, measured as a whole (``_harness.measure``)::

    python bench/bench_evaluate.py                       # 20000 x 20000, both pairs
    python bench/bench_evaluate.py --size 4096 --kind regions
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _harness import DATA, OUT, measure

TILE = 512


def _profile(size: int, dtype: str, nodata: int | None) -> dict:
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    return dict(driver="GTiff", width=size, height=size, count=1, dtype=dtype, nodata=nodata,
                tiled=True, blockxsize=TILE, blockysize=TILE, compress="deflate",
                predictor=2, BIGTIFF="IF_SAFER", crs=CRS.from_epsg(32633),
                transform=from_origin(500000.0, 5000000.0, 10.0, 10.0))


def _regions(y0: int, x0: int, h: int, w: int, size: int, dy: int, dx: int,
             shift: int) -> np.ndarray:
    y = (np.arange(y0, y0 + h)[:, None] + shift) // dy
    x = (np.arange(x0, x0 + w)[None, :] + shift) // dx
    return (y * (size // dx + 2) + x).astype(np.uint32)


def build(kind: str, size: int) -> tuple[Path, Path]:
    """Write the pair unless it exists; return (prediction, truth)."""
    import rasterio

    from pipeline.synthetic import class_window

    pred = DATA / f"eval-{kind}-{size}-pred.tif"
    truth = DATA / f"eval-{kind}-{size}-truth.tif"
    if pred.exists() and truth.exists():
        return pred, truth
    DATA.mkdir(parents=True, exist_ok=True)
    dtype, nodata = ("uint8", 255) if kind == "classes" else ("uint32", None)
    tmp_p, tmp_t = pred.with_suffix(".tmp.tif"), truth.with_suffix(".tmp.tif")
    perm = np.array([3, 5, 0, 1, 2, 4], dtype=np.uint8)
    with rasterio.open(tmp_p, "w", **_profile(size, dtype, nodata)) as dp, \
            rasterio.open(tmp_t, "w", **_profile(size, dtype, nodata)) as dt:
        for y0 in range(0, size, TILE):
            for x0 in range(0, size, TILE):
                h, w = min(TILE, size - y0), min(TILE, size - x0)
                window = ((y0, y0 + h), (x0, x0 + w))
                if kind == "classes":
                    t = class_window(y0, x0, h, w, cell=256, n_classes=6)
                    rng = np.random.default_rng([y0, x0])
                    p = perm[t]
                    flip = rng.random(t.shape) < 0.03
                    p[flip] = rng.integers(0, 6, int(flip.sum()))
                    yy = np.arange(y0, y0 + h)[:, None]
                    xx = np.arange(x0, x0 + w)[None, :]
                    t[(yy < 64) | (yy >= size - 64) | (xx < 64) | (xx >= size - 64)] = 255
                else:
                    t = _regions(y0, x0, h, w, size, 61, 67, 0)
                    p = _regions(y0, x0, h, w, size, 59, 71, 13)
                dp.write(p, 1, window=window)
                dt.write(t, 1, window=window)
    tmp_p.replace(pred)
    tmp_t.replace(truth)
    return pred, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--kind", choices=["classes", "regions"], nargs="+",
                    default=["classes", "regions"])
    args = ap.parse_args()
    rows = []
    for kind in args.kind:
        pred, truth = build(kind, args.size)
        cmd = [sys.executable, "-m", "pipeline.cli", "evaluate", str(pred), str(truth),
               "--json", "-q"]
        m = measure(cmd, log_path=OUT / f"evaluate-{kind}-{args.size}.log")
        if m.returncode != 0:
            raise SystemExit(f"{kind}: tileseg evaluate failed:\n{m.log}")
        result = json.loads(m.log)
        raw_mib = 2 * args.size**2 * (1 if kind == "classes" else 4) / 2**20
        rows.append((kind, args.size, m.wall_s, m.cpu_s, m.peak_rss_mib, raw_mib,
                     args.size**2 / 1e6 / m.wall_s, result))
    print("| pair | size | wall s | CPU s | MPix/s | peak RSS MiB | both rasters in RAM MiB "
          "| ARI | VoI bits | covering |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, size, wall, cpu, peak, raw, rate, r in rows:
        print(f"| {kind} | {size} x {size} | {wall:.1f} | {cpu:.1f} | {rate:.1f} | {peak:.0f} "
              f"| {raw:.0f} | {r['class']['adjusted_rand_index']} "
              f"| {r['region']['variation_of_information']} "
              f"| {r['region']['segmentation_covering']} |")


if __name__ == "__main__":
    main()
