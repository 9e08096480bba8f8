"""The measures of pipeline.evaluate: hand-computed cases, scikit-learn / scikit-image
oracles, the BSDS500 definitions written out literally, and the streamed table."""

from __future__ import annotations

import itertools
import math

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.delayed import Delayed
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import variation_of_information as sk_voi
from sklearn import metrics

from pipeline import evaluate as ev
from pipeline.errors import InputError
from pipeline.testing import SHARED_DATA, write_raster

# ---------------------------------------------------------------- helpers


def table(pred, truth, **kw):
    return ev.ContingencyTable.from_arrays(np.asarray(pred), np.asarray(truth), **kw)


def lazy_table(pred, truth, chunks, **kw):
    p = xr.DataArray(da.from_array(np.asarray(pred), chunks=chunks), dims=("y", "x"))
    t = xr.DataArray(da.from_array(np.asarray(truth), chunks=chunks), dims=("y", "x"))
    return ev.contingency(p, t, **kw).compute()


def same_table(a: ev.ContingencyTable, b: ev.ContingencyTable) -> None:
    np.testing.assert_array_equal(a.truth_labels, b.truth_labels)
    np.testing.assert_array_equal(a.pred_labels, b.pred_labels)
    np.testing.assert_array_equal(a.dense(), b.dense())
    assert a.nodata_pixels == b.nodata_pixels


def random_maps(rng, shape=(37, 41), k_pred=5, k_truth=4, agree=0.6):
    truth = rng.integers(0, k_truth, size=shape)
    perm = rng.permutation(k_pred)[:k_truth] if k_pred >= k_truth else rng.integers(
        0, k_pred, k_truth)
    pred = np.where(rng.random(shape) < agree, perm[truth], rng.integers(0, k_pred, shape))
    return pred, truth


def mapped_prediction(pred, pairs):
    """Relabel matched predicted labels as their class; unmatched ones as new labels."""
    out = np.asarray(pred).astype(np.int64) + 10_000
    for p, q in pairs:
        out[np.asarray(pred) == p] = q
    return out


# ---------------------------------------------------------------- hand-computed


def test_hand_computed_case():
    # truth 0 0 0 1 1 1, prediction 0 0 1 1 2 2 (the scikit-learn user guide example)
    truth = np.array([[0, 0, 0, 1, 1, 1]])
    pred = np.array([[0, 0, 1, 1, 2, 2]])
    r = ev.measures(table(pred, truth))
    c, g, i = r["class"], r["region"], r["instance"]
    assert c["matching"] == [[0, 0], [2, 1]]
    assert c["confusion"] == {"truth_labels": [0, 1], "pred_labels": [0, 2, 1],
                              "matrix": [[2, 0, 1], [0, 2, 1]]}
    assert c["overall_accuracy"] == pytest.approx(4 / 6)
    # p_e = (3 * 2 + 3 * 2) / 36 = 1/3, kappa = (2/3 - 1/3) / (2/3)
    assert c["cohen_kappa"] == pytest.approx(0.5)
    # index 2, expected 6 * 3 / 15 = 1.2, max (6 + 3) / 2 = 4.5
    assert c["adjusted_rand_index"] == pytest.approx((2 - 1.2) / (4.5 - 1.2))
    h_t, h_p = 1.0, math.log2(3)
    h_joint = 2 * (1 / 3) * math.log2(3) + 2 * (1 / 6) * math.log2(6)
    mi = h_t + h_p - h_joint
    assert c["normalized_mutual_info"] == pytest.approx(mi / ((h_t + h_p) / 2))
    # 15 pairs; disagreements: (18 + 12 - 2 * 10) / 2 = 5
    assert g["probabilistic_rand_index"] == pytest.approx(1 - 5 / 15)
    assert g["variation_of_information"] == pytest.approx(2 * h_joint - h_t - h_p)
    assert g["voi_false_splits"] == pytest.approx(h_joint - h_t)
    assert g["voi_false_merges"] == pytest.approx(h_joint - h_p)
    # each true region of 3 pixels is best covered with IoU 2/3
    assert g["segmentation_covering"] == pytest.approx(2 / 3)
    assert i["matched"] == 2 and i["pred_objects"] == 3 and i["truth_objects"] == 2
    assert i["f1"] == pytest.approx(4 / 5)
    assert i["mean_iou"] == pytest.approx(2 / 3)
    assert r["pixels"] == {"total": 6, "nodata": 0, "ignored": 0, "compared": 6}


