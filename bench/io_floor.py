"""The I/O floor: read every tile of the input and write a same-size uint8 GeoTIFF.

    python bench/io_floor.py --scene SCENE.tif --out labels.tif

Plain rasterio, nothing else: two reader threads, each with its own dataset handle,
``GDAL_CACHEMAX=64`` (``BENCH_FLOOR_GDAL_CACHEMAX`` overrides it), split the file's
tiles between them (interleaved, in raster order); each tile is reduced to a cheap
per-pixel uint8 (the index of the brightest band, 255 on nodata) so the reads cannot be
skipped; one writer (this thread) writes the results as they arrive into a GeoTIFF
with 512 x 512 tiles, DEFLATE, predictor 2.
No task graph, no model: the least any labelling pipeline must spend here.
"""

from __future__ import annotations

import os

os.environ["GDAL_CACHEMAX"] = os.environ.get("BENCH_FLOOR_GDAL_CACHEMAX", "64")

import argparse  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from _harness import label_profile, report_result, windows  # noqa: E402


def brightest_band(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """Index of the largest band per pixel (uint8), 255 where any band is nodata."""
    best = block[0].copy()
    out = np.zeros(block.shape[1:], dtype=np.uint8)
    invalid = np.zeros(block.shape[1:], dtype=bool) if nodata is None else block[0] == nodata
    for b in range(1, block.shape[0]):
        higher = block[b] > best
        np.maximum(best, block[b], out=best)
        out[higher] = b
        if nodata is not None:
            invalid |= block[b] == nodata
    out[invalid] = 255
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--readers", type=int, default=2, help="reader threads (default 2)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with rasterio.open(args.scene) as src:
        side = src.block_shapes[0][0]
        tiles = windows(src.height, src.width, side)
        profile = label_profile(src, tile=side)
        nodata = src.nodata
    done = queue.Queue(maxsize=4 * args.readers)
    errors: list[BaseException] = []

    def reader(first: int) -> None:
        try:
            with rasterio.open(args.scene) as ds:  # one handle per thread
                for w in tiles[first::args.readers]:
                    done.put((w, brightest_band(ds.read(window=w), nodata)))
        except BaseException as exc:  # handed to the writer, which re-raises
            errors.append(exc)
        finally:
            done.put(None)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True)
               for i in range(args.readers)]
    for t in threads:
        t.start()
    finished = 0
    with rasterio.open(args.out, "w", **profile) as dst:
        while finished < len(threads):
            item = done.get()
            if item is None:
                finished += 1
                continue
            w, labels = item
            dst.write(labels, 1, window=w)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    report_result(pixels=profile["width"] * profile["height"], tiles=len(tiles),
                  inner_s=time.perf_counter() - t0)


if __name__ == "__main__":
    main()
