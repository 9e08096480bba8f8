"""Peer: Orfeo ToolBox's streamed labelling (``otbcli_ImageClassifier``), a stand-in.

    python bench/peer_otb.py --scene SCENE.tif --out labels.tif [--k 8] [--ram 2048]

Debian's ``otb-bin`` (8.1) is built without the Shark library, so OTB's own K-means apps
are missing (see ../shared/PERF-NOTES.md). What it can do is label an image with a model
in a streamed pipeline; this script times that, with a model that makes it a
nearest-centroid labeller:

1. sample pass (Python, as ``peer_minibatch.py``) and scikit-learn ``KMeans`` on the
   standardised 1 M sample (the centroids);
2. ``otbcli_TrainVectorClassifier -classifier knn -classifier.knn.k 1`` on the k
   centroids (a GeoJSON of k points; the standardisation goes in as ``-io.stats``), plus
   one training point at the nodata value labelled 255 so nodata pixels get label 255;
3. ``otbcli_ImageClassifier -imstat ... -ram RAM`` writes uint8 labels with 512 x 512
   tiles, DEFLATE, predictor 2 (GDAL creation options in OTB's extended file name).

Its stages are reported separately: the row in the table is the whole process, and the
``ImageClassifier`` stage alone is the labelling stand-in that PERF-NOTES timed. Exits
with code 3 (skipped) when the OTB command-line apps are not installed
(Debian: ``apt-get install otb-bin``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _harness import report_result, sample_pass, skip


def _stats_xml(mean, std) -> str:
    def vec(values) -> str:
        return "\n".join(f'        <StatisticVector value="{float(v)!r}" />' for v in values)

    return ('<?xml version="1.0" ?>\n<FeatureStatistics>\n'
            f'    <Statistic name="mean">\n{vec(mean)}\n    </Statistic>\n'
            f'    <Statistic name="stddev">\n{vec(std)}\n    </Statistic>\n'
            "</FeatureStatistics>\n")


def _points_geojson(rows, labels) -> str:
    feats = []
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        props = {f"b{b + 1}": float(v) for b, v in enumerate(row)}
        props["class"] = int(label)
        feats.append({"type": "Feature", "properties": props,
                      "geometry": {"type": "Point", "coordinates": [float(i), 0.0]}})
    return json.dumps({"type": "FeatureCollection", "features": feats})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--sample", type=int, default=1_000_000)
    ap.add_argument("--ram", type=int, default=2048, help="OTB's -ram hint in MB")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    train = shutil.which("otbcli_TrainVectorClassifier")
    classify = shutil.which("otbcli_ImageClassifier")
    if not (train and classify):
        skip("Orfeo ToolBox command-line apps not found (Debian: apt-get install otb-bin)")

    import numpy as np
    import rasterio
    from sklearn.cluster import KMeans

    t = time.perf_counter()
    sample, n_valid = sample_pass(args.scene, args.sample, args.seed)
    t_sample = time.perf_counter() - t
    t = time.perf_counter()
    mean, std = sample.mean(0).astype(np.float64), sample.std(0).astype(np.float64)
    std[std == 0] = 1
    km = KMeans(n_clusters=args.k, n_init=1, random_state=args.seed)
    km.fit((sample - mean) / std)
    t_fit = time.perf_counter() - t
    with rasterio.open(args.scene) as src:
        bands, nodata = src.count, src.nodata
        pixels = src.width * src.height
        side = src.block_shapes[0][0]
    centroids = km.cluster_centers_ * std + mean  # OTB standardises with -io.stats
    labels = list(range(args.k))
    if nodata is not None:
        centroids = np.vstack([centroids, np.full(bands, float(nodata))])
        labels.append(255)
    env = dict(os.environ, OTB_LOGGER_LEVEL="WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-otb-") as tmp:
        stats = Path(tmp) / "stats.xml"
        stats.write_text(_stats_xml(mean, std))
        points = Path(tmp) / "centroids.geojson"
        points.write_text(_points_geojson(centroids, labels))
        model = Path(tmp) / "model.txt"
        t = time.perf_counter()
        subprocess.run([train, "-io.vd", str(points), "-io.stats", str(stats),
                        "-io.out", str(model), "-feat", *[f"b{b + 1}" for b in range(bands)],
                        "-cfield", "class", "-classifier", "knn", "-classifier.knn.k", "1",
                        "-v", "false"], check=True, env=env, stdout=subprocess.DEVNULL)
        t_train = time.perf_counter() - t
        out = (f"{args.out}?&gdal:co:TILED=YES&gdal:co:BLOCKXSIZE={side}"
               f"&gdal:co:BLOCKYSIZE={side}&gdal:co:COMPRESS=DEFLATE&gdal:co:PREDICTOR=2")
        t = time.perf_counter()
        subprocess.run([classify, "-in", str(args.scene), "-model", str(model),
                        "-imstat", str(stats), "-out", out, "uint8", "-ram", str(args.ram),
                        "-nbclasses", str(args.k), "-progress", "false"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        t_classify = time.perf_counter() - t
    with rasterio.open(args.out, "r+") as dst:
        dst.nodata = 255
    report_result(pixels=pixels, sample=len(sample), n_valid=n_valid,
                  stages_s={"sample": t_sample, "fit": t_fit, "train_knn": t_train,
                            "image_classifier": t_classify})


if __name__ == "__main__":
    main()