def test_identical_up_to_renaming_is_perfect():
    truth = np.repeat(np.arange(4), 25).reshape(10, 10)
    pred = (truth * 7 + 3) % 11
    r = ev.measures(table(pred, truth))
    for key in ("overall_accuracy", "cohen_kappa", "normalized_mutual_info",
                "adjusted_rand_index"):
        assert r["class"][key] == pytest.approx(1.0)
    assert r["region"]["probabilistic_rand_index"] == 1.0
    assert r["region"]["variation_of_information"] == pytest.approx(0.0, abs=1e-12)
    assert r["region"]["segmentation_covering"] == 1.0
    assert r["instance"]["f1"] == 1.0 and r["instance"]["mean_iou"] == 1.0


def test_single_label_edge_cases_follow_scikit_learn():
    one = np.zeros((3, 3), int)
    t = table(one, one)
    assert ev.normalized_mutual_info(t) == metrics.normalized_mutual_info_score(
        one.ravel(), one.ravel()) == 1.0
    assert ev.adjusted_rand_index(t) == metrics.adjusted_rand_score(one.ravel(), one.ravel())
    split = np.arange(9).reshape(3, 3) % 2
    t = table(split, one)
    assert ev.normalized_mutual_info(t) == 0.0
    assert ev.adjusted_rand_index(t) == metrics.adjusted_rand_score(one.ravel(),
                                                                     split.ravel())
    assert math.isnan(ev.cohen_kappa(table(one, one)))  # chance agreement is 1


# ---------------------------------------------------------------- scikit-learn oracles


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k_pred,k_truth", [(5, 4), (3, 6), (4, 4)])
def test_class_measures_match_scikit_learn(seed, k_pred, k_truth):
    rng = np.random.default_rng(seed)
    pred, truth = random_maps(rng, k_pred=k_pred, k_truth=k_truth)
    t = lazy_table(pred, truth, chunks=(10, 13))
    y_true, y_pred = truth.ravel(), pred.ravel()
    assert ev.adjusted_rand_index(t) == pytest.approx(
        metrics.adjusted_rand_score(y_true, y_pred), rel=1e-12, abs=1e-12)
    assert ev.normalized_mutual_info(t) == pytest.approx(
        metrics.normalized_mutual_info_score(y_true, y_pred), rel=1e-9, abs=1e-12)
    pairs = ev.match_labels(t)
    mapped = mapped_prediction(y_pred, pairs)
    assert ev.cohen_kappa(t) == pytest.approx(metrics.cohen_kappa_score(y_true, mapped),
                                              rel=1e-12)
    assert ev.overall_accuracy(t) == pytest.approx(metrics.accuracy_score(y_true, mapped))
    conf = ev.measures(t)["class"]["confusion"]
    labels = conf["truth_labels"]
    # columns of matched labels, in class order, are scikit-learn's confusion matrix
    expected = metrics.confusion_matrix(y_true, mapped, labels=labels)
    matched_cols = [conf["pred_labels"].index(p) for p, _ in pairs]
    got = np.zeros_like(expected)
    for (_, q), col in zip(pairs, matched_cols, strict=True):
        got[:, labels.index(q)] = np.asarray(conf["matrix"])[:, col]
    np.testing.assert_array_equal(got, expected)
    assert np.asarray(conf["matrix"]).sum() == pred.size


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_matching_is_the_best_permutation(seed):
    rng = np.random.default_rng(100 + seed)
    pred, truth = random_maps(rng, shape=(20, 20), k_pred=4, k_truth=3, agree=0.4)
    t = table(pred, truth)
    dense = t.dense()
    best = max(sum(dense[i, j] for i, j in enumerate(cols))
               for cols in itertools.permutations(range(dense.shape[1]), dense.shape[0]))
    assert ev.overall_accuracy(t) * pred.size == pytest.approx(best)


