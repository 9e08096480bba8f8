"""Hierarchical region merging (postprocess.merge) and tileseg cut: exact for any chunking."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import parse_config
from pipeline.postprocess._hierarchy import CONTRAST_BITS, build_hierarchy, cut_hierarchy
from pipeline.runner import plan, run
from pipeline.synthetic import make_scene

# -- the merge loop against a plain greedy implementation ---------------------------

def _greedy(count, means, edges, boundary=0.0, contrast=None):
    """Ward merging by brute force: recompute every pair's cost after every merge.

    With ``boundary``, a cost is multiplied by ``1 + boundary * g``, ``g`` the mean
    contrast of the pair's border (``contrast``: per edge, the sum in fixed point and
    the number of pixel pairs), borders summed as regions merge.
    """
    n = len(count)
    cnt = {i: float(count[i]) for i in range(n)}
    mu = {i: means[i].astype(float) for i in range(n)}
    adj: dict = {i: {} for i in range(n)}
    for t, (a, b) in enumerate(zip(edges[0], edges[1], strict=True)):
        border = [0.0, 0.0]
        if contrast is not None:
            border = [contrast[2][t] / 2.0**CONTRAST_BITS, float(contrast[3][t])]
        adj[a - 1][b - 1] = adj[b - 1][a - 1] = border
    merges, m = [], n
    while True:
        best = None
        for i in adj:
            for j, (esum, epair) in adj[i].items():
                if i < j:
                    c = cnt[i] * cnt[j] / (cnt[i] + cnt[j]) * ((mu[i] - mu[j]) ** 2).sum()
                    if boundary > 0:
                        c *= 1.0 + boundary * (esum / epair if epair > 0 else 0.0)
                    if best is None or (c, i, j) < best:
                        best = (c, i, j)
        if best is None:
            return merges
        c, i, j = best
        cnt[m] = cnt[i] + cnt[j]
        mu[m] = (cnt[i] * mu[i] + cnt[j] * mu[j]) / cnt[m]
        merged: dict = {}
        for h, (esum, epair) in [*adj.pop(i).items(), *adj.pop(j).items()]:
            if h not in (i, j):
                old = merged.get(h, [0.0, 0.0])
                merged[h] = [old[0] + esum, old[1] + epair]
        adj[m] = merged
        for h, border in merged.items():
            adj[h].pop(i, None)
            adj[h].pop(j, None)
            adj[h][m] = border
        merges.append((i + 1, j + 1, c))
        m += 1


def _grid_graph(h, w, diagonal):
    """A ``h`` x ``w`` grid of leaves, 4- or 8-connected (edges ``a < b``, sorted)."""
    idx = np.arange(1, h * w + 1).reshape(h, w)
    a = [idx[:, :-1].ravel(), idx[:-1, :].ravel()]
    b = [idx[:, 1:].ravel(), idx[1:, :].ravel()]
    if diagonal:
        a += [idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()]
        b += [idx[1:, 1:].ravel(), idx[1:, :-1].ravel()]
    a, b = np.concatenate(a), np.concatenate(b)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((hi, lo))
    return lo[order], hi[order]


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 7), st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_merge_loop_is_the_greedy_merge(h, w, seed):
    rng = np.random.default_rng(seed)
    n = h * w
    a, b = _grid_graph(h, w, diagonal=False)
    count = rng.integers(1, 20, n)
    means = rng.integers(0, 4, (n, 2)).astype(float)  # small integers: many ties
    # a list of the contacts is emptied once read (the run frees them before the loop)
    edges = [a.copy(), b.copy(), np.ones(a.size, np.int64)]
    got = build_hierarchy(count, means, edges)
    assert edges == []
    want = _greedy(count, means, (a, b))
    assert [(int(x), int(y)) for x, y in zip(got.child_a, got.child_b, strict=True)] == \
        [(x, y) for x, y, _ in want]
    np.testing.assert_allclose(got.cost, [c for *_, c in want], rtol=1e-12, atol=1e-12)
    assert got.size[-1] == count.sum()


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.integers(2, 9), st.integers(0, 2**31 - 1), st.booleans(),
       st.booleans(), st.integers(1, 6), st.integers(1, 3))
def test_large_nodes_merge_as_the_greedy_merge(h, w, seed, ties, boundary, giant, nf):
    """Nodes with ``giant`` neighbours or more find their best through lower bounds.

    Whatever the threshold (1: every node), the merges are the brute force's, ties
    (small integer means) and 8-connected grids (many common neighbours) included.
    """
    rng = np.random.default_rng(seed)
    n = h * w
    a, b = _grid_graph(h, w, diagonal=True)
    count = rng.integers(1, 20, n)
    means = (rng.integers(0, 4, (n, nf)).astype(float) if ties
             else rng.normal(size=(n, nf)))
    kw = {}
    if boundary:
        kw = {"boundary": 1.5, "contrast": (a, b, rng.integers(0, 10**6, a.size),
                                            rng.integers(1, 5, a.size))}
    got = build_hierarchy(count, means, (a, b, np.ones(a.size, np.int64)),
                          giant_degree=giant, **kw)
    want = _greedy(count, means, (a, b), **kw)
    assert [(int(x), int(y)) for x, y in zip(got.child_a, got.child_b, strict=True)] == \
        [(x, y) for x, y, _ in want]
    np.testing.assert_allclose(got.cost, [c for *_, c in want], rtol=1e-12, atol=1e-12)
    plain = build_hierarchy(count, means, (a, b, np.ones(a.size, np.int64)),
                            giant_degree=10**9, **kw)
    assert np.array_equal(plain.cost, got.cost)  # bit for bit, with or without bounds


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 7), st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_consumed_inputs_merge_as_copies(h, w, seed):
    """``consume=True`` lets the loop update the means, ssq and boxes in place (the
    run's, made for the call): the same hierarchy, bit for bit; without it the
    caller's arrays are left as they were."""
    rng = np.random.default_rng(seed)
    n = h * w
    a, b = _grid_graph(h, w, diagonal=True)
    count = rng.integers(1, 20, n)
    means = rng.normal(size=(n, 2))
    ssq = rng.random((n, 2)) * count[:, None]
    rows, cols = np.divmod(np.arange(n), w)
    box = np.stack([rows, cols], axis=1).astype(np.int64)
    args = (a, b, rng.integers(0, 3, a.size))
    kw = {"criterion": "baatz_schape", "shape": 0.4}
    given_ = [x.copy() for x in (means, ssq, box)]
    copied = build_hierarchy(count, means, args, ssq=ssq, bbox=(box, box.copy()), **kw)
    for x, y in zip((means, ssq, box), given_, strict=True):
        np.testing.assert_array_equal(x, y)  # untouched
    consumed = build_hierarchy(count, means, args, ssq=ssq, bbox=(box, box.copy()),
                               consume=True, **kw)
    for f in ("child_a", "child_b", "cost", "size"):
        np.testing.assert_array_equal(getattr(consumed, f), getattr(copied, f), f)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(2, 9), st.integers(2, 9), st.integers(0, 2**31 - 1), st.booleans(),
       st.integers(1, 6), st.integers(1, 5), st.booleans())
