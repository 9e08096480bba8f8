"""Region merging on natural-like photos: PRI / VoI / Covering at the optimal dataset scale.

We have no human-segmented photos here, so this builds a seeded synthetic stand-in and
scores candidate configs on it with the same protocol as the check on real photos:

- ``--images`` (20; ``--quick``: 6) photos of 481 x 321 with known regions: warped
  Voronoi cells plus a few blob "objects" on top, each region a smooth colour in
  CIE Lab (low chroma, as in most photos) with a shading gradient, under a global
  illumination field; some regions carry texture (filtered noise, stripes, two-colour
  speckle), some are out of focus (blurred), every edge is blurred a little, then
  sensor noise and JPEG compression (quality 70-92). Written as ``photo-v2-NN.jpg`` +
  ``photo-v2-NN-gt.png`` (uint16 labels) under ``bench/data/photo/``, reused when present.
- every config (``configs/photo.yaml`` by default, ``--config`` for others,
  ``--sweep`` for the candidates in ``CANDIDATES``) runs through the real command line,
  one process per image: ``tileseg run CFG --set input=IMG --set output=DIR
  --set postprocess.merge.regions=16``. The hierarchy is then cut at every N of
  ``--grid`` (2..64) in-process with the same functions ``tileseg cut`` uses
  (``Hierarchy.n_merges`` and ``cut_hierarchy`` on hierarchy.parquet and leaves.zarr);
  ``--check-cut`` also runs ``tileseg cut OUT --regions N`` and a fresh
  ``tileseg run ... regions=N`` for a few N on the first image and checks that the
  three partitions are identical.
- peers in the same run: scikit-image's Felzenszwalb-Huttenlocher (``scale`` swept,
  sigma 0.8, min_size 20) and SLIC (``n_segments`` swept, compactness 10).
- measures: ``pipeline.evaluate`` (PRI, VoI in bits, Covering) per image and scale;
  the optimal dataset scale (ODS) of a method is, per measure, the one scale whose mean
  over the images is best.

``--photos`` also runs the configs on scikit-image's sample photos (astronaut, coffee,
chelsea, ...; resized to 481 x 321, no ground truth) for a visual check and timing:
a figure per config under the output directory.

    python bench/bench_photo.py --quick                 # ~2-3 min on 2 cores
    python bench/bench_photo.py                         # 20 images
    python bench/bench_photo.py --sweep all --quick     # the candidate configs
    python bench/bench_photo.py --config my.yaml --json bench/out/photo.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "photo"
OUT = ROOT / "bench" / "out" / "photo"
W, H = 481, 321
GRID = (2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64)
FH_SCALES = (10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000,
             5000)
SLIC_SEGMENTS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                  "coins")

# ---------------------------------------------------------------------------------------
# synthetic photos


def _smooth_noise(rng: np.random.Generator, sigma: float, shape=(H, W)) -> np.ndarray:
    """Gaussian-filtered white noise, scaled to unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return f / (f.std() + 1e-12)


def _labels(rng: np.random.Generator) -> np.ndarray:
    """Warped Voronoi cells plus blob objects; connected regions >= 150 pixels, 1-based."""
    from scipy.ndimage import distance_transform_edt
    from skimage.measure import label

    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    n_cells = int(rng.integers(3, 10))
    amp = rng.uniform(10, 45)
    wy = yy + amp * _smooth_noise(rng, rng.uniform(15, 40))
    wx = xx + amp * _smooth_noise(rng, rng.uniform(15, 40))
    seeds = rng.uniform((0, 0), (H, W), size=(n_cells, 2))
    # a horizon-like band structure half of the time: seeds stretched along x
    stretch = 3.0 if rng.random() < 0.5 else 1.0
    d = ((wy[None] - seeds[:, 0, None, None]) * stretch) ** 2 \
        + (wx[None] - seeds[:, 1, None, None]) ** 2
    lab = np.argmin(d, axis=0).astype(np.int64) + 1
    n_obj = int(rng.integers(0, 5))
    nxt = n_cells + 1
    for _ in range(n_obj):
        cy, cx = rng.uniform(0.15, 0.85) * H, rng.uniform(0.15, 0.85) * W
        ry, rx = rng.uniform(15, 70), rng.uniform(15, 90)
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        r = r + 0.35 * _smooth_noise(rng, rng.uniform(6, 15))
        lab[r < 1.0] = nxt
        nxt += 1
    comp = label(lab, connectivity=1)
    sizes = np.bincount(comp.ravel())
    small = sizes[comp] < 150
    if small.any():
        _, (iy, ix) = distance_transform_edt(small, return_indices=True)
        comp = comp[iy, ix]
    _, inv = np.unique(comp, return_inverse=True)
    return inv.reshape(H, W).astype(np.uint16) + 1


