"""Peer: the seed tutorials' way, the whole image in memory + scikit-learn ``KMeans``.

    python bench/peer_sklearn_inmemory.py --scene SCENE.tif --out labels.tif [--k 8]

``src.read()`` the whole image, reshape to (pixels, bands) ``float32`` as the tutorials
do (``np.float32(pixels)``; float64 needs ~1.6x the memory), drop nodata pixels,
``KMeans(n_clusters=k).fit`` on all of them (scikit-learn's defaults: k-means++,
``n_init="auto"``, Lloyd to ``tol=1e-4``), write the labels as a uint8 GeoTIFF like the
I/O floor. Refuses (exit 3) when its memory estimate exceeds half
the RAM or 80 % of what is available, unless ``--force``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _harness import inmemory_safe, label_profile, report_result, skip, valid_mask


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="run even above the memory limit")
    args = ap.parse_args(argv)

    import numpy as np
    import rasterio

    with rasterio.open(args.scene) as src:
        ok, why = inmemory_safe(src.width * src.height, src.count)
        if not ok and not args.force:
            skip(f"whole image in memory {why}")
        t = time.perf_counter()
        image = src.read()
        profile = label_profile(src)
        nodata = src.nodata
    t_read = time.perf_counter() - t

    from sklearn.cluster import KMeans

    t = time.perf_counter()
    bands, height, width = image.shape
    valid = valid_mask(image, nodata).ravel()
    x = image.reshape(bands, -1).T[valid].astype(np.float32)
    del image
    model = KMeans(n_clusters=args.k, random_state=args.seed).fit(x)
    labels = np.full(height * width, 255, dtype=np.uint8)
    labels[valid] = model.labels_
    del x
    t_fit = time.perf_counter() - t

    t = time.perf_counter()
    with rasterio.open(args.out, "w", **profile) as dst:
        dst.write(labels.reshape(height, width), 1)
    t_write = time.perf_counter() - t
    report_result(pixels=height * width, n_iter=int(model.n_iter_),
                  inertia=float(model.inertia_),
                  stages_s={"read": t_read, "fit_label": t_fit, "write": t_write})


if __name__ == "__main__":
    main()
