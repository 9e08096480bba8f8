"""Peer: scikit-learn ``MiniBatchKMeans`` on a 1 M-pixel sample + per-tile ``predict``.

    python bench/peer_minibatch.py --scene SCENE.tif --out labels.tif [--k 8]

What a scikit-learn user writes for an image that does not fit in memory: one pass over
the tiles keeps a random sample of valid pixels, the sample is standardised and fitted
with ``MiniBatchKMeans`` (scikit-learn's defaults otherwise), then a second pass reads,
standardises, predicts and writes one tile at a time (one thread, GDAL's default cache;
reading, labelling and writing do not overlap). Labels: uint8 GeoTIFF like the floor.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _harness import label_pass, report_result, sample_pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--sample", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from sklearn.cluster import MiniBatchKMeans

    t = time.perf_counter()
    sample, n_valid = sample_pass(args.scene, args.sample, args.seed)
    t_sample = time.perf_counter() - t
    t = time.perf_counter()
    mean, std = sample.mean(0), sample.std(0)
    std[std == 0] = 1
    model = MiniBatchKMeans(n_clusters=args.k, random_state=args.seed)
    model.fit((sample - mean) / std)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    label_pass(args.scene, args.out, model.predict, mean, std)
    t_label = time.perf_counter() - t
    import rasterio

    with rasterio.open(args.scene) as src:
        pixels = src.width * src.height
    report_result(pixels=pixels, sample=len(sample), n_valid=n_valid,
                  stages_s={"sample": t_sample, "fit": t_fit, "label_write": t_label})


if __name__ == "__main__":
    main()