def test_file_backed_loop_merges_as_in_memory(tmp_path, monkeypatch, h, w, seed, baatz,
                                              giant, step, boundary):
    """Bounded by chunks, the loop's arrays are files (:class:`Paged`) whose pages are
    dropped between its steps, and its pool is repacked into new files: the same
    hierarchy, bit for bit, as in memory, for any step (every few nodes, edges or
    merges here), large nodes, ``baatz_schape`` and border contrasts (some edges
    without one, matched a slice of edges at a time) included."""
    from pipeline.postprocess import _rag
    from pipeline.postprocess._bounded import Paged

    rng = np.random.default_rng(seed)
    n = h * w
    a, b = _grid_graph(h, w, diagonal=True)
    count = rng.integers(1, 20, n)
    means = rng.integers(0, 4, (n, 2)).astype(float)  # ties
    rows, cols = np.divmod(np.arange(n), w)
    box = np.stack([rows, cols], axis=1).astype(np.int64)
    kw = {"giant_degree": giant}
    if baatz:
        kw = {"criterion": "baatz_schape", "shape": 0.4, "ssq": rng.random((n, 2)) * 3,
              "bbox": (box, box + 1)}
    length = rng.integers(0, 3, a.size)
    if boundary:
        some = np.sort(rng.choice(a.size, rng.integers(1, a.size + 1), replace=False))
        kw.update(boundary=1.5, contrast=(a[some], b[some], rng.integers(0, 1 << 20, some.size),
                                         rng.integers(1, 5, some.size)))
    want = build_hierarchy(count, means, (a, b, length), **kw)
    monkeypatch.setattr(_rag, "STEP", 16 * step)  # nodes, edges: 16 x step; merges: one
    monkeypatch.setattr(_rag, "POOL_SPARE", 0)  # repacks: a pool with little room
    monkeypatch.setattr(_rag, "HEAP_ARENA", 8 * step)  # and the large nodes' heaps
    store = Paged(tmp_path / f"merge-{seed}-{step}")
    made = []
    empty = store.empty
    monkeypatch.setattr(store, "empty", lambda name, *args: made.append(name) or
                        empty(name, *args))
    pauses = []
    got = build_hierarchy(count, means, (a, b, length), store=store,
                          pause=lambda: pauses.append(store.release()), **kw)
    for f in ("child_a", "child_b", "cost", "size"):
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f), f)
    assert len(pauses) > n // step  # paused through the setup and the merges
    assert {"heap", "leaves", "nodes", "ends", "pool0"} <= set(made)
    if n * 3 > 60:  # small pools: repacked into a new file, the old one deleted
        assert "pool1" in made and not (store.directory / "pool0.bin").exists()
    if not baatz and giant <= 3:  # every node has a heap, in a small arena: repacked
        assert "heaps_k1" in made and not (store.directory / "heaps_k0.bin").exists()