def make_photo(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Return ``(rgb uint8, ground truth uint16, jpeg quality)`` of one seeded photo."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import lab2rgb

    rng = np.random.default_rng(1000 + seed)
    gt = _labels(rng)
    n = int(gt.max())
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    L = np.empty((H, W))
    A = np.empty((H, W))
    B = np.empty((H, W))
    blur_mask = np.zeros((H, W), dtype=bool)
    for r in range(1, n + 1):
        m = gt == r
        base = (rng.uniform(20, 85), rng.normal(0, 12), rng.normal(5, 15))
        # shading: a linear ramp of random direction (up to 30 L over the image)
        ang = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(ang) * (xx - W / 2) + np.sin(ang) * (yy - H / 2)) / W
        shade = rng.uniform(0, 40) * ramp
        l_r = base[0] + shade
        a_r = np.full((H, W), base[1])
        b_r = np.full((H, W), base[2])
        kind = rng.random()
        if kind < 0.25:  # filtered noise (grass, foliage, gravel)
            t = _smooth_noise(rng, rng.uniform(0.7, 3.0))
            l_r = l_r + rng.uniform(4, 15) * t
            a_r = a_r + rng.uniform(0, 5) * t
        elif kind < 0.4:  # stripes (fabric, fences, water ripples)
            th = rng.uniform(0, np.pi)
            period = rng.uniform(4, 16)
            phase = (np.cos(th) * xx + np.sin(th) * yy) * 2 * np.pi / period
            phase = phase + 2.0 * _smooth_noise(rng, 20)
            l_r = l_r + rng.uniform(5, 18) * np.sin(phase)
        elif kind < 0.52:  # two-colour speckle (leaves, flowers)
            t = _smooth_noise(rng, rng.uniform(1.0, 2.5)) > rng.uniform(0.3, 1.0)
            l_r = l_r + t * rng.uniform(-30, 30)
            b_r = b_r + t * rng.uniform(-15, 15)
        L[m], A[m], B[m] = l_r[m], a_r[m], b_r[m]
        if rng.random() < 0.15:
            blur_mask |= m
    # illumination: a smooth multiplicative field on L
    L = L * (1.0 + 0.12 * _smooth_noise(rng, 60))
    lab = np.stack([np.clip(L, 0, 100), A, B], axis=-1)
    with warnings.catch_warnings():  # a few out-of-gamut colours, clipped
        warnings.simplefilter("ignore")
        rgb = np.clip(lab2rgb(lab), 0, 1) * 255.0
    edge = rng.uniform(0.6, 1.3)
    rgb = np.stack([gaussian_filter(rgb[..., c], edge) for c in range(3)], axis=-1)
    if blur_mask.any():  # out-of-focus regions
        s = rng.uniform(2.0, 4.0)
        soft = np.stack([gaussian_filter(rgb[..., c], s) for c in range(3)], axis=-1)
        wmask = gaussian_filter(blur_mask.astype(np.float64), 2.0)[..., None]
        rgb = wmask * soft + (1 - wmask) * rgb
    rgb = rgb + rng.normal(0, rng.uniform(1.5, 5.0), rgb.shape)
    quality = int(rng.integers(70, 93))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), gt, quality


def build_photos(n: int) -> list[tuple[Path, Path]]:
    import imageio.v3 as iio

    DATA.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        jpg, png = DATA / f"photo-v2-{i:02d}.jpg", DATA / f"photo-v2-{i:02d}-gt.png"
        if not (jpg.is_file() and png.is_file()):
            rgb, gt, q = make_photo(i)
            iio.imwrite(jpg, rgb, extension=".jpg", quality=q)
            iio.imwrite(png, gt)
        pairs.append((jpg, png))
    return pairs


