"""Global connected segments of volumes (z, y, x): equal to scipy for any chunking."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from _segment_oracle import (
    NODATA,
    as_arrays,
    canonical,
    features_for,
    neighbour_pairs,
    oracle_merge,
    oracle_segments,
    partitions,
    quantised,
    run_segments,
)
from affine import Affine
from dask.delayed import Delayed
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.io._geometry import Geometry
from pipeline.postprocess import (
    load_kernels,
    merge_small_segments,
    relabel_segments,
    resolve_segments,
    segment_table,
    segment_tasks,
    voxels_for_volume,
)
from pipeline.postprocess._kernels3d import label_volume
from pipeline.postprocess._segments3d import ChunkFaces, _chunk_task3

CONNECTIVITIES = [6, 18, 26]


@st.composite
def class_volumes(draw, max_side: int = 7, max_classes: int = 3) -> np.ndarray:
    """Volumes with blocky blobs, single voxels, diagonal contacts and nodata (255)."""
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    k = draw(st.integers(1, max_classes))
    seed = draw(st.integers(0, 2**32 - 1))
    block = draw(st.sampled_from([1, 2, 3]))
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, k, tuple(-(-s // block) for s in shape))
    classes = np.kron(coarse, np.ones((block,) * 3, dtype=np.int64))[
        :shape[0], :shape[1], :shape[2]]
    noise = rng.random(shape) < draw(st.sampled_from([0.0, 0.1, 0.3]))
    classes = np.where(noise, rng.integers(0, k, shape), classes)
    nodata = rng.random(shape) < draw(st.sampled_from([0.0, 0.05, 0.2]))
    return np.where(nodata, NODATA, classes).astype(np.uint8)


def _chunking(data, shape, max_part=4):
    return tuple(data.draw(partitions(n, max_part)) for n in shape)


def _stats_equal(a, b) -> None:
    for name, value in vars(a.stats).items():
        np.testing.assert_array_equal(value, getattr(b.stats, name), err_msg=name)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), classes=class_volumes(), connectivity=st.sampled_from(CONNECTIVITIES))
def test_ids_equal_scipy_for_any_chunking(data, classes, connectivity):
    chunks = _chunking(data, classes.shape)
    features = features_for(classes, 0)
    seg, index = run_segments(classes, features, chunks, connectivity)
    np.testing.assert_array_equal(seg, oracle_segments(classes, connectivity))
    assert seg.dtype == np.uint32 and index.ndim == 3 and index.stats.ndim == 3
    # the table is the single-chunk table, exactly
    _, single = run_segments(classes, features, classes.shape, connectivity)
    _stats_equal(index, single)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), classes=class_volumes(max_side=6),
       connectivity=st.sampled_from(CONNECTIVITIES))
def test_statistics_match_direct_computation(data, classes, connectivity):
    chunks = _chunking(data, classes.shape)
    rng = np.random.default_rng(7)
    features = rng.normal(0, 100, (2,) + classes.shape).astype(np.float32)
    seg, index = run_segments(classes, features, chunks, connectivity)
    stats = index.stats
    q = quantised(features)
    lo, hi = stats.bbox()
    _, h, w = classes.shape
    for i in range(1, index.n_segments + 1):
        where = np.nonzero(seg == i)  # C order: the first is the first voxel
        s = i - 1
        assert stats.count[s] == where[0].size
        assert stats.klass[s] == classes[where][0]
        assert stats.first[s] == (where[0][0] * h + where[1][0]) * w + where[2][0]
        assert lo[s].tolist() == [int(a.min()) for a in where]
        assert hi[s].tolist() == [int(a.max()) for a in where]
        assert (stats.zmin[s], stats.zmax[s]) == (where[0].min(), where[0].max())
        assert stats.coord_sum[s].tolist() == [int(a.sum()) for a in where]
        for f in range(2):
            exact = int(q[f][where].sum())
            assert int(stats.hi[s, f]) * 2**32 + int(stats.lo[s, f]) == exact
        np.testing.assert_allclose(stats.means()[s], features[(slice(None),) + where]
                                   .astype(float).mean(1), rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), classes=class_volumes(max_side=6),
       connectivity=st.sampled_from(CONNECTIVITIES), min_pixels=st.integers(1, 10),
       seed=st.integers(0, 3))
def test_merge_equals_oracle_for_any_chunking(data, classes, connectivity, min_pixels, seed):
    chunks = _chunking(data, classes.shape, max_part=3)
    features = features_for(classes, seed)
    seg, index = run_segments(classes, features, chunks, connectivity, min_pixels)
    ref, ref_classes = oracle_merge(oracle_segments(classes, connectivity), classes, features,
                                    connectivity, min_pixels)
    np.testing.assert_array_equal(seg, ref)
    assert {i + 1: int(c) for i, c in enumerate(index.stats.klass)} == ref_classes
    single_seg, single = run_segments(classes, features, classes.shape, connectivity,
                                      min_pixels)
    np.testing.assert_array_equal(single_seg, seg)
    _stats_equal(index, single)
    pairs = neighbour_pairs(seg, connectivity)
    has_neighbour = {a for a, _ in pairs} | {b for _, b in pairs}
    for i, n in enumerate(index.stats.count, start=1):
        assert n == (seg == i).sum()
        assert n >= min_pixels or i not in has_neighbour


# --------------------------------------------------------------------------------------
# Scenes built to break naive code
# --------------------------------------------------------------------------------------


def _diagonal(direction: tuple[int, int, int], n: int = 8) -> np.ndarray:
    """A one-voxel line of class 1 in class 2, crossing the chunks' corners."""
    a = np.full((n, n, n), 2, np.uint8)
    t = np.arange(n)
    a[tuple(t if d > 0 else (n - 1 - t if d < 0 else np.full(n, n // 2)) for d in direction)] = 1
    return a


@pytest.mark.parametrize("direction", [(1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1),
                                       (1, 1, 0), (0, 1, -1), (1, 0, -1)])
@pytest.mark.parametrize("chunks", [2, 3, (1, 2, 4), 8])
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_diagonal_lines_across_chunk_corners(direction, chunks, connectivity):
    classes = _diagonal(direction)
    seg, index = run_segments(classes, None, chunks, connectivity)
    np.testing.assert_array_equal(seg, oracle_segments(classes, connectivity))
    line = np.unique(seg[classes == 1])
    # a body diagonal is one segment only under 26; a face diagonal under 18 and 26
    joined = connectivity == 26 or (connectivity == 18 and 0 in direction)
    assert line.size == (1 if joined else 8)


def test_objects_touching_only_at_the_chunks_corner():
    classes = np.full((4, 4, 4), NODATA, np.uint8)
    classes[:2, :2, :2] = 1  # two cubes, each filling a chunk, touching by one corner
    classes[2:, 2:, 2:] = 1
    classes[:2, 2:, 2:] = 0  # and a cube of class 0 touching the first by an edge
    for connectivity, n in ((6, 3), (18, 3), (26, 2)):
        seg, index = run_segments(classes, None, 2, connectivity)
        assert index.n_segments == n
        np.testing.assert_array_equal(seg, oracle_segments(classes, connectivity))
    # merging the 8-voxel cubes: under 6 the first cube has no neighbour (its contact
    # with the class-0 cube is an edge) and stays; under 18 that edge is a contact
    feats = np.zeros((1, 4, 4, 4), np.float32)
    for connectivity, n in ((6, 2), (18, 1), (26, 1)):
        seg, index = run_segments(classes, feats, 2, connectivity, min_pixels=9)
        assert index.n_segments == n
        ref, _ = oracle_merge(oracle_segments(classes, connectivity), classes, feats,
                              connectivity, 9)
        np.testing.assert_array_equal(seg, ref)


@pytest.mark.parametrize("chunks", [(2, 3, 1), 1, 4, (5, 1, 2)])
def test_shell_around_a_core_and_all_nodata_chunks(chunks):
    classes = np.zeros((6, 6, 6), np.uint8)
    classes[1:5, 1:5, 1:5] = 1  # a hollow shell of class 1, its core class 2
    classes[2:4, 2:4, 2:4] = 2
    classes[:, :, 5] = NODATA  # a slab of nodata
    for connectivity in CONNECTIVITIES:
        seg, index = run_segments(classes, None, chunks, connectivity)
        np.testing.assert_array_equal(seg, oracle_segments(classes, connectivity))
        assert index.n_segments == 3 and (seg[:, :, 5] == 0).all()
    empty = np.full((3, 4, 5), NODATA, np.uint8)
    seg, index = run_segments(empty, None, (1, 2, 3), 26)
    assert index.n_segments == 0 and not seg.any()


def test_label_volume_numbers_by_first_voxel():
    rng = np.random.default_rng(3)
    classes = rng.integers(0, 3, (5, 6, 7)).astype(np.uint8)
    for connectivity in CONNECTIVITIES:
        lab, n = label_volume(classes, None, connectivity)
        ref = oracle_segments(classes, connectivity, nodata=-1)
        np.testing.assert_array_equal(lab, ref)
        assert n == ref.max() and lab.dtype == np.int32
        np.testing.assert_array_equal(canonical(lab), lab)


# --------------------------------------------------------------------------------------
# Laziness, the table, units, errors
# --------------------------------------------------------------------------------------


def test_lazy_one_table_per_task_and_faces_only_in_joins():
    classes = np.random.default_rng(0).integers(0, 3, (9, 10, 11)).astype(np.uint8)
    lab, _ = as_arrays(classes, None, (4, 5, 6))
    tasks = segment_tasks(lab, connectivity=26, min_pixels=4)
    assert all(isinstance(t, Delayed) for t in tasks.pieces + tasks.joins)
    assert len(tasks.pieces) == len(tasks.joins) == 3 * 2 * 2 and tasks.ndim == 3
    # what goes to the join tasks: the chunks' faces only, layers one voxel thick
    _, faces = _chunk_task3(classes[:4, :5, :6], None, np.zeros(0, np.int64), 0, (0, 0, 0),
                            10, 11, None, 3, np.zeros(0), np.ones(0), 4)
    assert isinstance(faces, ChunkFaces)
    for axis, (first, last) in enumerate(faces.labels):
        assert first.shape[axis] == last.shape[axis] == 1
        assert first.base is None  # a copy, not a view of the chunk's labels
    pieces, joins = dask.compute(tasks.pieces, tasks.joins)
    index = resolve_segments(tasks, pieces, joins)
    assert [lut.size for lut in index.luts] == [p.count.size + 1 for p in pieces]
    seg = relabel_segments(lab, index)
    assert isinstance(seg.data, da.Array) and seg.rio.nodata == 0
    assert seg.dims == ("z", "y", "x") and seg.data.chunks == lab.data.chunks
    assert seg.dtype == np.uint32
    with pytest.raises(ValueError, match="chunks"):
        relabel_segments(lab.chunk(5), index)
    merged = merge_small_segments(index, 4)
    assert merged.ndim == 3 and merged.stats.zmin is not None
    assert (merged.stats.count >= 4).all()


def test_coordinates_are_kept():
    classes = np.zeros((2, 3, 4), np.uint8)
    lab = xr.DataArray(da.from_array(classes, chunks=2), dims=("z", "y", "x"),
                       coords={"z": [10.0, 12.0], "y": [0.5, 1.5, 2.5], "x": np.arange(4.0)})
    tasks = segment_tasks(lab, connectivity=6)
    seg = relabel_segments(lab, resolve_segments(tasks, *dask.compute(tasks.pieces,
                                                                      tasks.joins)))
    assert seg.z.values.tolist() == [10.0, 12.0] and seg.rio.nodata == 0
    assert (seg.values == 1).all()


def test_raw_bands_give_the_float32_statistics():
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 2, (6, 5, 7)).astype(np.uint8)
    raw = rng.integers(1, 5000, (3, 6, 5, 7)).astype(np.uint16)
    lab, _ = as_arrays(classes, None, (2, 3, 4))
    image = xr.DataArray(da.from_array(raw, chunks=(3, 3, 3, 3)), dims=("band", "z", "y", "x"))
    floats = image.astype(np.float32).isel(band=[2, 0])
    offset, scale = np.array([100.0, 7.0]), np.array([3.0, 0.5])
    results = []
    for feats, bands in ((floats, None), (image, [2, 0])):
        tasks = segment_tasks(lab, feats, bands=bands, connectivity=18, min_pixels=3,
                              offset=offset, scale=scale)
        results.append(resolve_segments(tasks, *dask.compute(tasks.pieces, tasks.joins)))
    copy, direct = results
    np.testing.assert_allclose(direct.stats.means(), copy.stats.means(), rtol=1e-12,
                               atol=2.0**-24)
    ids = np.asarray(relabel_segments(lab, direct).values)
    sums = direct.stats.hi * 2**32 + direct.stats.lo
    for f, b in enumerate([2, 0]):
        want = np.bincount(ids.ravel(), weights=raw[b].astype(np.float64).ravel())[1:]
        np.testing.assert_array_equal(sums[:, f], want.astype(np.int64))


def test_table_on_an_anisotropic_geometry():
    classes = np.full((4, 6, 8), NODATA, np.uint8)
    classes[1:3, 2:5, 1:7] = 1  # 2 x 3 x 6 = 36 voxels
    classes[0, 0, 0] = 0
    features = np.zeros((1,) + classes.shape, np.float32)
    features[0, 1:3, 2:5, 1:7] = 4.0
    features[0, 0, 0, 0] = 10.0
    lab, feats = as_arrays(classes, features, (3, 4, 5))
    tasks = segment_tasks(lab, feats, connectivity=6, offset=[1.0], scale=[0.5])
    index = resolve_segments(tasks, *dask.compute(tasks.pieces, tasks.joins))
    # NIfTI affine: x and y 0.5 mm, z 2 mm, origin (10, 20, 30) in (x, y, z)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, 30.0]
    geometry = Geometry(dims=("z", "y", "x"), shape=classes.shape, kind="nifti", affine=affine,
                        units=("millimeter",) * 3)
    table = segment_table(index.stats, geometry=geometry, feature_names=["f"],
                          offset=[1.0], scale=[0.5])
    assert list(table.columns) == [
        "id", "class", "voxels", "volume", "z_min", "z_max", "y_min", "y_max", "x_min",
        "x_max", "world_z_min", "world_z_max", "world_y_min", "world_y_max", "world_x_min",
        "world_x_max", "centroid_z", "centroid_y", "centroid_x", "world_centroid_z",
        "world_centroid_y", "world_centroid_x", "mean_f"]
    assert table["id"].dtype == np.uint32
    assert table["class"].tolist() == [0, 1] and table["voxels"].tolist() == [1, 36]
    assert table["volume"].tolist() == [0.5, 18.0]  # voxel_size 0.5 mm^3
    row = table.iloc[1]
    assert [row[f"{a}_{m}"] for a in "zyx" for m in ("min", "max")] == [1, 2, 2, 4, 1, 6]
    # world box of the voxels' outer faces: z 2 mm from 30, y and x 0.5 mm from 20 and 10
    assert row["world_z_min"] == 30.0 + 2.0 * 0.5 and row["world_z_max"] == 30.0 + 2.0 * 2.5
    assert row["world_y_min"] == 20.0 + 0.5 * 1.5 and row["world_y_max"] == 20.0 + 0.5 * 4.5
    assert row["world_x_min"] == 10.0 + 0.5 * 0.5 and row["world_x_max"] == 10.0 + 0.5 * 6.5
    assert (row["centroid_z"], row["centroid_y"], row["centroid_x"]) == (1.5, 3.0, 3.5)
    assert (row["world_centroid_z"], row["world_centroid_y"], row["world_centroid_x"]) == (
        33.0, 21.5, 11.75)
    np.testing.assert_allclose(table["mean_f"], [10.0, 4.0])
    # default geometry: voxel units
    plain = segment_table(index.stats, feature_names=["f"])
    assert plain["volume"].tolist() == [1.0, 36.0]
    assert plain["world_z_min"].tolist() == [-0.5, 0.5]
    with pytest.raises(ValueError, match="geometry"):
        segment_table(index.stats, transform=Affine.identity(), feature_names=["f"])
    flat = Geometry(dims=("y", "x"), shape=(6, 8))
    with pytest.raises(ValueError, match="geometry"):
        segment_table(index.stats, geometry=flat, feature_names=["f"])


def test_2d_table_from_a_geometry_equals_its_transform():
    classes = np.array([[0, 0, 1], [0, 1, 1]], dtype=np.uint8)
    lab, _ = as_arrays(classes, None, 1)
    tasks = segment_tasks(lab, connectivity=4)
    stats = resolve_segments(tasks, *dask.compute(tasks.pieces, tasks.joins)).stats
    t = Affine(10.0, 0.0, 1000.0, 0.0, -10.0, 5000.0)
    want = segment_table(stats, transform=t)
    got = segment_table(stats, geometry=Geometry(dims=("y", "x"), shape=(2, 3), transform=t))
    assert want.equals(got)
    # an affine geometry maps pixel centres: the same pixels' outer corners
    affine = np.eye(4)
    affine[0, 0], affine[1, 1], affine[0, 3], affine[1, 3] = 10.0, -10.0, 1005.0, 4995.0
    got = segment_table(stats, geometry=Geometry(dims=("y", "x"), shape=(2, 3),
                                                 kind="tiff", affine=affine))
    assert want.equals(got)


@pytest.mark.parametrize(("volume", "voxel", "expected"), [
    (1.0, 0.5, 2), (1.1, 0.5, 3), (0.1, 0.5, 1), (1.0, 0.1, 10), (1e-9, 2.0, 1),
    (27.0, 0.3**3, 1001),  # 1000 voxels of 0.3**3 are 26.999999999999996 < 27
])
def test_voxels_for_volume(volume, voxel, expected):
    n = voxels_for_volume(volume, voxel)
    assert n == expected
    assert n * voxel >= volume and (n == 1 or (n - 1) * voxel < volume)


def test_errors():
    lab3, _ = as_arrays(np.zeros((2, 3, 4), np.uint8), None, 2)
    lab2, _ = as_arrays(np.zeros((3, 4), np.uint8), None, 2)
    with pytest.raises(ValueError, match=r"connectivity must be 6, 18 or 26, got 8 for "
                                         r"labels with dims \('z', 'y', 'x'\)"):
        segment_tasks(lab3, connectivity=8)
    with pytest.raises(ValueError, match=r"connectivity must be 4 or 8, got 26 for labels "
                                         r"with dims \('y', 'x'\)"):
        segment_tasks(lab2, connectivity=26)
    with pytest.raises(ValueError, match="connectivity"):
        segment_tasks(lab3)  # the default (8) is for 2-D
    lab4 = xr.DataArray(da.zeros((2, 2, 2, 2), dtype=np.uint8), dims=("t", "z", "y", "x"))
    with pytest.raises(TypeError, match="3-D"):
        segment_tasks(lab4, connectivity=6)
    feats = xr.DataArray(da.zeros((1, 2, 3, 5)), dims=("feature", "z", "y", "x"))
    with pytest.raises(ValueError, match="shape"):
        segment_tasks(lab3, feats, connectivity=6)
    with pytest.raises(ValueError, match="volume must be > 0"):
        voxels_for_volume(0.0, 1.0)
    with pytest.raises(ValueError, match="voxel_volume"):
        voxels_for_volume(1.0, 0.0)


def test_load_kernels_for_volumes():
    load_kernels(3)  # the tiny 3-D resolve and merge run without error


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 40))
def test_world_boxes_are_the_extremes_of_their_corners_bit_for_bit(seed, n):
    """An oblique affine (rotation, shear, odd spacing): the table's world box is the
    minimum and maximum of :meth:`Geometry.world` over the box's 8 corners, the same
    bits, and a row's world coordinates do not depend on the other rows."""
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(0, 1.3, (3, 3))
    affine[:3, 3] = rng.normal(0, 100, 3)
    geometry = Geometry(dims=("z", "y", "x"), shape=(50, 60, 70), kind="nifti",
                        affine=affine)
    lo = rng.integers(0, 40, (n, 3)) - 0.5
    hi = lo + rng.integers(0, 9, (n, 3)) + 1.0
    corners = np.stack([geometry.world(np.stack([(lo, hi)[c][:, a]
                                                 for a, c in enumerate(pick)], axis=1))
                        for pick in np.ndindex(2, 2, 2)])
    wmin, wmax = geometry.world_box(lo, hi)
    np.testing.assert_array_equal(wmin, corners.min(axis=0))
    np.testing.assert_array_equal(wmax, corners.max(axis=0))
    every = geometry.world(lo)
    for i in range(n):
        np.testing.assert_array_equal(geometry.world(lo[i:i + 1])[0], every[i])
    # the affine's meaning: world (x, y, z) = A @ (x, y, z, 1), returned in (z, y, x)
    want = (affine @ np.c_[lo[:, ::-1], np.ones(n)].T).T[:, :3][:, ::-1]
    np.testing.assert_allclose(every, want, rtol=1e-12, atol=1e-9)
