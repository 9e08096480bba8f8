"""Wall time and peak memory of global segments + small-segment merge on a large class map.

The class map (built once under ``bench/data``, tile by tile) is the synthetic scene's
Voronoi classes (6 classes, 256-pixel cells) with 20 % of the pixels set to a random
class: a few hundred large segments and millions of small ones. Each approach runs in
its own process, measured as a whole (``_harness.measure``)::

    python bench/bench_segments.py                       # 8192 x 8192, 512 x 512 chunks
    python bench/bench_segments.py --size 2048 --approaches tileseg,scipy

- ``tileseg``: ``segment_tasks`` + ``resolve_segments`` + ``merge_small_segments``
  (min 16 pixels, one feature: the class value) + ``relabel_segments`` computed block
  by block (IDs reduced to a checksum, not written); Dask threads, 8-connectivity;
- ``tileseg-nomerge``: the same without the merge (labels, table, relabel);
- ``scipy``: the whole map in memory, ``scipy.ndimage.label`` class by class (no merge);
- ``dask-image``: ``dask_image.ndmeasure.label`` of one class (binary), computed block
  by block (skipped without ``dask-image``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _harness import DATA, OUT, measure, report_result, skip

TILE = 512
APPROACHES = ("tileseg", "tileseg-nomerge", "scipy", "dask-image")


def build(size: int) -> Path:
    """Write the class map unless it exists; return its path."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from pipeline.synthetic import class_window

    path = DATA / f"segments-classes-{size}.tif"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                   nodata=255, tiled=True, blockxsize=TILE, blockysize=TILE,
                   compress="deflate", predictor=2, crs=CRS.from_epsg(32633),
                   transform=from_origin(500000.0, 5000000.0, 10.0, 10.0))
    with rasterio.open(tmp, "w", **profile) as dst:
        for y0 in range(0, size, TILE):
            for x0 in range(0, size, TILE):
                h, w = min(TILE, size - y0), min(TILE, size - x0)
                c = class_window(y0, x0, h, w, cell=256, n_classes=6)
                rng = np.random.default_rng([y0, x0, 1])
                flip = rng.random(c.shape) < 0.2
                c[flip] = rng.integers(0, 6, int(flip.sum()))
                dst.write(c, 1, window=((y0, y0 + h), (x0, x0 + w)))
    tmp.replace(path)
    return path


def _open(path: Path, chunk: int):
    from pipeline.io import open_image

    return open_image(path, chunks=chunk).isel(band=0)


def run_tileseg(path: Path, chunk: int, merge: bool) -> None:
    import dask

    from pipeline.postprocess import (
        merge_small_segments,
        relabel_segments,
        resolve_segments,
        segment_tasks,
    )

    labels = _open(path, chunk)
    feats = labels.astype(np.float32).expand_dims("feature")
    min_px = 16 if merge else None
    t0 = time.perf_counter()
    tasks = segment_tasks(labels, feats, connectivity=8, min_pixels=min_px)
    pieces, joins = dask.compute(tasks.pieces, tasks.joins)
    t1 = time.perf_counter()
    index = resolve_segments(tasks, pieces, joins)
    found = index.n_segments
    n_edges = 0 if index.edges is None else int(index.edges[0].size)
    del pieces, joins
    t2 = time.perf_counter()
    if merge:
        index = merge_small_segments(index, min_px)
    t3 = time.perf_counter()
    seg = relabel_segments(labels, index)
    checksum = int(seg.data.map_blocks(lambda b: np.array([[b.sum(dtype=np.uint64)]]),
                                       dtype=np.uint64, chunks=(1, 1)).sum().compute())
    t4 = time.perf_counter()
    report_result(found=found, segments=index.n_segments, small_edges=n_edges,
                  summaries_s=t1 - t0, resolve_s=t2 - t1, merge_s=t3 - t2,
                  relabel_s=t4 - t3, checksum=checksum)


def run_scipy(path: Path) -> None:
    import rasterio
    import scipy.ndimage as ndi

    with rasterio.open(path) as src:
        classes = src.read(1)
    t0 = time.perf_counter()
    structure = np.ones((3, 3), bool)
    found = 0
    for c in range(6):
        _, n = ndi.label(classes == c, structure=structure)
        found += n
    report_result(found=found, label_s=time.perf_counter() - t0)


def run_dask_image(path: Path, chunk: int) -> None:
    try:
        from dask_image.ndmeasure import label
    except ImportError:
        skip("dask-image is not installed (pip install dask-image)")
    labels = _open(path, chunk)
    t0 = time.perf_counter()
    lab, n = label(labels.data == 0, structure=np.ones((3, 3), bool))
    checksum = int(lab.map_blocks(lambda b: np.array([[b.sum(dtype=np.uint64)]]),
                                  dtype=np.uint64, chunks=(1, 1)).sum().compute())
    report_result(found_class0=int(n), label_s=time.perf_counter() - t0, checksum=checksum)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--approaches", default=",".join(APPROACHES))
    ap.add_argument("--run", help=argparse.SUPPRESS)  # internal: the measured child
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        path = Path(args.path)
        if args.run == "tileseg":
            run_tileseg(path, args.chunk, merge=True)
        elif args.run == "tileseg-nomerge":
            run_tileseg(path, args.chunk, merge=False)
        elif args.run == "scipy":
            run_scipy(path)
        else:
            run_dask_image(path, args.chunk)
        return
    path = build(args.size)
    # numba compiles into its on-disk cache once, outside the measurements
    small = build(512)
    run_tileseg(small, 256, merge=True)
    rows = []
    for name in args.approaches.split(","):
        cmd = [sys.executable, __file__, "--run", name, "--path", str(path),
               "--chunk", str(args.chunk)]
        m = measure(cmd, log_path=OUT / f"segments-{name}-{args.size}.log")
        if m.returncode == 3:
            print(f"{name}: skipped ({m.log.strip().splitlines()[-1]})")
            continue
        if m.returncode != 0:
            raise SystemExit(f"{name} failed:\n{m.log}")
        rows.append((name, m))
    mpix = args.size**2 / 1e6
    print(f"\n{args.size} x {args.size} class map ({mpix:.0f} MPix), chunks {args.chunk}\n")
    print("| approach | wall s | CPU s | MPix/s | peak RSS MiB | details |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, m in rows:
        details = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in m.result.items() if k != "checksum")
        print(f"| {name} | {m.wall_s:.1f} | {m.cpu_s:.1f} | {mpix / m.wall_s:.1f} "
              f"| {m.peak_rss_mib:.0f} | {details} |")


if __name__ == "__main__":
    main()