def skimage_photos() -> list[Path]:
    import imageio.v3 as iio
    import skimage.data
    from skimage.color import gray2rgb
    from skimage.transform import resize

    DATA.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SKIMAGE_PHOTOS:
        path = DATA / f"skimage-{name}.jpg"
        if not path.is_file():
            im = getattr(skimage.data, name)()
            im = gray2rgb(im) if im.ndim == 2 else im[..., :3]
            h, w = (H, W) if im.shape[1] >= im.shape[0] else (W, H)
            im = resize(im, (h, w), anti_aliasing=True, preserve_range=True)
            iio.imwrite(path, np.clip(np.rint(im), 0, 255).astype(np.uint8),
                        extension=".jpg", quality=90)
        out.append(path)
    return out


# ---------------------------------------------------------------------------------------
# candidate configs (--sweep); each is a full config less input/output

_LAB_XY_TEX = ["lab", {"xy": {"weight": 1.0, "step": 100}},
               {"texture": {"stat": "std", "window": 7}}]


def _cfg(features=None, k=8, method="kmeans", radius=1, connectivity=4, min_size=20,
         merge=None) -> dict:
    merge = {"criterion": "ward", "regions": 16} | (merge or {})
    return {
        "features": features if features is not None else ["lab"],
        "cluster": {"method": method, "k": k, "seed": 0},
        "postprocess": {"majority": {"radius": radius},
                        "segments": {"connectivity": connectivity},
                        "min_size": min_size, "merge": merge},
        "formats": ["cog", "zarr"],
    }


_TEX = {"texture": {"stat": "std", "window": 7}}
_BAATZ = {"criterion": "baatz_schape", "shape": 0.1, "compactness": 0.5}

CANDIDATES: dict[str, dict] = {
    # today's best config without merging (Lab + xy + texture), merged with ward
    "base-labxytex-k8": _cfg(_LAB_XY_TEX, k=8),
    # leaves: features, k, majority radius, connectivity, min_size (ward on top)
    "lab-k8": _cfg(["lab"], k=8),
    "lab-k12": _cfg(["lab"], k=12),
    "lab-k16": _cfg(["lab"], k=16),
    "labtex-k8": _cfg(["lab", _TEX], k=8),
    "labxy-k8": _cfg(["lab", {"xy": {"weight": 1.0, "step": 100}}], k=8),
    "lab-k8-r0": _cfg(["lab"], k=8, radius=0),
    "lab-k8-r2": _cfg(["lab"], k=8, radius=2),
    "lab-k8-c8": _cfg(["lab"], k=8, connectivity=8),
    "lab-k8-min50": _cfg(["lab"], k=8, min_size=50),
    # the merge: boundary weight, Baatz-Schaepe and its shape weight
    "lab-k8-b1": _cfg(["lab"], k=8, merge={"boundary": 1.0}),
    "lab-k8-b4": _cfg(["lab"], k=8, merge={"boundary": 4.0}),
    "lab-k8-baatz": _cfg(["lab"], k=8, merge=_BAATZ),
    "lab-k8-baatz-s0": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.0}),
    "lab-k8-baatz-s3": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.3}),
    "lab-k8-baatz-b2": _cfg(["lab"], k=8, merge=_BAATZ | {"boundary": 2.0}),
    # round 2: the shape weight, compactness, texture with Baatz-Schaepe
    "lab-k8-baatz-s5": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.5}),
    "lab-k8-baatz-s7": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.7}),
    "lab-k8-baatz-s3-c0": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.3, "compactness": 0.0}),
    "lab-k8-baatz-s3-c1": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.3, "compactness": 1.0}),
    "lab-k8-baatz-s3-b2": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.3, "boundary": 2.0}),
    "labtex-k8-baatz-s3": _cfg(["lab", _TEX], k=8, merge=_BAATZ | {"shape": 0.3}),
    "labtex-k8-baatz-s5": _cfg(["lab", _TEX], k=8, merge=_BAATZ | {"shape": 0.5}),
    "labtex-k8-baatz-s3-b2": _cfg(["lab", _TEX], k=8,
                                  merge=_BAATZ | {"shape": 0.3, "boundary": 2.0}),
    "labtex11-k8-baatz-s3": _cfg(["lab", {"texture": {"stat": "std", "window": 11}}], k=8,
                                 merge=_BAATZ | {"shape": 0.3}),
    "labtex-k12-baatz-s3": _cfg(["lab", _TEX], k=12, merge=_BAATZ | {"shape": 0.3}),
    "labtex-k8-r2-baatz-s3": _cfg(["lab", _TEX], k=8, radius=2, merge=_BAATZ | {"shape": 0.3}),
    # round 3: the best merge (shape 0.3, compactness 0.5, boundary) on majority-2 leaves
    "lab-k8-r2-baatz-s3-b2": _cfg(["lab"], k=8, radius=2,
                                  merge=_BAATZ | {"shape": 0.3, "boundary": 2.0}),
    "lab-k8-r2-baatz-s4-b2": _cfg(["lab"], k=8, radius=2,
                                  merge=_BAATZ | {"shape": 0.4, "boundary": 2.0}),
    "lab-k8-baatz-s3-b4": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.3, "boundary": 4.0}),
    "lab-k12-r2-baatz-s3-b2": _cfg(["lab"], k=12, radius=2,
                                   merge=_BAATZ | {"shape": 0.3, "boundary": 2.0}),
    "labtex-k8-r2-baatz-s3-b2": _cfg(["lab", _TEX], k=8, radius=2,
                                     merge=_BAATZ | {"shape": 0.3, "boundary": 2.0}),
    # round 4 (after a50fd84: perimeters without the image's edge): shape 0.2 and 0.4
    "lab-k8-baatz-s2-b2": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.2, "boundary": 2.0}),
    "lab-k8-baatz-s4-b2": _cfg(["lab"], k=8, merge=_BAATZ | {"shape": 0.4, "boundary": 2.0}),
}