def test_ari_is_exact_on_a_large_table():
    # 20000 x 20000 pixels in two halves against four quarters: pair counts near 8e16
    n = 20000 * 20000
    counts = np.array([[n // 4, n // 4, 0, 0], [0, 0, n // 4, n // 4]], dtype=np.int64)
    ari = ev.adjusted_rand_index(counts)
    # Hubert-Arabie with exact rationals
    from fractions import Fraction

    def c2(x):
        return Fraction(x * (x - 1), 2)

    index = sum(c2(int(v)) for v in counts.ravel())
    a = sum(c2(int(v)) for v in counts.sum(1))
    b = sum(c2(int(v)) for v in counts.sum(0))
    expected = a * b / c2(n)
    assert ari == pytest.approx(float((index - expected) / ((a + b) / 2 - expected)),
                                rel=1e-12)


# ---------------------------------------------------------------- region measures


def rand_index_by_pairs(pred, truth):
    p, t = np.ravel(pred), np.ravel(truth)
    agree = total = 0
    for i, j in itertools.combinations(range(p.size), 2):
        agree += (p[i] == p[j]) == (t[i] == t[j])
        total += 1
    return agree / total


def covering_by_definition(pred, truths, ignore=()):
    num = den = 0.0
    p = np.ravel(pred)
    for truth in truths:
        t = np.ravel(truth)
        for r in set(t.tolist()) - set(ignore):
            region = t == r
            best = 0.0
            for q in set(p.tolist()) - set(ignore):
                other = p == q
                best = max(best, (region & other).sum() / (region | other).sum())
            num += region.sum() * best
            den += region.sum()
    return num / den


def entropy_bits(*labels):
    _, counts = np.unique(np.stack([np.ravel(x) for x in labels]), axis=1,
                          return_counts=True)
    prob = counts / counts.sum()
    return float(-(prob * np.log2(prob)).sum())


@pytest.mark.parametrize("seed", range(4))
def test_region_measures_match_their_definitions(seed):
    rng = np.random.default_rng(seed)
    pred, truth = random_maps(rng, shape=(12, 13), k_pred=6, k_truth=4, agree=0.5)
    t = lazy_table(pred, truth, chunks=(5, 4))
    assert ev.probabilistic_rand_index(t) == pytest.approx(rand_index_by_pairs(pred, truth),
                                                           rel=1e-12)
    h_pt = entropy_bits(pred, truth)
    splits, merges = ev.variation_of_information(t, split=True)
    assert splits == pytest.approx(h_pt - entropy_bits(truth))
    assert merges == pytest.approx(h_pt - entropy_bits(pred))
    assert ev.variation_of_information(t) == pytest.approx(sum(sk_voi(truth, pred)))
    np.testing.assert_allclose((splits, merges), sk_voi(truth, pred))
    assert ev.segmentation_covering(t) == pytest.approx(covering_by_definition(pred, [truth]))


def test_several_truths_average_pri_and_voi_and_pool_covering():
    rng = np.random.default_rng(7)
    pred, t1 = random_maps(rng, shape=(9, 11))
    _, t2 = random_maps(rng, shape=(9, 11), k_truth=3)
    tables = [table(pred, t1), table(pred, t2)]
    assert ev.probabilistic_rand_index(tables) == pytest.approx(
        (rand_index_by_pairs(pred, t1) + rand_index_by_pairs(pred, t2)) / 2)
    assert ev.variation_of_information(tables) == pytest.approx(
        (sum(sk_voi(t1, pred)) + sum(sk_voi(t2, pred))) / 2)
    assert ev.segmentation_covering(tables) == pytest.approx(
        covering_by_definition(pred, [t1, t2]))


def test_ignored_truth_pixels_are_left_out_like_scikit_image():
    rng = np.random.default_rng(3)
    pred, truth = random_maps(rng, shape=(30, 30), k_pred=4, k_truth=4)
    truth = truth + 1
    truth[:8] = 0  # unlabelled band
    t = table(pred, truth, ignore=[0])
    keep = truth.ravel() != 0
    y_true, y_pred = truth.ravel()[keep], pred.ravel()[keep]
    assert ev.adjusted_rand_index(t) == pytest.approx(
        metrics.adjusted_rand_score(y_true, y_pred))
    assert ev.normalized_mutual_info(t) == pytest.approx(
        metrics.normalized_mutual_info_score(y_true, y_pred))
    np.testing.assert_allclose(ev.variation_of_information(t, split=True),
                               sk_voi(truth, pred, ignore_labels=[0]))
    assert ev.probabilistic_rand_index(t) == pytest.approx(
        rand_index_by_pairs(y_pred, y_true))
    # covering: true regions without the ignored label, predicted sizes over all pixels
    assert ev.segmentation_covering(t) == pytest.approx(
        covering_by_definition(pred, [truth], ignore=[0]))
    r = ev.measures(t)
    assert r["pixels"]["ignored"] == 8 * 30 and r["pixels"]["compared"] == 22 * 30
    assert 0 not in r["class"]["confusion"]["truth_labels"]


def test_an_ignored_predicted_label_is_never_matched():
    truth = np.array([[1, 1, 2, 2]])
    pred = np.array([[0, 0, 5, 5]])  # 0 = "no label" in the prediction
    t = table(pred, truth, ignore=[0])
    assert ev.match_labels(t) == [(5, 2)]
    assert ev.overall_accuracy(t) == 0.5
    assert ev.measures(t)["class"]["confusion"]["pred_labels"] == [5, 0]
    assert ev.segmentation_covering(t) == pytest.approx(0.5)  # region 1 is not covered
    # as an ordinary label, 0 matches class 1
    assert ev.overall_accuracy(table(pred, truth)) == 1.0


# ---------------------------------------------------------------- instance measures


def squares(shape, boxes):
    out = np.zeros(shape, dtype=np.int32)
    for label, (y0, y1, x0, x1) in boxes.items():
        out[y0:y1, x0:x1] = label
    return out


def instance_by_definition(pred, truth, threshold=0.5):
    ious = []
    for a in set(np.unique(truth).tolist()) - {0}:
        for b in set(np.unique(pred).tolist()) - {0}:
            ma, mb = truth == a, pred == b
            iou = (ma & mb).sum() / (ma | mb).sum()
            if iou > threshold:
                ious.append(iou)
    n_t = len(set(np.unique(truth).tolist()) - {0})
    n_p = len(set(np.unique(pred).tolist()) - {0})
    return 2 * len(ious) / (n_t + n_p), float(np.mean(ious))


def test_instance_scores_by_hand():
    shape = (40, 40)
    truth = squares(shape, {1: (0, 10, 0, 10), 2: (20, 30, 20, 30), 3: (0, 10, 30, 40)})
    pred = squares(shape, {7: (0, 10, 1, 10),     # IoU 90/100 with 1
                           8: (20, 30, 25, 35),   # IoU 50/150 with 2: a miss
                           9: (32, 38, 0, 6)})    # nothing there
    s = ev.instance_scores(table(pred, truth, ignore=[0]))
    assert (s["matched"], s["pred_objects"], s["truth_objects"]) == (1, 3, 3)
    assert s["f1"] == pytest.approx(2 / 6)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 3)
    assert s["mean_iou"] == pytest.approx(0.9)
    f1, miou = instance_by_definition(pred, truth)
    assert (s["f1"], s["mean_iou"]) == pytest.approx((f1, miou))
    # without --ignore 0 the backgrounds are objects too, and match each other
    assert ev.instance_scores(table(pred, truth))["matched"] == 2


def test_iou_of_exactly_one_half_is_not_a_match():
    truth = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 0, 0, 0]])
    s = ev.instance_scores(table(pred, truth, ignore=[0]))
    assert s["matched"] == 0 and s["f1"] == 0.0 and math.isnan(s["mean_iou"])
    with pytest.raises(ValueError, match="iou_threshold"):
        ev.instance_scores(table(pred, truth), iou_threshold=0.3)


