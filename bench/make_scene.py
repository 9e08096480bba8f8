"""Build the benchmark's synthetic GeoTIFF (or reuse an identical one).

    python bench/make_scene.py                      # 12000 x 12000 x 4 uint16
    python bench/make_scene.py --size 4096 --out /tmp/scene.tif

The scene comes from ``pipeline.synthetic.make_scene``: 512 x 512 tiles, DEFLATE with
predictor 2, EPSG:32633, written window by window in bounded memory. A file with the
same parameters (recorded in a ``.params.json`` sidecar) is reused, not rebuilt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _harness import SceneParams, ensure_scene, tile_for


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12000, help="width = height (default 12000)")
    ap.add_argument("--bands", type=int, default=4, help="band count (default 4)")
    ap.add_argument("--tile", type=int, default=512,
                    help="internal tile side (default 512; halved while above --size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help="GeoTIFF to write (default bench/data/scene-<params>.tif)")
    ap.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = ap.parse_args(argv)
    params = SceneParams(size=args.size, bands=args.bands, tile=tile_for(args.size, args.tile),
                         seed=args.seed)
    path = args.out if args.out is not None else params.default_path()
    if args.force:
        Path(str(path) + ".params.json").unlink(missing_ok=True)
    path, built = ensure_scene(params, path)
    print(f"{'built' if built else 'reused'} {path}")
    return path


if __name__ == "__main__":
    main()
