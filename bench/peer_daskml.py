"""Peer: dask-ml ``KMeans`` on the Dask array (on a central crop: it is slow).

    python bench/peer_daskml.py --scene SCENE.tif --out labels.tif [--crop 2048] [--k 8]

Opens the scene lazily with rioxarray (1024-pixel chunks, no lock), takes a central
``crop`` x ``crop`` window (0: the whole image), standardises with global means and
standard deviations, reshapes to a (pixels, bands) Dask array and fits
``dask_ml.cluster.KMeans`` with its defaults (``init="k-means||"``, absolute
``tol=1e-4``), then predicts lazily and writes the labels as a uint8 GeoTIFF like the
floor. MPix/s is on the crop's pixels; compare speeds, not wall times. Nodata pixels are
dropped with ``compute_chunk_sizes`` (dask-ml cannot fit unknown chunk sizes). Exits
with code 3 (skipped) when dask-ml is not installed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _harness import label_profile, report_result, skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--crop", type=int, default=2048, help="central crop side; 0 = all")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        from dask_ml.cluster import KMeans
    except ImportError:
        skip("dask-ml is not installed (pip install dask-ml)")
    import dask
    import dask.array as da
    import numpy as np
    import rasterio
    import rioxarray
    from rasterio.windows import Window

    t0 = time.perf_counter()
    image = rioxarray.open_rasterio(args.scene, chunks={"band": -1, "y": 1024, "x": 1024},
                                    lock=False)
    nodata = image.rio.nodata
    bands, height, width = image.shape
    side_y = height if not args.crop else min(args.crop, height)
    side_x = width if not args.crop else min(args.crop, width)
    y0, x0 = (height - side_y) // 2, (width - side_x) // 2
    arr = image.data[:, y0:y0 + side_y, x0:x0 + side_x]
    x = arr.reshape(bands, -1).T.rechunk({0: 1_048_576, 1: -1}).astype(np.float32)
    valid = da.ones(x.shape[0], dtype=bool, chunks=x.chunks[0])
    if nodata is not None:
        valid = (x != nodata).all(axis=1)
    mean, std = dask.compute(x[valid].mean(0), x[valid].std(0))
    std[std == 0] = 1
    xs = ((x - mean) / std)[valid]
    xs.compute_chunk_sizes()
    xs = xs.persist()
    t_prep = time.perf_counter() - t0

    t = time.perf_counter()
    model = KMeans(n_clusters=args.k, random_state=args.seed)
    model.fit(xs)
    t_fit = time.perf_counter() - t

    t = time.perf_counter()
    pred = model.predict(xs).astype(np.uint8).compute()
    valid_np = valid.compute()
    labels = np.full(side_y * side_x, 255, dtype=np.uint8)
    labels[valid_np] = pred
    with rasterio.open(args.scene) as src:
        profile = label_profile(src)
        profile.update(width=side_x, height=side_y,
                       transform=src.window_transform(Window(x0, y0, side_x, side_y)))
    with rasterio.open(args.out, "w", **profile) as dst:
        dst.write(labels.reshape(side_y, side_x), 1)
    t_label = time.perf_counter() - t
    report_result(pixels=side_y * side_x, crop=[side_y, side_x],
                  n_iter=int(model.n_iter_), inertia=float(model.inertia_),
                  stages_s={"prepare": t_prep, "fit": t_fit, "label_write": t_label})


if __name__ == "__main__":
    main()