@pytest.mark.parametrize("seed", range(3))
def test_instance_scores_on_random_objects(seed):
    rng = np.random.default_rng(seed)
    shape = (60, 60)
    boxes = {}
    for label in range(1, 9):
        y, x = rng.integers(0, 50, 2)
        boxes[label] = (y, y + rng.integers(4, 10), x, x + rng.integers(4, 10))
    truth = squares(shape, boxes)
    moved = {k + 100: (y0 + rng.integers(-2, 3), y1, x0, x1 + rng.integers(-2, 3))
             for k, (y0, y1, x0, x1) in boxes.items()}
    pred = squares(shape, {k: tuple(max(0, v) for v in b) for k, b in moved.items()})
    s = ev.instance_scores(lazy_table(pred, truth, chunks=(17, 23), ignore=[0]))
    f1, miou = instance_by_definition(pred, truth)
    assert s["f1"] == pytest.approx(f1) and s["mean_iou"] == pytest.approx(miou)


# ---------------------------------------------------------------- the streamed table


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cy=st.integers(1, 23), cx=st.integers(1, 23),
    wide=st.booleans(),
)
def test_table_does_not_depend_on_chunking(seed, cy, cx, wide):
    rng = np.random.default_rng(seed)
    k = 3_000_000 if wide else 6  # wide label ranges take the np.unique path
    truth = rng.integers(0, k, size=(23, 29)).astype(np.uint32)
    pred = ((truth.astype(np.int64) * 7 + rng.integers(0, 3, truth.shape)) % k).astype(
        np.int32)
    same_table(lazy_table(pred, truth, chunks=(cy, cx)), table(pred, truth))


