"""Peer: faiss k-means on a 1 M-pixel sample + per-tile nearest-centroid search.

    python bench/peer_faiss.py --scene SCENE.tif --out labels.tif [--k 8]

The same two passes as ``peer_minibatch.py`` (sample pass, then read / label / write one
tile at a time), with ``faiss.Kmeans`` (25 iterations, the faiss default) for the fit
and its flat L2 index for the labelling. Exits with code 3 (skipped) when ``faiss``
(PyPI: ``faiss-cpu``) is not installed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _harness import label_pass, report_result, sample_pass, skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--sample", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import faiss
    except ImportError:
        skip("faiss is not installed (pip install faiss-cpu)")
    import numpy as np

    t = time.perf_counter()
    sample, n_valid = sample_pass(args.scene, args.sample, args.seed)
    t_sample = time.perf_counter() - t
    t = time.perf_counter()
    mean, std = sample.mean(0), sample.std(0)
    std[std == 0] = 1
    x = np.ascontiguousarray((sample - mean) / std, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], args.k, niter=25, seed=args.seed, verbose=False,
                      max_points_per_centroid=len(x))
    km.train(x)
    t_fit = time.perf_counter() - t

    def predict(block: np.ndarray) -> np.ndarray:
        _, idx = km.index.search(block, 1)
        return idx[:, 0]

    t = time.perf_counter()
    label_pass(args.scene, args.out, predict, mean, std)
    t_label = time.perf_counter() - t
    import rasterio

    with rasterio.open(args.scene) as src:
        pixels = src.width * src.height
    report_result(pixels=pixels, sample=len(sample), n_valid=n_valid,
                  faiss=faiss.__version__,
                  stages_s={"sample": t_sample, "fit": t_fit, "label_write": t_label})


if __name__ == "__main__":
    main()
