"""Cost of each feature family per MPix relative to ``[bands]``, and of the majority filter.

    python bench/bench_features.py                       # 2048 x 2048 scene (minutes)
    python bench/bench_features.py --size 12000          # the 12000 x 12000 scene
    python bench/bench_features.py --scene my.tif --chunks 512 --only lab texture_std_w7

Each case runs in its own Python process (``_harness.measure``: wall time, peak memory),
which opens the scene lazily, builds the feature cube and computes every block with
the threaded scheduler, reducing each block to one number so that nothing is written
(best of ``--repeat`` runs, reads included). The script times that compute and counts, by wrapping
``rasterio.DatasetReader.read``, how many pixels were read from the file: halos come
from neighbouring chunks already in memory (``map_overlap``), so the ratio of pixels
read to pixels in the image must be 1.00 for every family, texture included.

The majority filter case labels the scene with K-means on ``[bands]`` (fitted on a
sample), then times (a) labelling alone, from the file, (b) labelling plus the majority
filter (the runner's graph: read ratio again 1.00), and (c) the filter alone on labels
already in memory, for radius 1, 2 and 3.

Times are the best of ``--repeat`` runs; the relative cost uses CPU time (all threads),
which other work on a shared machine disturbs less than wall time. Each process gets a
GDAL block cache smaller than the scene, so every run decodes its reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _harness import OUT, RESULT_PREFIX, SceneParams, ensure_scene, measure, tile_for

#: The cases: a name and its ``features:`` list.
CASES: dict[str, list[Any]] = {
    "bands": ["bands"],
    "hsv": ["hsv"],
    "lab": ["lab"],
    "ndvi": [{"index": {"name": "ndvi", "bands": {"red": 3, "nir": 4}}}],
    "evi": [{"index": {"name": "evi", "bands": {"red": 3, "nir": 4, "blue": 1},
                       "max": 10000}}],
    "normalized_difference": [{"normalized_difference": [4, 2]}],
    "texture_mean_w7": [{"texture": {"stat": "mean", "window": 7}}],
    "texture_std_w7": [{"texture": {"stat": "std", "window": 7}}],
    "texture_std_w15": [{"texture": {"stat": "std", "window": 15}}],
    "texture_gaussian_w7": [{"texture": {"stat": "gaussian", "window": 7}}],
    "texture_gradient_w7": [{"texture": {"stat": "gradient", "window": 7}}],
    "xy": [{"xy": {"weight": 0.5}}],
    "lab+texture_std_w7": ["lab", {"texture": {"stat": "std", "window": 7}}],
}


# --------------------------------------------------------------------------- child side


class _ReadCounter:
    """Counts the pixels read through ``rasterio.io.DatasetReader.read``."""

    def __init__(self) -> None:
        import threading

        import rasterio.io

        self.pixels = 0
        self.calls = 0
        self._lock = threading.Lock()
        original = rasterio.io.DatasetReader.read
        counter = self

        def read(ds: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(ds, *args, **kwargs)
            with counter._lock:
                counter.calls += 1
                counter.pixels += int(out.shape[-1] * out.shape[-2])
            return out

        rasterio.io.DatasetReader.read = read  # type: ignore[method-assign]

    def reset(self) -> None:
        self.pixels = 0
        self.calls = 0


def _touch(block: Any) -> Any:
    """Reduce a block to one number: forces it without writing anything."""
    import numpy as np

    return np.full((1,) * block.ndim, np.nansum(block[..., :1, :1]), dtype=np.float64)


def _force(arr: Any, repeat: int = 1) -> dict[str, float]:
    """Compute every block of a dask array ``repeat`` times; the best wall and CPU times.

    Each run computes the whole graph again, reads included. CPU time is the process's
    (all threads): on a shared machine it is disturbed less than wall time.
    """
    import dask
    import numpy as np

    tiny = arr.map_blocks(_touch, chunks=tuple((1,) * len(c) for c in arr.chunks),
                          dtype=np.float64, meta=np.empty((0,) * arr.ndim, np.float64))
    wall = cpu = float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        dask.compute(tiny, scheduler="threads")
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return {"wall_s": wall, "cpu_s": cpu}


def _child_features(scene: Path, chunks: int, name: str, repeat: int) -> dict[str, Any]:
    import pipeline

    counter = _ReadCounter()
    image = pipeline.open_image(scene, chunks=chunks)
    npix = image.sizes["y"] * image.sizes["x"]
    feats = pipeline.compute_features(image, CASES[name])
    # warm up once on a small window (imports, first-call costs), then measure
    _force(feats.isel(y=slice(0, 64), x=slice(0, 64)).data)
    counter.reset()
    _force(feats.data)
    ratio, calls = counter.pixels / npix, counter.calls
    return {"case": name, "mpix": npix / 1e6, **_force(feats.data, repeat),
            "features": [str(f) for f in feats["feature"].values],
            "read_ratio": ratio, "read_calls": calls, "chunks": int(image.data.npartitions)}


def _child_majority(scene: Path, chunks: int, repeat: int) -> dict[str, Any]:
    import dask.array as da

    import pipeline
    from pipeline.postprocess import majority_filter

    counter = _ReadCounter()
    image = pipeline.open_image(scene, chunks=chunks)
    npix = image.sizes["y"] * image.sizes["x"]
    feats = pipeline.compute_features(image, ["bands"])
    model = pipeline.fit(feats, 6, seed=0, sample_size=200_000, n_init=1)
    labels = pipeline.predict(feats, model)
    small = labels.isel(y=slice(0, 64), x=slice(0, 64))
    _force(majority_filter(small, 1).data)  # numba compile / cache load
    rows: dict[str, Any] = {}
    filtered = majority_filter(labels, 2)
    for key, arr in (("labels ([bands], k=6) from the file", labels),
                     ("labels + majority r=2 from the file", filtered)):
        counter.reset()
        _force(arr.data)
        ratio = counter.pixels / npix
        rows[key] = {**_force(arr.data, repeat), "read_ratio": ratio}
    in_memory = labels.copy(data=da.from_array(labels.values, chunks=labels.data.chunks))
    for r in (1, 2, 3):
        rows[f"majority r={r} alone (labels in memory)"] = _force(
            majority_filter(in_memory, r).data, repeat)
    return {"case": "majority", "mpix": npix / 1e6, "rows": rows}


# --------------------------------------------------------------------------- parent side


def _table(results: dict[str, dict[str, Any]]) -> str:
    base = results.get("bands")
    lines = ["| case | features | wall s | CPU ms/MPix | x bands (CPU) | pixels read / image "
             "| peak MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        if name == "majority":
            continue
        rel = f"{r['cpu_s'] / base['cpu_s']:.2f}" if base else "-"
        lines.append(f"| {name} | {len(r['features'])} | {r['wall_s']:.2f} | "
                     f"{1000 * r['cpu_s'] / r['mpix']:.0f} | {rel} | "
                     f"{r['read_ratio']:.2f} | {r['peak_mib']:.0f} |")
    m = results.get("majority")
    if m:
        lines += ["", "| majority filter | wall s | CPU ms/MPix | pixels read / image |",
                  "| --- | ---: | ---: | ---: |"]
        for key, r in m["rows"].items():
            ratio = f"{r['read_ratio']:.2f}" if "read_ratio" in r else "-"
            lines.append(f"| {key} | {r['wall_s']:.2f} | {1000 * r['cpu_s'] / m['mpix']:.0f} "
                         f"| {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048,
                    help="scene side when building one (default 2048; 12000 for the "
                         "reference scene)")
    ap.add_argument("--scene", type=Path, default=None,
                    help="use this raster (4+ bands) instead of building a scene")
    ap.add_argument("--chunks", type=int, default=1024, help="chunk side (default 1024)")
    ap.add_argument("--only", nargs="*", default=None,
                    help=f"cases to run (default all): {', '.join(CASES)}, majority")
    ap.add_argument("--repeat", type=int, default=3,
                    help="time each compute this many times, keep the best (default 3)")
    ap.add_argument("--gdal-cachemax", type=int, default=16,
                    help="GDAL block cache of each case's process in MiB (default 16)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", nargs=4, metavar=("CASE", "SCENE", "CHUNKS", "REPEAT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        case, scene, chunks, repeat = args.child
        if case == "majority":
            res = _child_majority(Path(scene), int(chunks), int(repeat))
        else:
            res = _child_features(Path(scene), int(chunks), case, int(repeat))
        print(RESULT_PREFIX + json.dumps(res), flush=True)
        return {}

    if args.scene is None:
        params = SceneParams(size=args.size, tile=tile_for(args.size))
        scene, _ = ensure_scene(params)
    else:
        scene = args.scene
    names = args.only or [*CASES, "majority"]
    if "bands" not in names:
        names = ["bands", *names]
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name != "majority" and name not in CASES:
            raise SystemExit(f"unknown case {name!r}; expected one of {', '.join(CASES)}, "
                             "majority")
        cmd = [sys.executable, __file__, "--child", name, str(scene), str(args.chunks),
               str(args.repeat)]
        # a GDAL block cache smaller than the scene: every timed run decodes its reads
        env = dict(os.environ, GDAL_CACHEMAX=str(args.gdal_cachemax))
        m = measure(cmd, env=env, log_path=OUT / "bench_features" / f"{name}.log")
        if m.returncode != 0 or not m.result:
            print(f"{name}: failed (exit {m.returncode}); see the log:\n{m.log[-2000:]}",
                  file=sys.stderr)
            continue
        results[name] = dict(m.result, peak_mib=m.peak_rss_mib, process_wall_s=m.wall_s)
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    ratios = {n: [r.get("read_ratio", 1.0)] + [row.get("read_ratio", 1.0)
                                               for row in r.get("rows", {}).values()]
              for n, r in results.items()}
    bad = [n for n, rs in ratios.items() if any(abs(x - 1.0) > 1e-9 for x in rs)]
    print(f"\nscene {scene}, chunks {args.chunks}, best of {args.repeat}\n")
    print(_table(results))
    if bad:
        print(f"\nREAD MORE THAN ONCE: {', '.join(bad)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