def test_every_pixel_is_counted_once():
    rng = np.random.default_rng(0)
    pred, truth = random_maps(rng, shape=(101, 77))
    t = lazy_table(pred, truth, chunks=(16, 16))
    dense = np.zeros((t.truth_labels.size, t.pred_labels.size), int)
    np.add.at(dense, (np.searchsorted(t.truth_labels, truth),
                      np.searchsorted(t.pred_labels, pred)), 1)
    np.testing.assert_array_equal(t.dense(), dense)
    np.testing.assert_array_equal(t.matrix.toarray(), dense)


@pytest.mark.parametrize("dtype,values", [
    ("uint32", [0, 2**32 - 1, 7]),
    ("int32", [-(2**31), 2**31 - 1, 0]),
    ("int64", [-5, 2**31 - 1, 3]),
    ("uint16", [0, 65535, 1]),
    ("int8", [-128, 127, 0]),
    ("bool", [True, False, True]),
])
def test_label_values_round_trip(dtype, values):
    truth = np.array(values * 4, dtype=dtype).reshape(3, 4)
    t = lazy_table(truth[::-1], truth, chunks=(2, 3))
    np.testing.assert_array_equal(t.truth_labels, np.unique(np.array(values, dtype=np.int64)))
    np.testing.assert_array_equal(t.pred_labels, t.truth_labels)


def test_labels_that_do_not_fit_or_are_not_whole_numbers_are_refused():
    ok = np.zeros((4, 4), np.int64)
    with pytest.raises(InputError, match="out of range"):
        lazy_table(ok + 2**40, ok, chunks=2)
    with pytest.raises(InputError, match="not a whole number"):
        lazy_table(np.full((4, 4), 1.5), ok, chunks=2)
    whole = np.full((4, 4), 3.0)
    assert lazy_table(whole, ok, chunks=2).pred_labels.tolist() == [3]


