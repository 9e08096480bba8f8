"""End to end: segments, merge and polygons through pipeline.runner.run, any chunking."""

from __future__ import annotations

import shutil

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import xarray as xr

from pipeline.config import parse_config
from pipeline.runner import plan, run
from pipeline.synthetic import make_scene


@pytest.fixture(scope="module")
def noisy_scene(tmp_path_factory):
    """96 x 96, noisy enough to give many small segments; 10 m pixels."""
    d = tmp_path_factory.mktemp("segscene")
    return make_scene(d / "scene.tif", size=96, bands=3, n_classes=4, cell=20, border=5,
                      noise=0.07, tile=32, seed=5)


def _config(tmp_path, scene, name, chunks, postprocess, formats=("cog", "zarr")):
    return parse_config({
        "input": str(scene.path), "output": str(tmp_path / name), "chunks": chunks,
        "cluster": {"k": 4, "seed": 0, "sample_size": 5000},
        "formats": list(formats), "postprocess": postprocess,
    })


def _outputs(out):
    with rasterio.open(out / "segments.tif") as ds:
        tif = ds.read(1)
        meta = (ds.crs, ds.transform, ds.nodata, ds.dtypes[0])
    z = xr.open_zarr(out / "segments.zarr", mask_and_scale=False)["segments"].values
    table = pd.read_parquet(out / "segments.parquet")
    polys = gpd.read_parquet(out / "polygons.parquet")
    gpkg = gpd.read_file(out / "polygons.gpkg")
    return tif, meta, z, table, polys, gpkg


def test_two_chunkings_give_identical_outputs(tmp_path, noisy_scene):
    pp = {"segments": {"connectivity": 8}, "min_size": {"area": 1000}, "polygons": True}
    cfgs = [_config(tmp_path, noisy_scene, f"c{c}", c, pp) for c in (16, 40)]
    assert set(plan(cfgs[0])["writes"]) >= {"segments.tif", "segments.zarr", "segments.parquet",
                                            "polygons.gpkg", "polygons.parquet"}
    results = [run(c) for c in cfgs]
    ref = _outputs(results[0].output)
    tif, meta, z, table, polys, gpkg = ref
    assert meta[2] == 0 and meta[3] == "uint32"
    np.testing.assert_array_equal(z, tif)
    report = results[0].report["segments"]
    assert report["min_pixels"] == 10 and report["connectivity"] == 8
    assert report["found"] > report["segments"] == len(table) == tif.max()
    # after the merge every segment has at least min_size pixels, or no neighbour
    assert (table["area_px"] >= 10).all() and (table["area"] >= 1000).all()
    np.testing.assert_array_equal(np.bincount(tif.ravel())[1:], table["area_px"])
    assert polys["id"].tolist() == table["id"].tolist()
    assert polys.crs.to_epsg() == 32633 and gpkg.crs.to_epsg() == 32633
    np.testing.assert_allclose(polys.geometry.area, table["area"])
    for r in results[1:]:
        other = _outputs(r.output)
        np.testing.assert_array_equal(other[0], tif)
        assert other[1] == meta
        np.testing.assert_array_equal(other[2], z)
        pd.testing.assert_frame_equal(other[3], table)
        assert shapely.to_wkb(other[4].geometry.values).tolist() == \
            shapely.to_wkb(polys.geometry.values).tolist()
        pd.testing.assert_frame_equal(other[5], gpkg)
        assert r.report["segments"] == report
        assert set(r.report["outputs"]) >= {"segments.parquet", "polygons.gpkg"}


def test_segments_follow_the_filtered_labels_and_cog_only(tmp_path, noisy_scene):
    pp = {"majority": {"radius": 1}, "segments": {"connectivity": 4}, "polygons": True}
    cfg = _config(tmp_path, noisy_scene, "cog", 24, pp, formats=("cog",))
    run(cfg)
    out = tmp_path / "cog"
    with rasterio.open(out / "segments.tif") as ds:
        seg = ds.read(1)
    with rasterio.open(out / "labels.tif") as ds:
        labels = ds.read(1)
    table = pd.read_parquet(out / "segments.parquet")
    # without a merge, every pixel's class is its segment's class
    klass = np.concatenate([[255], table["class"].to_numpy()])
    np.testing.assert_array_equal(klass[seg], labels)
    polys = gpd.read_parquet(out / "polygons.parquet")
    assert len(polys) == len(table) and not (out / "segments.zarr").exists()


