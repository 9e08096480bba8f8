"""Compile a cold cache's kernels in a child process, not in the run's own.

numba keeps what it compiles in the process that compiled it: the LLVM modules of
every kernel stay, for the kernels that call it. A run that compiles its kernels itself
(the first of its kind on an install, or after an upgrade) therefore holds them to its
end: on 8192^2 noise, ``min_size: 16`` peaked at 1117 MiB against 934 with the kernels
in numba's cache, and region merging at 1509 MiB against 1202 (bench/RESULTS.md
section 11j). Kernels loaded from the cache cost a fraction of that.

So, before a run with segments whose kind this install has not run yet, a child
process runs the same post-processing on a tiny synthetic image of the same kind (its
dims, bands, dtype and features): it compiles the same kernels into numba's on-disk
cache, and the run loads them. A marker file beside numba's cache of these kernels
records each kind done; its name hashes the kind, the versions and the sources' stamps
(numba's own test of a stale cache), so an upgrade or an edit warms again. The child
never fails the run: where it fails, the run compiles in its own process as before
(and the kind is not tried again).
``TILESEG_WARMUP=0`` turns it off (the test suite does, but for the tests of it).

Written here: numba has no way to compile a function for the signatures a later call
will bring without that call, nor to drop the modules it keeps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["warm_up", "warm_spec", "marker_path"]

log = logging.getLogger(__name__)

#: the variable that turns the warm-up off ("0"); the child runs with it off
ENV = "TILESEG_WARMUP"
#: the tiny image's side (pixels; voxels for volumes) and its chunks: several chunks,
#: so that the borders between them are resolved as in a large run
SIDE = {2: 96, 3: 32}
CHUNK = {2: 32, 3: 16}


def _sources_stamp() -> list[tuple[str, int, int]]:
    """Return the package's sources (name, mtime, size): numba's test of a stale cache."""
    root = Path(__file__).parent
    stats = ((p, p.stat()) for p in root.rglob("*.py"))
    return sorted((str(p.relative_to(root)), st.st_mtime_ns, st.st_size) for p, st in stats)


def warm_spec(config: Any, opened: Any) -> dict[str, Any] | None:
    """Return what the child needs to compile the run's kernels; None: nothing to warm.

    Only runs with segments: their kernels (the segments' pass, resolver, minimum-size
    merge and region merging) are most of what a run compiles.
    """
    pp = config.postprocess
    if pp.segments is None:
        return None
    image = opened.image
    features = config.to_dict()["features"]
    merge = None
    if pp.merge is not None:
        m = pp.merge.model_dump()
        # ``auto`` picks memory or files once the leaves are counted: warm both
        graphs = ["memory", "files"] if m["graph"] == "auto" else [m["graph"]]
        merge = {**m, "regions": 4, "threshold": None, "graph": graphs}
    return {
        "ndim": int(opened.geometry.ndim),
        "bands": int(image.sizes["band"]),
        "dtype": np.dtype(image.dtype).str,
        "features": features,
        "majority": bool(np.any(np.asarray(pp.majority.radius) > 0)),
        "segments": pp.segments.model_dump(),
        "min_size": pp.min_size is not None,
        "merge": merge,
        "mask": config.mask if config.mask in ("otsu",) else None,
    }


def marker_path(spec: dict[str, Any]) -> Path | None:
    """Return the marker of ``spec``'s kind, beside numba's cache of the merge kernels."""
    import numba

    from .postprocess import _rag

    path = getattr(getattr(_rag._merges, "stats", None), "cache_path", None)
    if path is None:  # no cache for this kernel (NUMBA_DISABLE_JIT, ...)
        return None
    cache = Path(path)
    from .stages._staging import _version

    kind = json.dumps([spec, _version(), numba.__version__, sys.version, _sources_stamp()],
                      sort_keys=True, default=str)
    return cache / f"tileseg-warm-{hashlib.sha256(kind.encode()).hexdigest()[:24]}"


def warm_up(config: Any, opened: Any, timeout: float = 1800) -> bool:
    """Compile the run's kernels in a child process where the cache is cold.

    Returns whether a child ran (and succeeded). Never raises for the child's sake.
    """
    if os.environ.get(ENV, "1") == "0":
        return False
    spec = warm_spec(config, opened)
    if spec is None:
        return False
    marker = marker_path(spec)
    if marker is None or marker.exists():
        return False
    t = time.perf_counter()
    # the child imports this very package, wherever it was imported from
    paths = [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, ENV: "0", "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    failed = None
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline._warmup", json.dumps(spec)],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            failed = f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        failed = str(e)
    try:  # a failed kind is not tried again: the run compiles in its own process
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({**spec, "failed": failed}, sort_keys=True))
    except OSError:
        pass  # a read-only cache: the next run warms again (loading, not compiling)
    if failed is not None:
        log.info("warm-up: the child failed (%s); the kernels compile in this process",
                 failed)
        return False
    log.info("warm-up: compiled the kernels in a child process in %.1f s",
             time.perf_counter() - t)
    return True


def _tiny_input(spec: dict[str, Any], where: Path) -> Path:
    """Write a tiny noise image (GeoTIFF) or volume (Zarr) of ``spec``'s bands and dtype."""
    rng = np.random.default_rng(0)
    dtype = np.dtype(spec["dtype"])
    side = SIDE[spec["ndim"]]
    shape = (spec["bands"],) + (side,) * spec["ndim"]
    if dtype.kind == "f":
        data = rng.random(shape).astype(dtype)
    else:
        data = rng.integers(1, min(int(np.iinfo(dtype).max), 255), shape).astype(dtype)
    if spec["ndim"] == 3:
        import zarr

        path = where / "tiny.zarr"
        arr = zarr.open_array(str(path), mode="w", shape=shape, chunks=shape, dtype=dtype)
        arr[:] = data
        return path
    import rasterio
    from rasterio.transform import from_origin

    path = where / "tiny.tif"
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side,
                       count=spec["bands"], dtype=dtype, crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 1, 1)) as ds:
        ds.write(data)
    return path


def _child(spec: dict[str, Any]) -> None:
    """Run the spec's post-processing on a tiny image (once per graph mode)."""
    from .config import parse_config
    from .runner import run

    with tempfile.TemporaryDirectory(prefix="tileseg-warm-") as tmp:
        where = Path(tmp)
        source = _tiny_input(spec, where)
        merge = spec["merge"]
        for i, graph in enumerate(merge["graph"] if merge else [None]):
            pp: dict[str, Any] = {"segments": spec["segments"]}
            if spec["majority"]:
                pp["majority"] = {"radius": 1}
            if spec["min_size"]:
                pp["min_size"] = 8
            if merge:
                pp["merge"] = {**merge, "graph": graph}
            config = {"input": str(source), "output": str(where / f"out{i}"),
                      "chunks": CHUNK[spec["ndim"]], "features": spec["features"],
                      "cluster": {"method": "kmeans", "k": 4, "seed": 0},
                      "compute": {"scheduler": "threads", "n_workers": 1},
                      "formats": ["zarr"], "postprocess": pp}
            if spec["mask"]:
                config["mask"] = spec["mask"]
            run(parse_config(config))


if __name__ == "__main__":  # the child: ``python -m pipeline._warmup SPEC``
    logging.basicConfig(level=logging.WARNING)
    _child(json.loads(sys.argv[1]))