def test_nodata_and_nan_are_left_out_of_everything():
    truth = np.array([[1, 1, 2, 2], [1, 9, 2, 2]], dtype=np.uint8)
    pred = np.array([[5.0, 5.0, np.nan, 6.0], [5.0, 5.0, 6.0, 6.0]])
    t = table(pred, truth, truth_nodata=9)
    assert t.nodata_pixels == 2 and t.n == 6
    assert t.truth_labels.tolist() == [1, 2] and t.pred_labels.tolist() == [5, 6]
    p = xr.DataArray(pred, dims=("y", "x"))
    tr = xr.DataArray(truth, dims=("y", "x")).rio.write_nodata(9)
    r = ev.evaluate_rasters(p, tr, chunks=2)
    assert r["pixels"] == {"total": 8, "nodata": 2, "ignored": 0, "compared": 6}
    assert r["class"]["overall_accuracy"] == 1.0


def test_contingency_is_lazy():
    class Counter(dask.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.tasks = 0

        def _posttask(self, key, result, dsk, state, id):
            self.tasks += 1

    rng = np.random.default_rng(0)
    pred, truth = random_maps(rng, shape=(40, 40))
    with Counter() as counter:
        lazy = ev.contingency(pred, truth, chunks=16)
        assert counter.tasks == 0
        assert isinstance(lazy, Delayed)
        t = lazy.compute()
    assert counter.tasks > 9
    same_table(t, table(pred, truth))


def test_truth_is_rechunked_like_the_prediction():
    rng = np.random.default_rng(1)
    pred, truth = random_maps(rng, shape=(50, 60))
    p = xr.DataArray(da.from_array(pred, chunks=(20, 25)), dims=("y", "x"))
    t = xr.DataArray(da.from_array(truth, chunks=(7, 60)), dims=("y", "x"))
    same_table(ev.contingency(p, t).compute(), table(pred, truth))


def test_dense_table_for_known_labels_still_works():
    rng = np.random.default_rng(2)
    pred, truth = random_maps(rng, shape=(30, 30))
    p = xr.DataArray(da.from_array(pred, chunks=8), dims=("y", "x"))
    t = xr.DataArray(da.from_array(truth, chunks=8), dims=("y", "x"))
    dense = ev.contingency_table(p, t, np.arange(5), np.arange(4)).compute()
    np.testing.assert_array_equal(dense, table(pred, truth).dense().T)
    assert ev.adjusted_rand_index(dense) == pytest.approx(
        metrics.adjusted_rand_score(truth.ravel(), pred.ravel()))


def test_many_labels_skip_only_the_matching_measures():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 400, size=(60, 60))
    r = ev.measures(table(truth, truth), max_classes=256)
    assert math.isnan(r["class"]["overall_accuracy"]) and r["class"]["confusion"] is None
    assert "at most 256" in r["class"]["note"]
    assert r["class"]["adjusted_rand_index"] == 1.0
    assert r["region"]["segmentation_covering"] == 1.0


def test_rounded_gives_four_decimals_and_json_nulls():
    assert ev.rounded({"a": [1 / 3, math.nan], "b": 2, "c": np.float64(2 / 3)}) == {
        "a": [0.3333, None], "b": 2, "c": 0.6667}


# ---------------------------------------------------------------- rasters and grids


def test_evaluate_rasters_on_files(tmp_path):
    rng = np.random.default_rng(5)
    pred, truth = random_maps(rng, shape=(70, 90))
    truth[:5] = 255
    pp = write_raster(tmp_path / "pred.tif", pred.astype(np.uint8), tile=32)
    tp = write_raster(tmp_path / "truth.tif", truth.astype(np.uint8), nodata=255, tile=16)
    r = ev.evaluate_rasters(pp, tp)
    keep = truth.ravel() != 255
    assert r["pred"] == str(pp) and r["truth"] == str(tp)
    assert r["pixels"]["nodata"] == 5 * 90
    assert r["class"]["adjusted_rand_index"] == pytest.approx(
        metrics.adjusted_rand_score(truth.ravel()[keep], pred.ravel()[keep]))