def test_loop_pauses_after_merges_that_look_at_many_edges(tmp_path, monkeypatch):
    """Between two pauses the loop looks at ``STEP / 16`` edges at most (and one
    merge): on a star of small nodes, every merge re-costs the centre's edges, so it
    pauses at almost every merge instead of every ``STEP / 256`` merges; the
    hierarchy is the same."""
    from pipeline.postprocess import _rag
    from pipeline.postprocess._bounded import Paged

    n = 2001
    rng = np.random.default_rng(3)
    a, b = np.zeros(n - 1, np.int64) + 1, np.arange(2, n + 1)  # node 1 touches all
    count = rng.integers(1, 20, n)
    means = rng.random((n, 1))
    kw = {"giant_degree": 10**6}  # no heaps of bounds: each merge re-costs every edge
    want = build_hierarchy(count, means, (a, b, np.ones(n - 1, np.int64)), **kw)
    monkeypatch.setattr(_rag, "STEP", 4096)  # 16 merges or 256 edges between pauses
    store = Paged(tmp_path / "star", random=True)
    pauses = []
    got = build_hierarchy(count, means, (a, b, np.ones(n - 1, np.int64)), store=store,
                          pause=lambda: pauses.append(1), **kw)
    for f in ("child_a", "child_b", "cost", "size"):
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f), f)
    assert len(pauses) > 1500  # about one a merge while the centre has 256 edges or more


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(2, 9), st.integers(2, 9), st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_loop_dropping_pages_inside_merges_merges_as_in_memory(tmp_path, monkeypatch, h, w,
                                                               seed, giant):
    """With a budget of nothing, the loop drops its pages itself every few edges looked
    at, inside merges (``_rag._keep``), besides its pauses: the data stays in the
    files, so the hierarchy is the same, bit for bit (a range advised that is not the
    store's would read back as zeros)."""
    from pipeline.postprocess import _rag
    from pipeline.postprocess._bounded import Paged

    rng = np.random.default_rng(seed)
    n = h * w
    a, b = _grid_graph(h, w, diagonal=True)
    count = rng.integers(1, 20, n)
    means = rng.integers(0, 4, (n, 2)).astype(float)
    args = (a, b, rng.integers(0, 3, a.size))
    want = build_hierarchy(count, means, args, giant_degree=giant)
    monkeypatch.setattr(_rag, "STEP", 64)
    monkeypatch.setattr(_rag, "POOL_SPARE", 0)
    monkeypatch.setattr(_rag, "HEAP_ARENA", 16)
    monkeypatch.setattr(_rag, "KEEP_EVERY", 1)
    store = Paged(tmp_path / f"keep-{seed}", random=True)
    pause = store.keep_under(0)
    got = build_hierarchy(count, means, args, giant_degree=giant, store=store, pause=pause)
    for f in ("child_a", "child_b", "cost", "size"):
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f), f)
    if Path("/proc/self/statm").exists():
        assert pause.drops > 0


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_the_loop_drops_its_pages_itself_past_the_budget(tmp_path, monkeypatch):
    """Inside one merge no pause comes (a region with millions of neighbours re-anchors
    its heap, reading the graph at random): each compiled loop over edges reads the
    process's file-backed memory every ``KEEP_EVERY`` edges and drops the store's pages
    past the budget. Touching a whole 64 MiB array at random then holds about the budget, and
    the data stays; without a ``keep`` it holds the array."""
    import numba

    from pipeline.postprocess import _rag
    from pipeline.postprocess._bounded import Paged

    @numba.njit
    def touch(a, order, graph):
        s = 0
        mask = _rag._keep_mask(graph)
        for r in range(order.size):
            s += a[order[r]]
            _rag._keep(graph, r, mask)  # as the loop does for every edge it looks at
        return s

    def file_rss() -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                    if x.startswith("RssFile:"))
        return int(line.split()[1]) * 1024

    store = Paged(tmp_path, random=True)
    a = store.full("a", (8 << 20,), np.int64, 1)  # 64 MiB, written a slice at a time
    order = np.random.default_rng(0).permutation(a.size)[:200_000]
    def never() -> tuple:  # a keep that never drops: no descriptor to read
        return (np.array([-1, 0, 0, 63, 0, 0, 0], np.int64), np.zeros(1, np.uint8),
                np.zeros((1, 2), np.int64))

    none = never()
    touch(a, order[:1], (0,) * 9 + (none,))  # compiled first: its libraries' pages
    held = {}
    for name, inside in (("no keep", False), ("keep", True)):
        pause = store.keep_under(8 << 20)
        keep = pause.keep if inside else never()
        keep[0][3] = 63  # a reading every 64 touches
        store.release()
        floor = file_rss()
        assert touch(a, order, (0,) * 9 + (keep,)) == order.size
        held[name] = file_rss() - floor
        if inside:
            assert pause.drops > 0
    assert held["no keep"] > 48 << 20, held
    assert held["keep"] < (8 << 20) + 64 * (64 << 10), held