def test_one_pass_filters_each_chunk_once(tmp_path, noisy_scene, monkeypatch):
    """The pass that writes the class map and summarises the segments shares its
    blocks: the majority filter runs once per chunk, not once for each consumer."""
    import collections

    from pipeline.postprocess import _majority

    calls: collections.Counter = collections.Counter()
    kernel = _majority.majority_block

    def counted(block, radius, nodata):
        calls[block.shape] += 1
        return kernel(block, radius, nodata)

    monkeypatch.setattr(_majority, "majority_block", counted)
    pp = {"majority": {"radius": 2}, "segments": True, "min_size": 4}
    run(_config(tmp_path, noisy_scene, "once", 32, pp, formats=("cog",)))
    assert sum(calls.values()) == 9  # 3 x 3 chunks of 32 (each with its halo)


def test_worker_processes_give_the_threads_outputs(tmp_path, noisy_scene):
    """On a LocalCluster (the summaries take a pass of their own, the workers write
    the Zarr chunks) segments, table and class map equal the one-pass threaded run."""
    pp = {"majority": {"radius": 1}, "segments": True, "min_size": 6, "polygons": True}
    threads = run(_config(tmp_path, noisy_scene, "threads", 32, pp))
    cfg = _config(tmp_path, noisy_scene, "procs", 32, pp).to_dict()
    cfg["compute"] = {"scheduler": "processes", "n_workers": 2}
    procs = run(parse_config(cfg))
    a, b = _outputs(threads.output), _outputs(procs.output)
    np.testing.assert_array_equal(a[0], b[0])  # segments.tif
    assert a[1] == b[1]  # its georeferencing
    np.testing.assert_array_equal(a[2], b[2])  # segments.zarr
    pd.testing.assert_frame_equal(a[3], b[3])
    assert shapely.to_wkb(a[4].geometry.values).tolist() == \
        shapely.to_wkb(b[4].geometry.values).tolist()
    for name in ("labels.tif", "segments.tif"):  # the workers encoded the COGs' tiles
        assert (threads.output / name).read_bytes() == (procs.output / name).read_bytes()
    assert threads.report["segments"] == procs.report["segments"]


def test_segments_that_would_not_fit_in_memory_stop_with_one_line(tmp_path, noisy_scene,
                                                                   monkeypatch):
    """Where the segments resolve in memory (here: as on a cluster whose workers do
    not see the staging directory) and that would need more memory than is available,
    the run stops after the pass with a ResourceError (exit 2 on the command line), and
    leaves no output. Bounded by chunks (the workers share the staging), the same run
    goes through: it holds only the leaves' graph to merge them."""
    from pipeline.errors import PipelineError, ResourceError
    from pipeline.stages import _segments, _write

    pp = {"segments": True, "min_size": 6,
          "merge": {"criterion": "baatz_schape", "regions": 4}}
    first = run(_config(tmp_path, noisy_scene, "first", 32, pp)).report["segments"]
    # memory for the leaves' graph, not for the raw pieces
    enough = first["merge"]["leaves"] * _segments._BYTES_PER_LEAF
    assert enough < first["found"] * _segments._BYTES_PER_PIECE[True]
    monkeypatch.setattr(_segments, "_available_memory", lambda: enough)
    bounded = run(_config(tmp_path, noisy_scene, "bounded", 32, pp))
    got = bounded.report["segments"]
    assert (got["found"], got["segments"], got["merge"]["leaves"]) == (
        first["found"], first["segments"], first["merge"]["leaves"])
    shutil.rmtree(tmp_path / "first")
    monkeypatch.setattr(_write, "segment_spill", lambda ctx, staging: None)
    with pytest.raises(ResourceError) as err:
        run(_config(tmp_path, noisy_scene, "tight", 32, pp))
    msg = str(err.value)
    assert isinstance(err.value, PipelineError) and "\n" not in msg
    assert msg.startswith("postprocess.segments: ") and "GiB more memory to resolve and " \
        "merge" in msg and "postprocess.majority" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bounded"]  # nothing else left
    # with the memory there, the same run goes through
    monkeypatch.setattr(_segments, "_available_memory", lambda: 2**40)
    assert run(_config(tmp_path, noisy_scene, "tight", 32, pp)).report["segments"]["found"]


def test_leaves_too_many_to_merge_in_memory_stop_with_one_line(tmp_path, noisy_scene,
                                                               monkeypatch):
    """Bounded by chunks, region merging still holds the graph of the leaves: where
    that needs more memory than is available, the run stops before building it, with
    a ResourceError naming postprocess.merge, and leaves nothing behind."""
    from pipeline.errors import ResourceError
    from pipeline.stages import _segments

    pp = {"segments": True, "min_size": 6, "merge": {"regions": 4}}
    monkeypatch.setattr(_segments, "_available_memory", lambda: 1000)
    with pytest.raises(ResourceError) as err:
        run(_config(tmp_path, noisy_scene, "merge", 32, pp))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("postprocess.merge: ")
    assert "million leaves need about" in msg and "postprocess.min_size" in msg
    assert not any(tmp_path.iterdir())
    # segments and min_size alone, bounded, need no such memory
    alone = run(_config(tmp_path, noisy_scene, "segments", 32, {"segments": True,
                                                                 "min_size": 6}))
    assert alone.report["segments"]["segments"] < alone.report["segments"]["found"]


