"""Does ``mask: otsu`` make a whole-slide run cost the tissue area, not the slide area?

    python bench/bench_slide.py                         # 50000 x 50000, 20 % and 40 % tissue
    python bench/bench_slide.py --size 30000 --repeat 2
    python bench/bench_slide.py --size 2048 --approaches masked-20,nomask-20   # smoke-sized

Input: synthetic brightfield slides, pyramidal OME-TIFF written tile by tile with
tifffile (RGB uint8, 512 x 512 tiles, JPEG quality 90, ``subifds`` levels halving down to
a long side <= 1024, PhysicalSizeX/Y 0.25 um): bright glass (~235 grey with slight noise)
and pink H&E-like tissue with purple nuclei-like specks, in a few large islands (a
smoothed random field thresholded to cover exactly ``--tissue`` of a 64-pixel grid, edges
bilinear). Two slides of the same size, 20 % and 40 % tissue, are cached under
``bench/data/``.

Approaches, each a whole process measured by ``_harness.measure``:

- ``floor-20``: decode every level-0 tile of the 20 % slide (tifffile's Zarr view read
  through Dask threads, each chunk reduced to its mean): the read floor, no write;
- ``masked-20`` / ``masked-40``: ``tileseg run``, features ``[lab]``, K-means k = 3
  (seed 0), ``mask: otsu``, ``formats: [ome-zarr]`` (the default for slides);
- ``nomask-20`` (and ``nomask-40`` on request): the same without a mask;
- ``cells-20`` / ``cells-40`` (on request; an experiment, not tileseg as shipped): the
  masked run with its sample drawn as unmasked runs draw it, from the seeded sample
  cells only, with the mask's valid fraction as the key threshold's hint (a monkeypatch
  of ``pipeline.stages._fit.draw`` in the measured process, see :func:`run_cells`):
  what the masked run costs once its sample pass stops reading every tissue chunk.
  A tileseg whose ``draw`` takes the mask (it samples masked runs from the cells
  itself) runs unpatched.

The table gives wall time, seconds per slide MPix and per tissue MPix (tissue: the
valid pixels of the masked run's ``report.json``, or the nominal fraction), peak RSS,
``mask.chunks_skipped`` / ``chunks_total`` and the stage timings (``timings_s``: ``cog``
is where the OME-Zarr pyramid is built, after the last label block).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _harness import DATA, OUT, measure, report_result
from run_bench import (
    child_env,
    clear,
    machine_info,
    pipeline_env,
    snapshot_pipeline,
    source_info,
    tileseg_cmd,
)

TILE = 512
CELL = 64  # pixels per cell of the tissue map at level 0
PIXEL_UM = 0.25
GLASS = np.array([235.0, 235.0, 236.0], np.float32)
EOSIN = np.array([232.0, 150.0, 192.0], np.float32)
HEMATOXYLIN = np.array([96.0, 58.0, 150.0], np.float32)
NUCLEI = 0.10  # fraction of tissue covered by nuclei-like specks
APPROACHES = ("floor-20", "masked-20", "nomask-20", "masked-40", "nomask-40",
              "cells-20", "cells-40")
DEFAULT = "floor-20,masked-20,nomask-20,masked-40"


# --------------------------------------------------------------------------- the slide


def tissue_map(side: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Signed tissue field on the 64-pixel grid (> 0: tissue), plus one cell of margin.

    A smoothed random field (a few large islands) thresholded at its (1 - fraction)
    quantile, so ``fraction`` of the cells are tissue.
    """
    from scipy import ndimage as ndi

    n = -(-side // CELL) + 2
    rng = np.random.default_rng([seed, 7])
    field = ndi.gaussian_filter(rng.standard_normal((n, n)), sigma=n / 20, mode="wrap")
    # keep tissue off the slide's edges, as on a real slide
    yy, xx = np.mgrid[0:n, 0:n] / (n - 1) * 2 - 1
    field -= 0.6 * field.std() * np.clip(np.maximum(abs(yy), abs(xx)) - 0.8, 0, None) / 0.2
    inner = field[1:-1, 1:-1]
    threshold = np.quantile(inner, 1 - fraction)
    return (field - threshold).astype(np.float32)


def render_tile(tmap: np.ndarray, level: int, ty: int, tx: int, shape: tuple[int, int],
                seed: int = 0) -> np.ndarray:
    """One full 512 x 512 RGB tile of pyramid level ``level`` (beyond the edge: padding)."""
    f = 2**level
    # level-0 coordinates of the pixel centres, in map cells (the map has a 1-cell margin)
    ys = ((ty * TILE + np.arange(TILE) + 0.5) * f) / CELL + 0.5
    xs = ((tx * TILE + np.arange(TILE) + 0.5) * f) / CELL + 0.5
    n = tmap.shape[0]
    y0 = np.clip(np.floor(ys).astype(int), 0, n - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, n - 2)
    wy = np.clip(ys - y0, 0, 1).astype(np.float32)[:, None]
    wx = np.clip(xs - x0, 0, 1).astype(np.float32)[None, :]
    a = tmap[np.ix_(y0, x0)]
    b = tmap[np.ix_(y0, x0 + 1)]
    c = tmap[np.ix_(y0 + 1, x0)]
    d = tmap[np.ix_(y0 + 1, x0 + 1)]
    p = (a * (1 - wx) + b * wx) * (1 - wy) + (c * (1 - wx) + d * wx) * wy
    tissue = p > 0
    rng = np.random.default_rng([seed, level, ty, tx])
    if tissue.any():
        spot = max(1, 4 >> level)  # 4-pixel specks at level 0, 2 at level 1, then 1
        m = TILE // spot
        nuc = rng.random((m, m), dtype=np.float32) < NUCLEI
        if spot > 1:
            nuc = nuc.repeat(spot, 0).repeat(spot, 1)
        shade = rng.random((TILE // 32, TILE // 32), dtype=np.float32).repeat(32, 0).repeat(32, 1)
        tint = np.where(nuc[..., None], HEMATOXYLIN, EOSIN) * (0.92 + 0.08 * shade[..., None])
        rgb = np.where(tissue[..., None], tint, GLASS)
        rgb += rng.normal(0, 6, (TILE, TILE, 3)).astype(np.float32) * tissue[..., None]
        rgb += rng.normal(0, 2, (TILE, TILE, 3)).astype(np.float32) * ~tissue[..., None]
    else:
        rgb = GLASS + rng.normal(0, 2, (TILE, TILE, 3)).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _tiles(tmap: np.ndarray, level: int, shape: tuple[int, int], seed: int,
           pool: ThreadPoolExecutor, batch: int = 32):
    """The level's tiles in row-major order, rendered a batch at a time by ``pool``."""
    ny, nx = -(-shape[0] // TILE), -(-shape[1] // TILE)
    coords = [(ty, tx) for ty in range(ny) for tx in range(nx)]
    for i in range(0, len(coords), batch):
        yield from pool.map(lambda c: render_tile(tmap, level, c[0], c[1], shape, seed),
                            coords[i:i + batch])


def slide_path(side: int, fraction: float, seed: int = 0) -> Path:
    return DATA / f"slide-{side}-t{round(fraction * 100)}-s{seed}.ome.tif"


def build(side: int, fraction: float, seed: int = 0, *, quiet: bool = False) -> Path:
    """Write the pyramidal OME-TIFF tile by tile unless a complete one exists."""
    import tifffile

    path = slide_path(side, fraction, seed)
    done = path.with_name(path.name + ".done.json")
    if path.exists() and done.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    t0 = time.perf_counter()
    if not quiet:
        print(f"building {path.name} ({side} x {side}, {fraction:.0%} tissue) ...",
              file=sys.stderr, flush=True)
    tmap = tissue_map(side, fraction, seed)
    shapes = [(side, side)]
    while max(shapes[-1]) > 1024:
        shapes.append(tuple(-(-s // 2) for s in shapes[-1]))
    opts = dict(tile=(TILE, TILE), dtype=np.uint8, photometric="rgb", compression="jpeg",
                compressionargs={"level": 90}, maxworkers=2)
    with ThreadPoolExecutor(2) as pool, tifffile.TiffWriter(tmp, bigtiff=True,
                                                             ome=True) as tif:
        for level, shape in enumerate(shapes):
            data = _tiles(tmap, level, shape, seed, pool)
            if level == 0:
                tif.write(data, shape=(*shape, 3), subifds=len(shapes) - 1,
                          metadata={"axes": "YXS", "PhysicalSizeX": PIXEL_UM,
                                    "PhysicalSizeXUnit": "µm", "PhysicalSizeY": PIXEL_UM,
                                    "PhysicalSizeYUnit": "µm"}, **opts)
            else:
                tif.write(data, shape=(*shape, 3), subfiletype=1, metadata=None, **opts)
    tmp.replace(path)
    inner = tmap[1:-1, 1:-1]
    done.write_text(json.dumps({"side": side, "fraction": fraction, "seed": seed,
                                "tissue_cells": float((inner > 0).mean()),
                                "levels": [list(s) for s in shapes]}))
    if not quiet:
        print(f"built {path.name} in {time.perf_counter() - t0:.0f} s "
              f"({path.stat().st_size / 2**20:.0f} MiB, {len(shapes)} levels)",
              file=sys.stderr, flush=True)
    return path


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# --------------------------------------------------------------------------- approaches


def run_floor(path: Path) -> None:
    """Decode every level-0 tile (tifffile's Zarr view, Dask threads), reduce to the mean."""
    import dask
    import dask.array as da
    import tifffile
    import zarr

    t0 = time.perf_counter()
    with tifffile.TiffFile(path) as tf:
        store = tf.series[0].aszarr(level=0)
        z = zarr.open_array(store, mode="r")
        arr = da.from_zarr(z, chunks=(1024, 1024, 3))
        with dask.config.set(scheduler="threads"):
            mean = float(arr.mean(dtype=np.float64).compute())
    report_result(pixels=int(arr.shape[0] * arr.shape[1]), mean=mean,
                  read_s=time.perf_counter() - t0)


def run_cells(config: Path) -> None:
    """``tileseg run`` with the masked run's sample drawn from the sample cells (see above).

    tileseg samples a masked run from every pixel (``cells=False``), which reads and
    converts every chunk the mask keeps once for the sample and once for the labels,
    and, when fewer than 1 / OVERSAMPLE of the pixels are valid, twice for the sample.
    Here the first pass reads the seeded cells only, with its key threshold set for the
    mask's valid fraction (Otsu's ``valid_fraction``), as ``draw_sample`` does for its
    second pass. Still a seeded sample independent of the chunking; not shipped.
    """
    import inspect

    import pipeline.cluster._training as training
    import pipeline.stages._fit as fit
    import pipeline.stages._open as opening
    from pipeline.cli import console
    from pipeline.cluster._sample import cell_fraction

    sys.argv = ["tileseg", "run", str(config), "--overwrite", "-q"]
    if "mask" in inspect.signature(fit.draw).parameters:
        # a tileseg whose `draw` takes the mask samples masked runs from the cells itself
        print("cells: this tileseg draws masked samples from the cells; not patched",
              file=sys.stderr)
        console()
        return
    stash: dict[str, Any] = {}
    apply_mask, draw = opening.apply_mask, fit.draw

    def keep_mask(features: Any, mask: Any) -> Any:
        stash["mask"] = mask
        return apply_mask(features, mask)

    def draw_cells(config: Any, features: Any, size: int) -> Any:
        mask = stash.get("mask")
        if (mask is None or features.ndim != 3 or config.input_level
                or any(spec.halo for spec in config.features)):
            return draw(config, features, size)
        frac = mask.info.get("valid_fraction") or float(np.mean(mask.chunk_any))
        _, h, w = features.shape
        hint = h * w * cell_fraction(h, w, size) * max(frac, 1e-6)
        sample_pixels = training.sample_pixels
        calls: list[int] = []

        def first_with_hint(*a: Any, valid_hint: Any = None, **kw: Any) -> Any:
            if not calls and valid_hint is None:
                valid_hint = hint
            calls.append(1)
            return sample_pixels(*a, valid_hint=valid_hint, **kw)

        training.sample_pixels = first_with_hint
        try:
            return training.draw_sample(features, size, config.cluster.seed, cells=True)
        finally:
            training.sample_pixels = sample_pixels
            print(f"cells sample: {len(calls)} pass(es), hint {hint:.0f}", file=sys.stderr)

    opening.apply_mask, fit.draw = keep_mask, draw_cells
    console()


def write_config(slide: Path, out: Path, masked: bool, k: int) -> Path:
    import yaml

    cfg: dict[str, Any] = {
        "input": str(slide.resolve()),
        "output": str(out.resolve()),
        "features": ["lab"],
        "cluster": {"method": "kmeans", "k": k, "seed": 0},
        "compute": {"scheduler": "threads"},
        "formats": ["ome-zarr"],
    }
    if masked:
        cfg["mask"] = "otsu"
    path = out.parent / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _store_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


#: ``pipeline/`` of a committed revision (``--pipeline-rev``); None: the working tree
SRC: Path | None = None


def run_one(name: str, slides: dict[int, Path], work: Path, k: int) -> dict[str, Any]:
    kind, pct = name.rsplit("-", 1)
    slide = slides[int(pct)]
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    if kind == "floor":
        out = d / "none"
        cmd = [sys.executable, __file__, "--run", "floor", "--path", str(slide)]
    else:
        out = d / "out"
        cfg = write_config(slide, out, kind in ("masked", "cells"), k)
        cmd = ([sys.executable, __file__, "--run", "cells", "--path", str(cfg)]
               if kind == "cells" else [*tileseg_cmd(SRC), "run", str(cfg), "--overwrite", "-q"])
    clear(out)
    m = measure(cmd, env=child_env(pipeline_env(SRC)), log_path=d / "log.txt", cwd=work)
    rec: dict[str, Any] = {"approach": name, "returncode": m.returncode, "wall_s": m.wall_s,
                           "cpu_s": m.cpu_s, "peak_rss_mib": m.peak_rss_mib,
                           "peak_rss_tree_mib": m.peak_rss_tree_mib,
                           "maxrss_single_mib": m.maxrss_single_mib,
                           "result": m.result, "rss_timeline": m.timeline}
    if m.returncode != 0:
        rec["error"] = m.log[-3000:]
    elif kind != "floor":
        report = json.loads((out / "report.json").read_text())
        rec["timings_s"] = report.get("timings_s", {})
        rec["valid_pixels"] = report.get("valid_pixels")
        rec["mask"] = report.get("mask") or report.get("input", {}).get("mask")
        rec["chunks"] = report.get("input", {}).get("chunks")
        rec["n_chunks"] = report.get("input", {}).get("n_chunks")
        rec["output_mib"] = round(_store_mib(out / "labels.ome.zarr"), 1)
        clear(out)
    return rec


# --------------------------------------------------------------------------- summary


def summarise(runs: list[dict[str, Any]], names: list[str], side: int,
              nominal: dict[int, float]) -> list[dict[str, Any]]:
    rows = []
    floor = {r["round"]: r for r in runs if r["approach"].startswith("floor")
             and r["returncode"] == 0}
    base = {r["round"]: r for r in runs if r["approach"] == "nomask-20" and r["returncode"] == 0}
    mpix = side * side / 1e6
    for n in names:
        ok = [r for r in runs if r["approach"] == n and r["returncode"] == 0]
        row: dict[str, Any] = {"approach": n, "runs": len(ok)}
        if not ok:
            rows.append(row)
            rows[-1]["failed"] = True
            continue
        pct = int(n.rsplit("-", 1)[1])
        walls = [r["wall_s"] for r in ok]
        row.update(wall_s=statistics.median(walls), wall_min=min(walls), wall_max=max(walls),
                   cpu_s=statistics.median(r["cpu_s"] for r in ok),
                   peak_rss_mib=statistics.median(r["peak_rss_mib"] for r in ok))
        masked = [r for r in runs if r["approach"] in (f"masked-{pct}", f"cells-{pct}")
                  and r["returncode"] == 0 and r.get("valid_pixels")]
        tissue = (masked[0]["valid_pixels"] / 1e6 if masked else nominal[pct] * mpix)
        row["tissue_mpix"] = tissue
        row["s_per_slide_mpix"] = row["wall_s"] / mpix
        row["s_per_tissue_mpix"] = row["wall_s"] / tissue
        paired = [r["wall_s"] / base[r["round"]]["wall_s"] for r in ok if r["round"] in base]
        row["x_nomask"] = statistics.median(paired) if paired else None
        paired = [r["wall_s"] / floor[r["round"]]["wall_s"] for r in ok if r["round"] in floor]
        row["x_floor"] = statistics.median(paired) if paired else None
        if ok[0].get("timings_s"):
            row["timings_s"] = {k: statistics.median(r["timings_s"].get(k, 0.0) for r in ok)
                                for k in ok[0]["timings_s"]}
        row["mask"] = ok[0].get("mask")
        row["output_mib"] = ok[0].get("output_mib")
        rows.append(row)
    return rows


def _f(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| approach | wall s (min-max) | x nomask-20 | x floor | ms / slide MPix "
             "| ms / tissue MPix | CPU s | peak RSS MiB | chunks skipped | stages s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['approach']} | failed | | | | | | | | |")
            continue
        mask = r.get("mask") or {}
        skipped = (f"{mask['chunks_skipped']} / {mask['chunks_total']}"
                   if "chunks_skipped" in mask else "")
        t = r.get("timings_s") or {}
        stages = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total" and v >= 0.05)
        tissue = "" if r["approach"].startswith("floor") else \
            f"{1000 * r['s_per_tissue_mpix']:.1f}"
        lines.append(
            f"| {r['approach']} | {r['wall_s']:.1f} ({r['wall_min']:.1f}-{r['wall_max']:.1f}) "
            f"| {_f(r.get('x_nomask'), '.2f')} | {_f(r.get('x_floor'), '.2f')} "
            f"| {1000 * r['s_per_slide_mpix']:.1f} | {tissue} | {r['cpu_s']:.0f} "
            f"| {r['peak_rss_mib']:.0f} | {skipped} | {stages} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=50000, help="slide side in pixels")
    ap.add_argument("--approaches", default=DEFAULT,
                    help=f"comma-separated, of {', '.join(APPROACHES)} (default {DEFAULT})")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=OUT / "slide")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--pipeline-rev", metavar="REV",
                    help="measure tileseg as committed at REV (a git archive of pipeline/, "
                         "as run_bench.py does); default: the working tree")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run == "floor":
        run_floor(Path(args.path))
        return 0
    if args.run == "cells":
        run_cells(Path(args.path))
        return 0
    names = [n.strip() for n in args.approaches.split(",") if n.strip()]
    unknown = [n for n in names if n not in APPROACHES]
    if unknown:
        ap.error(f"unknown approach(es) {unknown}; known: {', '.join(APPROACHES)}")
    global SRC
    work = args.workdir.resolve() / str(args.size)
    sha = None
    if args.pipeline_rev:
        SRC, sha = snapshot_pipeline(args.pipeline_rev, args.workdir.resolve())
    info = machine_info()
    info["tileseg_source"] = source_info(SRC, sha)
    pcts = sorted({int(n.rsplit("-", 1)[1]) for n in names})
    slides = {p: build(args.size, p / 100) for p in pcts}
    nominal = {p: json.loads(slides[p].with_name(slides[p].name + ".done.json").read_text())
               ["tissue_cells"] for p in pcts}
    if not args.no_warmup:  # numba's cache: the kernels of a masked and an unmasked run
        small = {p: build(2048, p / 100, quiet=True) for p in pcts}
        for n in [n for n in ("masked-20", "nomask-20") if any("floor" not in m for m in names)]:
            rec = run_one(n, {20: small[min(pcts)], 40: small[max(pcts)]}, work / "warmup",
                          args.k)
            print(f"warm-up {n} on 2048^2: {rec['wall_s']:.1f} s (exit {rec['returncode']})",
                  flush=True)
    for p, s in slides.items():
        warm_page_cache(s)
        print(f"{s.name}: {s.stat().st_size / 2**20:.0f} MiB, tissue cells {nominal[p]:.3f}",
              flush=True)
    runs: list[dict[str, Any]] = []
    for rnd in range(args.repeat):
        for n in names:
            rec = run_one(n, slides, work, args.k)
            rec["round"] = rnd
            runs.append(rec)
            ok = rec["returncode"] == 0
            print(f"{n:<10} " + (f"{rec['wall_s']:7.1f} s {rec['peak_rss_mib']:6.0f} MiB "
                                 f"{rec.get('timings_s', '')}" if ok else "FAILED"), flush=True)
            if not ok:
                print(rec["error"][-1500:], file=sys.stderr)
    rows = summarise(runs, names, args.size, nominal)
    mpix = args.size**2 / 1e6
    print(f"\n{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB; {args.size} x "
          f"{args.size} RGB slide ({mpix:.0f} MPix), features [lab], k = {args.k}, "
          f"[ome-zarr]; {args.repeat} round(s); {info['date']}; load average "
          f"{info['load_avg_at_start']} at start, {[round(x, 2) for x in os.getloadavg()]} "
          f"at end; tileseg: {info['tileseg_source']}\n")
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "argv": sys.argv, "runs": runs,
                                         "summary": rows}, indent=2, default=str))
        print(f"\nsaved {args.json}")
    return 1 if any(r.get("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
