"""A cold kernel cache is compiled in a child process, and the run loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import rasterio
from rasterio.transform import from_origin

#: in a fresh process, with a fresh numba cache: one run, then its kernels' cache counts
_RUN = textwrap.dedent("""
    import json, sys
    import numba
    from pipeline import _warmup
    from pipeline.config import parse_config
    from pipeline.runner import run

    config = parse_config(json.loads(sys.argv[1]))
    run(config)

    def dispatchers():
        for name, mod in list(sys.modules.items()):
            if name.startswith("pipeline"):
                for obj in vars(mod).values():
                    if isinstance(obj, numba.core.dispatcher.Dispatcher):
                        yield obj

    seen = {id(d): d for d in dispatchers()}.values()
    print(json.dumps({
        "compiled": sorted(f"{d.py_func.__module__}.{d.py_func.__name__}"
                           for d in seen if sum(d.stats.cache_misses.values())),
        "loaded": sum(sum(d.stats.cache_hits.values()) for d in seen)}))
""")


def _image(path, size=128):
    rng = np.random.default_rng(5)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=2,
                       dtype="uint16", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 10, 10)) as ds:
        ds.write(rng.integers(0, 4000, (2, size, size), dtype=np.uint16))
    return path


def _run(config, cache, **env):
    done = subprocess.run(
        [sys.executable, "-c", _RUN, json.dumps(config)], capture_output=True, text=True,
        timeout=900, env={**os.environ, "NUMBA_CACHE_DIR": str(cache), **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_the_run_loads_what_the_child_compiled(tmp_path):
    """Segments, min_size and region merging with the graph in files, on a cold cache:
    the child compiles every kernel the run calls; the run compiles none, and a second
    run of the same kind starts no child."""
    cache = tmp_path / "numba-cache"
    config = {"input": str(_image(tmp_path / "in.tif")), "chunks": 48,
              "features": ["bands"], "cluster": {"method": "kmeans", "k": 5, "seed": 1},
              "formats": ["cog"],
              "postprocess": {"segments": {"connectivity": 8}, "min_size": 6,
                              "merge": {"criterion": "ward", "regions": 20,
                                        "graph": "files"}}}
    first, _ = _run({**config, "output": str(tmp_path / "a")}, cache, TILESEG_WARMUP="1")
    assert first["compiled"] == [] and first["loaded"] > 0, first
    markers = list(cache.rglob("tileseg-warm-*"))
    assert len(markers) == 1
    written = markers[0].stat().st_mtime_ns  # a child would write it again
    again, _ = _run({**config, "output": str(tmp_path / "b")}, cache, TILESEG_WARMUP="1")
    assert again["compiled"] == [] and list(cache.rglob("tileseg-warm-*")) == markers
    assert markers[0].stat().st_mtime_ns == written
    for name in ("labels.tif", "segments.tif"):
        with rasterio.open(tmp_path / "a" / name) as a, rasterio.open(tmp_path / "b" / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())


def test_a_failed_child_leaves_the_run_to_compile(tmp_path, scene, monkeypatch):
    """The child cannot start, or fails: the run goes on, and the kind is not tried
    again (its marker says why)."""
    from pipeline import _warmup
    from pipeline.config import parse_config
    from pipeline.stages import open_input

    monkeypatch.setenv("TILESEG_WARMUP", "1")
    config = parse_config({"input": str(scene.path), "output": str(tmp_path / "o"),
                           "postprocess": {"segments": {"connectivity": 4}}})
    opened = open_input(config)
    spec = _warmup.warm_spec(config, opened)
    assert spec is not None and spec["bands"] == scene.bands and spec["dtype"] == "<u2"
    # markers here, not in this install's cache: a failed kind is never warmed again
    marker = tmp_path / "cache" / "tileseg-warm-x"
    monkeypatch.setattr(_warmup, "marker_path", lambda spec: marker)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    assert _warmup.warm_up(config, opened) is False
    assert "no-python" in json.loads(marker.read_text())["failed"]
    marker.unlink()
    monkeypatch.setattr(sys, "executable", "false")
    assert _warmup.warm_up(config, opened) is False
    assert json.loads(marker.read_text())["failed"].startswith("exit 1")
    # tried once: a child that would leave a trace does not start
    trace = tmp_path / "started"
    script = tmp_path / "child.sh"
    script.write_text(f"#!/bin/sh\ntouch {trace}\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    assert _warmup.warm_up(config, opened) is False and not trace.exists()
    marker.unlink()
    monkeypatch.setenv("TILESEG_WARMUP", "0")
    assert _warmup.warm_up(config, opened) is False and not trace.exists()  # off
    monkeypatch.setenv("TILESEG_WARMUP", "1")
    assert _warmup.warm_up(config, opened) is True and trace.exists()  # it does run


def test_only_runs_with_segments_warm(tmp_path, scene):
    from pipeline import _warmup
    from pipeline.config import parse_config
    from pipeline.stages import open_input

    config = parse_config({"input": str(scene.path), "output": str(tmp_path / "o")})
    assert _warmup.warm_spec(config, open_input(config)) is None
    auto = parse_config({"input": str(scene.path), "output": str(tmp_path / "o"),
                         "postprocess": {"segments": {}, "merge": {"regions": 10}}})
    assert _warmup.warm_spec(auto, open_input(auto))["merge"]["graph"] == ["memory", "files"]


def test_the_child_runs_a_volume_of_the_kind(tmp_path):
    """A volume's kind: the child's tiny volume goes through segments, min_size and
    merge (both graphs) as the run would (in this process here)."""
    import zarr

    from pipeline import _warmup
    from pipeline.config import parse_config
    from pipeline.stages import open_input

    src = tmp_path / "v.zarr"
    arr = zarr.open_array(str(src), mode="w", shape=(1, 20, 24, 28), dtype="int16")
    arr[:] = np.random.default_rng(2).integers(0, 900, (1, 20, 24, 28)).astype(np.int16)
    config = parse_config({"input": str(src), "output": str(tmp_path / "o"),
                           "postprocess": {"segments": {"connectivity": 26},
                                           "min_size": {"volume": 3.0},
                                           "merge": {"regions": 5}}})
    spec = _warmup.warm_spec(config, open_input(config))
    assert spec is not None
    assert (spec["ndim"], spec["bands"], spec["dtype"]) == (3, 1, "<i2")
    assert spec["merge"]["graph"] == ["memory", "files"] and spec["min_size"]
    _warmup._child(spec)