def test_plain_images_and_a_georeferenced_raster_compare_by_pixel(tmp_path):
    labels = np.repeat(np.arange(4, dtype=np.uint8), 16).reshape(8, 8) * 60
    png = write_raster(tmp_path / "truth.png", labels, crs=None, driver="PNG", tile=None)
    tif = write_raster(tmp_path / "pred.tif", labels // 60, tile=None)
    r = ev.evaluate_rasters(tif, png)
    assert r["class"]["overall_accuracy"] == 1.0


@pytest.mark.parametrize("what", ["shape", "crs", "transform"])
def test_different_grids_are_refused(tmp_path, what):
    from rasterio.transform import from_origin

    labels = np.zeros((32, 32), np.uint8)
    a = write_raster(tmp_path / "a.tif", labels)
    other = {
        "shape": dict(data=np.zeros((32, 31), np.uint8)),
        "crs": dict(data=labels, crs="EPSG:32632"),
        "transform": dict(data=labels, transform=from_origin(300030.0, 4000000.0, 30, 30)),
    }[what]
    b = write_raster(tmp_path / "b.tif", other.pop("data"), **other)
    with pytest.raises(InputError, match="same grid") as err:
        ev.evaluate_rasters(a, b)
    assert str(b) in str(err.value)


def test_multiband_and_missing_inputs_are_refused(tmp_path):
    rgb = write_raster(tmp_path / "rgb.tif", np.zeros((3, 16, 16), np.uint8))
    one = write_raster(tmp_path / "one.tif", np.zeros((16, 16), np.uint8))
    with pytest.raises(InputError, match="3 bands; expected a single-band"):
        ev.evaluate_rasters(rgb, one)
    with pytest.raises(InputError, match="no such file"):
        ev.evaluate_rasters(one, tmp_path / "missing.tif")


def test_no_pixel_valid_in_both_is_an_input_error(tmp_path):
    a = write_raster(tmp_path / "a.tif", np.full((16, 16), 3, np.uint8), nodata=3)
    b = write_raster(tmp_path / "b.tif", np.zeros((16, 16), np.uint8))
    with pytest.raises(InputError, match="no pixel is valid"):
        ev.evaluate_rasters(a, b)


def test_labels_from_masks(tmp_path):
    m1 = np.zeros((6, 6), np.uint8)
    m1[:3, :3] = 255
    m2 = np.zeros((6, 6), np.uint8)
    m2[2:, 2:] = 255
    out = ev.labels_from_masks([m1, m2])
    assert out.dtype == np.int32
    assert out[0, 0] == 1 and out[2, 2] == 2 and out[5, 5] == 2 and out[0, 5] == 0
    folder = tmp_path / "masks"
    folder.mkdir()
    write_raster(folder / "a.png", m1, crs=None, driver="PNG", tile=None)
    write_raster(folder / "b.png", m2, crs=None, driver="PNG", tile=None)
    np.testing.assert_array_equal(ev.labels_from_masks(folder), out)
    with pytest.raises(InputError, match="differs from the first mask"):
        ev.labels_from_masks([m1, np.zeros((5, 5))])


NUCLEI = SHARED_DATA / "nuclei" / "stage1_train"


@pytest.mark.skipif(not NUCLEI.is_dir(), reason="shared nuclei data not present")
def test_nuclei_masks_against_themselves_and_a_thresholded_image():
    sample = sorted(NUCLEI.iterdir())[0]
    truth = ev.labels_from_masks(sample / "masks")
    t = table(truth, truth, ignore=[0])
    s = ev.instance_scores(t)
    assert s["f1"] == 1.0 and s["truth_objects"] == len(list((sample / "masks").iterdir()))
    from scipy import ndimage

    merged, _ = ndimage.label(truth > 0)  # touching nuclei merge: recall drops
    s = ev.instance_scores(table(merged, truth, ignore=[0]))
    assert 0 < s["recall"] <= 1.0


# ---------------------------------------------------------------- figures


@pytest.fixture
def agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_label_rgba_uses_the_label_raster_colours(agg, tmp_path):
    from pipeline.io import palette

    labels = np.array([[0, 1, 2], [2, 255, 0]], dtype=np.uint8)
    rgba = ev.label_rgba(labels, nodata=255)
    colours = palette(3)
    assert tuple(rgba[0, 1]) == colours[1] and tuple(rgba[1, 0]) == colours[2]
    assert rgba[1, 1, 3] == 0  # nodata transparent
    # a raster's own colour table
    path = write_raster(tmp_path / "l.tif", labels, nodata=255)
    import rasterio

    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, {0: (10, 20, 30, 255), 1: (1, 2, 3, 255), 2: (4, 5, 6, 255),
                              255: (0, 0, 0, 0)})
    table_ = ev.colour_table(path)
    assert table_[0] == (10, 20, 30, 255) and table_[255] == (0, 0, 0, 0)
    assert tuple(ev.label_rgba(labels, table_)[0, 0]) == (10, 20, 30, 255)