def _write_config(name: str, cfg: dict, where: Path) -> Path:
    import yaml

    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.yaml"
    body = {"input": "x.jpg", "output": "out/"} | cfg
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------
# running and scoring


def _digest(path: Path) -> str:
    """The config's and the pipeline's source: cached runs are reused only for both."""
    h = hashlib.sha1(path.read_bytes())
    import pipeline

    for src in sorted(Path(pipeline.__file__).parent.rglob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()[:10]


def run_cli(config: Path, image: Path, out: Path, regions: int = 16) -> float:
    """``tileseg run`` in its own process; returns the wall seconds."""
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(config), "--set", f"input={image}",
           "--set", f"output={out}", "--set", f"postprocess.merge.regions={regions}",
           "--overwrite", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - t


def cuts(out: Path, grid: tuple[int, ...]) -> dict[int, np.ndarray]:
    """The region raster at every N: what ``tileseg cut OUT --regions N`` writes."""
    import pandas as pd

    from pipeline.postprocess._hierarchy import Hierarchy, cut_hierarchy
    from pipeline.stages._merge_regions import load_leaves

    _, attrs, raster = load_leaves(out / "leaves.zarr")
    leaves = np.asarray(raster.compute()).astype(np.int64)
    h = Hierarchy.from_frame(pd.read_parquet(out / "hierarchy.parquet"),
                             int(attrs["n_leaves"]))
    res = {}
    for n in grid:
        region, _ = cut_hierarchy(h, h.n_merges(regions=n))
        table = np.concatenate([[0], region])
        res[n] = table[leaves]
    return res


def score(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """PRI, VoI (bits), Covering of one prediction, with ``pipeline.evaluate``."""
    import dask

    from pipeline.evaluate import (
        contingency,
        probabilistic_rand_index,
        segmentation_covering,
        variation_of_information,
    )

    (table,) = dask.compute(contingency(pred.astype(np.int64), truth.astype(np.int64)),
                            scheduler="synchronous")
    return (probabilistic_rand_index(table), variation_of_information(table),
            segmentation_covering(table))


def run_config(name: str, config: Path, pairs, grid, jobs: int, keep: bool) -> dict:
    """Scores[N] = [(pri, voi, cov) per image] and the seconds per image."""
    import imageio.v3 as iio

    base = OUT / "runs" / f"{name}-{_digest(config)}"

    def one(pair):
        jpg, png = pair
        out = base / jpg.stem
        done = out / "done.json"
        if done.is_file() and (out / "hierarchy.parquet").is_file():
            seconds = json.loads(done.read_text())["seconds"]
        else:
            seconds = run_cli(config, jpg, out)
            done.write_text(json.dumps({"seconds": seconds}))
        truth = iio.imread(png)
        res = {n: score(p, truth) for n, p in cuts(out, grid).items()}
        report = json.loads((out / "report.json").read_text())
        leaves = report.get("segments", {}).get("merge", {}).get("leaves")
        if not keep:
            for f in out.iterdir():
                if f.name not in ("hierarchy.parquet", "leaves.zarr", "report.json",
                                  "done.json"):
                    shutil.rmtree(f) if f.is_dir() else f.unlink()
        return res, seconds, leaves

    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(one, pairs))
    scores = {n: [r[0][n] for r in results] for n in grid}
    return {"scores": scores, "seconds": [r[1] for r in results],
            "leaves": [r[2] for r in results]}


def run_peer(kind: str, pairs) -> dict:
    import imageio.v3 as iio
    from skimage.segmentation import felzenszwalb, slic

    params = FH_SCALES if kind == "felzenszwalb" else SLIC_SEGMENTS
    scores: dict = {p: [] for p in params}
    seconds = []
    for jpg, png in pairs:
        img = iio.imread(jpg)
        truth = iio.imread(png)
        t = time.perf_counter()
        for p in params:
            if kind == "felzenszwalb":
                seg = felzenszwalb(img, scale=p, sigma=0.8, min_size=20)
            else:
                seg = slic(img, n_segments=p, compactness=10, start_label=1)
            scores[p].append(score(seg, truth))
        seconds.append((time.perf_counter() - t) / len(params))
    return {"scores": scores, "seconds": seconds}


def ods(result: dict) -> dict:
    """Per measure, the scale with the best mean over the images, and that mean."""
    means = {p: np.mean(np.asarray(v), axis=0) for p, v in result["scores"].items()}
    out = {}
    for i, (name, best) in enumerate((("pri", max), ("voi", min), ("cov", max))):
        p = best(means, key=lambda q, i=i: means[q][i])
        out[name] = (float(means[p][i]), p)
    return out


def _table(rows: dict) -> str:
    lines = ["| method | PRI (N) | VoI bits (N) | Covering (N) | s / image | leaves |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        o = ods(r)
        leaves = r.get("leaves")
        lv = f"{np.mean([v for v in leaves if v]):.0f}" if leaves and any(leaves) else "-"
        lines.append(f"| {name} | {o['pri'][0]:.3f} ({o['pri'][1]}) | {o['voi'][0]:.3f} "
                     f"({o['voi'][1]}) | {o['cov'][0]:.3f} ({o['cov'][1]}) | "
                     f"{np.mean(r['seconds']):.2f} | {lv} |")
    return "\n".join(lines)


def check_cut(config: Path, pair, grid=(3, 12, 40)) -> None:
    """``tileseg cut`` and fresh runs at N give the same partition as the in-process cut."""
    import rasterio

    base = OUT / "check-cut"
    shutil.rmtree(base, ignore_errors=True)
    jpg, _ = pair
    run_cli(config, jpg, base / "full")
    mine = cuts(base / "full", grid)
    for n in grid:
        run_cli(config, jpg, base / f"run-{n}", regions=n)
        subprocess.run([sys.executable, "-m", "pipeline.cli", "cut", str(base / "full"),
                        "--regions", str(n), "-q"], check=True, capture_output=True)
        for label, path in (("tileseg cut", base / "full"), ("tileseg run", base / f"run-{n}")):
            with rasterio.open(path / "segments.tif") as src:
                seg = src.read(1).astype(np.int64)
            same = _same_partition(seg, mine[n])
            print(f"check-cut N={n}: {label} {'identical' if same else 'DIFFERENT'}"
                  f" ({len(np.unique(seg))} regions)")
            if not same:
                raise SystemExit(1)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (np.unique(pairs[0]).size == pairs.shape[1] == np.unique(pairs[1]).size)


def photos_figure(configs: dict[str, Path], regions: int) -> None:
    import imageio.v3 as iio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from skimage.segmentation import find_boundaries

    paths = skimage_photos()
    for name, cfg in configs.items():
        fig, axes = plt.subplots(2, (len(paths) + 1) // 2, figsize=(4 * len(paths) // 2, 6))
        for ax, jpg in zip(axes.ravel(), paths, strict=False):
            out = OUT / "photos" / name / jpg.stem
            s = run_cli(cfg, jpg, out, regions=regions)
            with rasterio.open(out / "segments.tif") as src:
                seg = src.read(1)
            img = iio.imread(jpg).copy()
            img[find_boundaries(seg)] = (255, 0, 0)
            ax.imshow(img)
            ax.set_title(f"{jpg.stem[8:]}: {len(np.unique(seg))} regions, {s:.1f} s")
            ax.axis("off")
            print(f"photos: {name} {jpg.stem} {s:.1f} s, {len(np.unique(seg))} regions")
        fig.tight_layout()
        fig.savefig(OUT / f"photos-{name}.png", dpi=80)
        plt.close(fig)
        print(f"photos: figure {OUT / f'photos-{name}.png'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="6 images")
    ap.add_argument("--config", action="append", default=None,
                    help="a config to score (repeatable; default configs/photo.yaml)")
    ap.add_argument("--sweep", default=None,
                    help="comma-separated names of CANDIDATES, or 'all'")
    ap.add_argument("--no-peers", action="store_true", help="skip Felzenszwalb and SLIC")
    ap.add_argument("--jobs", type=int, default=1, help="tileseg runs at once")
    ap.add_argument("--grid", default=",".join(map(str, GRID)), help="the N of the cuts")
    ap.add_argument("--check-cut", action="store_true",
                    help="check the in-process cut against tileseg cut and fresh runs")
    ap.add_argument("--photos", action="store_true",
                    help="also run the configs on scikit-image's photos (figure, timing)")
    ap.add_argument("--keep", action="store_true", help="keep every run's rasters")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    n = 6 if args.quick else args.images
    grid = tuple(int(v) for v in args.grid.split(","))
    pairs = build_photos(n)
    configs: dict[str, Path] = {}
    for c in args.config or ([] if args.sweep else [str(ROOT / "configs" / "photo.yaml")]):
        configs[Path(c).stem] = Path(c)
    if args.sweep:
        names = list(CANDIDATES) if args.sweep == "all" else args.sweep.split(",")
        for name in names:
            configs[name] = _write_config(name, CANDIDATES[name], OUT / "configs")
    if args.check_cut:
        check_cut(next(iter(configs.values())), pairs[0])
    rows: dict[str, dict] = {}
    if not args.no_peers:
        for kind in ("felzenszwalb", "slic"):
            t = time.perf_counter()
            rows[kind] = run_peer(kind, pairs)
            print(f"{kind}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    for name, cfg in configs.items():
        t = time.perf_counter()
        rows[name] = run_config(name, cfg, pairs, grid, args.jobs, args.keep)
        o = ods(rows[name])
        print(f"{name}: {time.perf_counter() - t:.0f} s  PRI {o['pri'][0]:.3f} "
              f"VoI {o['voi'][0]:.3f} Cov {o['cov'][0]:.3f}", file=sys.stderr)
    print(f"\n{n} synthetic photos {W} x {H}, optimal dataset scale per measure "
          "(N: regions; Felzenszwalb: scale; SLIC: n_segments)\n")
    print(_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {k: {"ods": ods(v), "seconds": v["seconds"], "leaves": v.get("leaves"),
                 "means": {str(p): np.mean(np.asarray(s), axis=0).tolist()
                           for p, s in v["scores"].items()}} for k, v in rows.items()},
            indent=1))
    if args.photos:
        photos_figure(configs, 16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