def test_cut_numbers_regions_by_first_pixel():
    count = np.ones(4, np.int64)
    means = np.array([[0.0], [5.0], [0.1], [5.1]])
    a, b = np.array([1, 2, 3]), np.array([2, 3, 4])
    h = build_hierarchy(count, means, (a, b, np.ones(3, np.int64)))
    assert h.n_merges(regions=2) == 2 and h.n_merges(regions=1) == 3
    assert h.n_merges(regions=10) == 0
    region, n = cut_hierarchy(h, h.n_merges(regions=2))
    assert n == 2 and region[0] == 1  # the region of leaf 1 is region 1
    assert h.n_merges(threshold=0.0) == 0
    assert h.n_merges(threshold=float(np.sqrt(h.cost[0]))) >= 1


# -- end to end --------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("mergescene")
    return make_scene(d / "scene.tif", size=80, bands=3, n_classes=4, cell=16, border=4,
                      noise=0.06, tile=16, seed=11)


def _config(out, scene, chunks, merge, **pp):
    return parse_config({
        "input": str(scene.path), "output": str(out), "chunks": chunks,
        "cluster": {"k": 4, "seed": 0, "sample_size": 4000},
        "formats": ["cog", "zarr"],
        "postprocess": {"segments": {"connectivity": 8}, "merge": merge, **pp},
    })