def test_auto_keeps_the_graph_in_files_where_memory_is_short(tmp_path, noisy_scene,
                                                             monkeypatch):
    """``graph: auto`` merges in memory where the graph takes less than half the
    memory available, in files otherwise, with the same outputs; in files, the run
    needs scratch space for them, and stops with one line where there is too little."""
    from pipeline.errors import ResourceError
    from pipeline.stages import _segments

    pp = {"segments": True, "min_size": 6, "merge": {"regions": 4}}
    monkeypatch.setattr(_segments, "_available_memory", lambda: 2**40)
    mem = run(_config(tmp_path, noisy_scene, "mem", 32, pp))
    leaves = mem.report["segments"]["merge"]["leaves"]
    assert mem.report["segments"]["merge"]["graph"] == "memory"
    monkeypatch.setattr(_segments, "_available_memory",
                        lambda: leaves * _segments._BYTES_PER_LEAF * 3 // 2)
    files = run(_config(tmp_path, noisy_scene, "files", 32, pp))
    assert files.report["segments"]["merge"]["graph"] == "files"
    for name in ("segments.tif", "segments.parquet"):
        assert (mem.output / name).read_bytes() == (files.output / name).read_bytes()
    calls = []  # the segments' scratch space first (plenty), then the merge's (none)
    monkeypatch.setattr(_segments, "_free_space",
                        lambda path: 1000 if calls.append(path) or len(calls) > 1
                        else 2**50)
    with pytest.raises(ResourceError) as err:
        run(_config(tmp_path, noisy_scene, "full", 32, pp))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("postprocess.merge: ")
    assert "of scratch space in" in msg and "graph: files" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files", "mem"]


def test_graph_in_files_holds_resident_mib_of_its_pages(tmp_path, noisy_scene,
                                                        monkeypatch):
    """With the graph in files, the loop drops its pages once they pass
    ``postprocess.merge.resident_mib`` (256 by default); the merges are the same."""
    from pipeline.postprocess import _bounded

    budgets = []
    keep_under = _bounded.Paged.keep_under
    monkeypatch.setattr(_bounded.Paged, "keep_under", lambda self, budget, *also:
                        budgets.append(budget) or keep_under(self, budget, *also))
    merge = {"regions": 4, "graph": "files"}
    pp = {"segments": True, "min_size": 6}
    default = run(_config(tmp_path, noisy_scene, "default", 32, {**pp, "merge": merge}))
    small = run(_config(tmp_path, noisy_scene, "small", 32, {
        **pp, "merge": {**merge, "resident_mib": 16}}))
    assert budgets == [256 << 20, 16 << 20]
    assert small.report["segments"]["merge"]["graph"] == "files"
    for name in ("segments.tif", "segments.parquet"):
        assert (default.output / name).read_bytes() == (small.output / name).read_bytes()


@pytest.mark.parametrize("version", [1, 2])
def test_available_memory_honours_a_control_group_limit(tmp_path, version):
    """Under a cgroup memory limit (a SLURM job, a container) the room left is the
    limit less the group's use, its inactive file cache counted as room."""
    from pipeline.stages._segments import _cgroup_room

    names = (("memory.max", "memory.current", "memory.stat", "inactive_file")
             if version == 2 else
             ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
              "memory/memory.stat", "total_inactive_file"))
    (tmp_path / "memory").mkdir()
    limit, usage, stat = (tmp_path / n for n in names[:3])
    key = names[3]
    limit.write_text("4000000000\n")
    usage.write_text("3000000000\n")
    stat.write_text(f"anon 5\n{key} 500000000\nactive_file 7\n")
    assert _cgroup_room(tmp_path) == 1_500_000_000
    limit.write_text("max\n" if version == 2 else f"{2**63 - 4096}\n")  # no limit
    assert _cgroup_room(tmp_path) is None
    assert _cgroup_room(tmp_path / "absent") is None


def test_segments_without_scratch_space_stop_with_one_line(tmp_path, noisy_scene,
                                                           monkeypatch):
    """The bounded resolver's file-backed arrays need scratch space in the staging
    directory: where the disk has less, the run stops after the pass with a
    ResourceError that names the directory, and leaves nothing behind."""
    from pipeline.errors import ResourceError
    from pipeline.stages import _segments

    monkeypatch.setattr(_segments, "_free_space", lambda path: 1000)
    with pytest.raises(ResourceError) as err:
        run(_config(tmp_path, noisy_scene, "full", 32, {"segments": True, "min_size": 6}))
    msg = str(err.value)
    assert "\n" not in msg and "of scratch space in" in msg and "GiB is free" in msg
    assert not any(tmp_path.iterdir())