def test_figures_draw_and_refuse_lazy_arrays(agg):
    labels = xr.DataArray(np.repeat(np.arange(4), 4).reshape(4, 4), dims=("y", "x"))
    image = np.random.default_rng(0).integers(0, 255, (3, 4, 4)).astype(np.uint8)
    ax = ev.show_labels(labels, title="k = 4")
    assert ax.get_title() == "k = 4"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2", "3"]
    fig = ev.comparison_figure(image, {"a": labels.values, "b": labels.values[::-1]})
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "original"
    shown = ev.show_image(image[:1]).get_images()[0].get_array()
    assert shown.shape == (4, 4, 4)
    with pytest.raises(TypeError, match="plots need the pixels"):
        ev.show_labels(labels.chunk(2))
    r = ev.measures(table(labels.values, labels.values // 2))
    ax = ev.plot_confusion(r)
    np.testing.assert_allclose(ax.get_images()[0].get_array().sum(axis=1), 1.0)


def test_class_instances_keeps_nodata_apart_from_the_background():
    labels = xr.DataArray(np.array([[1, 1, 0, 255], [0, 1, 1, 255]], np.uint8),
                          dims=("y", "x")).rio.write_nodata(255)
    segments = xr.DataArray(np.array([[1, 1, 2, 0], [3, 4, 4, 0]], np.uint32),
                            dims=("y", "x")).rio.write_nodata(0).chunk(1)
    out = ev.class_instances(segments, labels, 1)
    assert out.chunks is not None  # lazy
    nd = np.iinfo(np.uint32).max
    np.testing.assert_array_equal(out.values, [[1, 1, 0, nd], [0, 4, 4, nd]])
    assert out.rio.nodata == nd
    truth = np.array([[5, 5, 0, 0], [0, 0, 6, 6]])
    r = ev.evaluate_rasters(out, truth, ignore=[0])
    assert r["pixels"]["nodata"] == 2
    s = r["instance"]
    assert (s["matched"], s["pred_objects"], s["truth_objects"]) == (1, 2, 2)


def test_summary_is_a_flat_rounded_row():
    truth = np.array([[0, 0, 0, 1, 1, 1]])
    pred = np.array([[0, 0, 1, 1, 2, 2]])
    r = ev.measures(table(pred, truth))
    row = ev.summary(r)
    assert list(row) == ["overall accuracy", "Cohen's kappa", "NMI", "ARI", "PRI",
                         "VoI (bits)", "covering", "instance F1", "mean IoU"]
    assert row["ARI"] == 0.2424 and row["Cohen's kappa"] == 0.5
    assert ev.summary(r, decimals=None)["ARI"] == r["class"]["adjusted_rand_index"]
    one = np.zeros((2, 2), int)
    assert ev.summary(ev.measures(table(one, one)))["Cohen's kappa"] is None


def test_no_compared_pixel_gives_nan_and_a_user_error():
    pred = np.array([[1, 2], [3, 4]])
    truth = np.zeros((2, 2), int)
    r = ev.measures(table(pred, truth, ignore=[0]))
    assert r["pixels"]["compared"] == 0
    for section, key in (("class", "adjusted_rand_index"), ("class", "normalized_mutual_info"),
                         ("region", "probabilistic_rand_index"),
                         ("region", "variation_of_information")):
        assert math.isnan(r[section][key]), key
    with pytest.raises(InputError, match="every valid pixel has an ignored truth label"):
        ev.evaluate_rasters(pred, truth, ignore=[0])