def _segments(out):
    with rasterio.open(out / "segments.tif") as ds:
        return ds.read(1)


MERGES = [
    {"regions": 6},
    {"criterion": "baatz_schape", "regions": 9, "shape": 0.4, "compactness": 0.3},
    {"criterion": "ward", "threshold": 3.0, "boundary": 2.0},
    {"criterion": "baatz_schape", "threshold": 4.0, "boundary": 1.0},
]


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(chunks=st.sampled_from([16, 24, 40, 48]), which=st.integers(0, len(MERGES) - 1))
def test_same_merges_for_any_chunking(tmp_path_factory, scene, chunks, which):
    d = tmp_path_factory.mktemp("m")
    merge = MERGES[which]
    one = run(_config(d / "one", scene, 1024, merge, min_size=4))
    many = run(_config(d / "many", scene, chunks, merge, min_size=4))
    np.testing.assert_array_equal(_segments(one.output), _segments(many.output))
    pd.testing.assert_frame_equal(pd.read_parquet(one.output / "hierarchy.parquet"),
                                  pd.read_parquet(many.output / "hierarchy.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(one.output / "segments.parquet"),
                                  pd.read_parquet(many.output / "segments.parquet"))


@pytest.mark.parametrize("merge", [MERGES[0], MERGES[2], MERGES[3]])
def test_graph_in_files_merges_as_in_memory(tmp_path, monkeypatch, scene, merge):
    """``graph: files``: the contacts (and the border contrasts) joined a window of IDs
    at a time and the loop's graph in files whose pages are dropped at every step
    (budget 0 here); the same outputs as with the graph in memory, and the files gone
    with the staging."""
    from pipeline.postprocess import _bounded, _rag

    mem = run(_config(tmp_path / "mem", scene, 24, {**merge, "graph": "memory"}, min_size=4))
    monkeypatch.setattr(_rag, "STEP", 64)
    keep_under = _bounded.Paged.keep_under
    monkeypatch.setattr(_bounded.Paged, "keep_under",
                        lambda self, budget, *also: keep_under(self, 0, *also))
    monkeypatch.setattr(_bounded._ContactWindows, "SPAN", 8)
    joined = []  # the contrasts: saved by the tasks, joined in windows
    windows = _bounded.contrast_windows
    monkeypatch.setattr(_bounded, "contrast_windows", lambda paths, store:
                        joined.append(len(paths)) or windows(paths, store))
    files = run(_config(tmp_path / "files", scene, 24, {**merge, "graph": "files"},
                        min_size=4))
    assert mem.report["segments"]["merge"]["graph"] == "memory"
    assert files.report["segments"]["merge"]["graph"] == "files"
    assert bool(joined) == ("boundary" in merge)
    np.testing.assert_array_equal(_segments(mem.output), _segments(files.output))
    for name in ("hierarchy.parquet", "segments.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(mem.output / name),
                                      pd.read_parquet(files.output / name))
    a = xr.open_zarr(mem.output / "leaves.zarr", consolidated=False)
    b = xr.open_zarr(files.output / "leaves.zarr", consolidated=False)
    np.testing.assert_array_equal(a["leaves"].values, b["leaves"].values)
    assert not any(p.name.startswith(".") for p in files.output.iterdir())


def test_regions_exact_count_table_and_report(tmp_path, scene):
    cfg = _config(tmp_path / "o", scene, 24, {"regions": 5})
    writes = plan(cfg)["writes"]
    assert "hierarchy.parquet" in writes and "leaves.zarr" in writes
    res = run(cfg)
    seg = _segments(res.output)
    ids = np.unique(seg[seg > 0])
    np.testing.assert_array_equal(ids, np.arange(1, 6))
    table = pd.read_parquet(res.output / "segments.parquet")
    assert len(table) == 5
    np.testing.assert_array_equal(np.bincount(seg.ravel())[1:], table["area_px"])
    # regions numbered by their first pixel in raster order
    first = [np.flatnonzero(seg.ravel() == i)[0] for i in ids]
    assert first == sorted(first)
    h = pd.read_parquet(res.output / "hierarchy.parquet")
    assert list(h.columns) == ["parent", "child_a", "child_b", "cost", "size"]
    rep = res.report["segments"]["merge"]
    assert rep["regions"] == 5 and rep["merges"] == rep["leaves"] - 5
    assert rep["hierarchy_merges"] == len(h) == rep["leaves"] - 1
    leaves = xr.open_zarr(res.output / "leaves.zarr", consolidated=False)["leaves"].values
    assert leaves.max() == rep["leaves"]
    # the leaves' lookup tables stay in the spill files until the writes, then go
    assert not any(p.name.startswith(".") for p in res.output.iterdir())


def test_cut_rewrites_what_a_run_writes(tmp_path, scene):
    merge = {"criterion": "baatz_schape", "regions": 4, "boundary": 1.0}
    src = run(_config(tmp_path / "src", scene, 24, merge)).output
    ref = run(_config(tmp_path / "ref", scene, 24, {**merge, "regions": 11})).output
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "cut", str(src), "--regions",
                        "11", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_segments(src), _segments(ref))
    pd.testing.assert_frame_equal(pd.read_parquet(src / "segments.parquet"),
                                  pd.read_parquet(ref / "segments.parquet"))
    z = xr.open_zarr(src / "segments.zarr", consolidated=False)["segments"].values
    np.testing.assert_array_equal(z, _segments(ref))
    report = json.loads((src / "report.json").read_text())
    assert report["segments"]["segments"] == 11
    assert report["segments"]["merge"]["cut"] == {"regions": 11, "threshold": None}
    assert not [p for p in src.iterdir() if p.name.startswith(".")]


def test_cut_refuses_an_output_without_hierarchy(tmp_path, scene):
    cfg = parse_config({"input": str(scene.path), "output": str(tmp_path / "plain"),
                        "cluster": {"k": 3, "seed": 0, "sample_size": 2000},
                        "postprocess": {"segments": True}})
    run(cfg)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "cut", str(tmp_path / "plain"),
                        "--regions", "3"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "hierarchy.parquet" in r.stderr


@pytest.mark.parametrize("merge, words", [
    ({"criterion": "kmeans", "regions": 3}, "criterion"),
    ({"regions": 0}, "regions"),
    ({"shape": 0.3}, "threshold"),
])
def test_bad_merge_config_is_one_line_and_leaves_nothing(tmp_path, scene, write_config,
                                                         merge, words):
    cfg = write_config({"input": str(scene.path), "output": str(tmp_path / "out"),
                        "postprocess": {"merge": merge}})
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and words in r.stderr
    assert not (tmp_path / "out").exists()


def test_volume_merges_are_the_same_for_any_chunking(tmp_path):
    import zarr

    rng = np.random.default_rng(3)
    vol = np.zeros((1, 20, 24, 24), np.float32)
    vol[0, :, :, 12:] = 50
    vol[0, 10:] += 20
    vol += rng.normal(0, 8, vol.shape).astype(np.float32)
    path = tmp_path / "vol.zarr"
    zarr.save_array(str(path), vol)
    outs = []
    for chunks in (16, 1024):
        cfg = parse_config({
            "input": str(path), "output": str(tmp_path / f"v{chunks}"), "chunks": chunks,
            "cluster": {"k": 3, "seed": 0, "sample_size": 3000}, "formats": ["zarr"],
            "postprocess": {"merge": {"criterion": "baatz_schape", "regions": 4,
                                      "boundary": 1.0}, "min_size": 3},
        })
        res = run(cfg)
        outs.append(xr.open_zarr(res.output / "segments.zarr")["segments"].values)
        assert res.report["segments"]["merge"]["regions"] == 4
    np.testing.assert_array_equal(*outs)
    assert np.unique(outs[0][outs[0] > 0]).size == 4
