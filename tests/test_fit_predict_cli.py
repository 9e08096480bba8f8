"""Fit once, apply many: `tileseg fit`, `tileseg predict`, and what they write."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.synthetic import make_scene


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def config(tmp_path, scene):
    def make(name="c.yaml", **over):
        cfg = {"input": str(scene.path), "output": str(tmp_path / "out"), "chunks": 64,
               "formats": ["cog"], "cluster": {"k": 5, "sample_size": 4000}}
        cfg.update(over)
        p = tmp_path / name
        p.write_text(yaml.safe_dump(cfg))
        return p

    return make


def _labels(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.colormap(1)


@pytest.mark.parametrize("method", ["kmeans", "dbscan"])
def test_predict_gives_the_labels_of_run_for_any_chunking(method, tmp_path, config):
    cluster = {"method": method, "sample_size": 4000}
    ran = _invoke("run", config(cluster=cluster, output=str(tmp_path / "ran")), "-q")
    assert ran.exit_code == 0, ran.output
    fitted = _invoke("fit", config(cluster=cluster), "-q")
    assert fitted.exit_code == 0, fitted.output
    out = tmp_path / "out"
    expected = {"model.json"} | ({"model.npz"} if method == "dbscan" else set())
    assert {p.name for p in out.iterdir()} == expected
    # the model's own output directory is written into without --overwrite
    res = _invoke("predict", config(cluster=cluster), "--model", out / "model.json",
                  "--set", "chunks=100", "-q")
    assert res.exit_code == 0, res.output
    ref, ref_cmap = _labels(tmp_path / "ran" / "labels.tif")
    got, got_cmap = _labels(out / "labels.tif")
    np.testing.assert_array_equal(got, ref)
    assert got_cmap == ref_cmap
    a = json.loads((tmp_path / "ran" / "model.json").read_text())
    b = json.loads((out / "model.json").read_text())
    assert a["model" if method == "dbscan" else "centroids"] == \
        b["model" if method == "dbscan" else "centroids"]
    report = json.loads((out / "report.json").read_text())
    assert report["model_source"] == "loaded" and report["method"] == method
    if method == "dbscan":
        assert report["classes"][-1]["name"] == "noise"
        assert report["classes"][-1]["centroid"] is None
        assert report["noise_label"] == report["k"] - 1
        assert (out / "model.npz").exists()


def test_class_ids_mean_the_same_on_another_scene(tmp_path, config):
    assert _invoke("fit", config(), "-q").exit_code == 0
    other = make_scene(tmp_path / "other.tif", size=200, bands=4, n_classes=5, cell=40,
                       border=8, tile=64, truth_path=tmp_path / "other_truth.tif", seed=3)
    res = _invoke("predict", config("o.yaml", input=str(other.path),
                                    output=str(tmp_path / "o")),
                  "--model", tmp_path / "out" / "model.json", "-q")
    assert res.exit_code == 0, res.output
    got, _ = _labels(tmp_path / "o" / "labels.tif")
    with rasterio.open(other.truth_path) as ds:
        truth = ds.read(1)
    # the same seed gives the same class signatures: each true class gets the label
    # that the model gives its signature, whatever the scene
    from pipeline.cluster import load_model
    from pipeline.synthetic import signatures

    model = load_model(tmp_path / "out" / "model.json")
    sig = (signatures(5, 4, seed=3) * 10000).astype(np.float32)
    expected = model.predict_block(sig.T[:, None, :])[0]
    ok = truth != 255
    for c in np.unique(truth[ok]):
        values, counts = np.unique(got[ok & (truth == c)], return_counts=True)
        assert values[np.argmax(counts)] == expected[c] and counts.max() > 0.99 * counts.sum()


def test_mismatched_scenes_and_models_are_user_errors(tmp_path, config):
    assert _invoke("fit", config(), "-q").exit_code == 0
    model = tmp_path / "out" / "model.json"
    three = make_scene(tmp_path / "three.tif", size=96, bands=3, n_classes=3, cell=32,
                       border=4, tile=32)
    cases = [
        (config("a.yaml", input=str(three.path), output=str(tmp_path / "a")), "do not match"),
        (config("b.yaml", features=[{"bands": {"bands": [1, 2, 3, 4], "scale": False}}],
                output=str(tmp_path / "b")), "expected the model's features in the config"),
        (config("c.yaml", features=[{"bands": [1, 2]}], output=str(tmp_path / "c")),
         "expected the model's features in the config"),
    ]
    for cfg, match in cases:
        res = _invoke("predict", cfg, "--model", model)
        assert res.exit_code == 2, res.output
        assert match in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / n).exists() for n in "abc")
    res = _invoke("predict", config(), "--model", tmp_path / "missing.json")
    assert res.exit_code == 2 and "cannot read the model" in res.stderr
    res = _invoke("predict", config(), "--model", model, "--k", "3")
    assert res.exit_code == 2 and "cannot be cut" in res.stderr
    res = _invoke("fit", config())
    assert res.exit_code == 2 and "a model exists; pass --overwrite" in res.stderr


def test_hierarchical_predict_at_another_k(tmp_path, config):
    cluster = {"method": "hierarchical", "k": 5, "n_micro": 48, "sample_size": 4000}
    assert _invoke("fit", config(cluster=cluster), "-q").exit_code == 0
    model = tmp_path / "out" / "model.json"
    res = _invoke("predict", config(cluster=cluster, output=str(tmp_path / "k3")),
                  "--model", model, "--k", "3", "-q")
    assert res.exit_code == 0, res.output
    got, _ = _labels(tmp_path / "k3" / "labels.tif")
    assert sorted(np.unique(got)) == [0, 1, 2, 255]
    saved = json.loads((tmp_path / "k3" / "model.json").read_text())
    assert saved["k"] == 3 and len(saved["model"]["linkage_matrix"]) == 47
    res = _invoke("predict", config(cluster=cluster, output=str(tmp_path / "k99")),
                  "--model", model, "--k", "99")
    assert res.exit_code == 2 and "2 <= k <= 48" in res.stderr


def test_gmm_confidence_and_comparison(tmp_path, config):
    cfg = config(cluster={"method": "gmm", "k": 5, "sample_size": 4000,
                          "confidence": True},
                 report={"comparison": [3, 5, 7], "comparison_size": 128})
    res = _invoke("run", cfg, "-q")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    with rasterio.open(out / "confidence.tif") as ds:
        conf = ds.read(1)
        assert ds.nodata == 255
    labels, cmap = _labels(out / "labels.tif")
    np.testing.assert_array_equal(conf == 255, labels == 255)
    assert conf[conf != 255].max() <= 100
    png = out / "comparison.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report.json").read_text())
    assert {"confidence.tif", "comparison.png"} <= set(report["outputs"])
    # the confidence band needs a gmm model
    res = _invoke("predict", config(output=str(tmp_path / "x"),
                                    cluster={"method": "gmm", "confidence": True}),
                  "--model", out / "model.json", "-q")
    assert res.exit_code == 0, res.output
    assert _invoke("fit", config("k.yaml", output=str(tmp_path / "km")), "-q").exit_code == 0
    res = _invoke("predict", config(output=str(tmp_path / "y"),
                                    cluster={"method": "gmm", "confidence": True}),
                  "--model", tmp_path / "km" / "model.json")
    assert res.exit_code == 2 and "needs a gmm model" in res.stderr


def test_comparison_for_a_method_that_finds_k_uses_kmeans(tmp_path, config):
    cfg = config(cluster={"method": "meanshift", "sample_size": 3000},
                 report={"comparison": [2, 4], "comparison_size": 96})
    res = _invoke("fit", cfg, "-q")
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.json", "comparison.png"}


def test_config_errors_for_the_new_keys(tmp_path, config):
    for cluster, match in [({"method": "spectral"}, "unknown clustering method"),
                           ({"confidence": True}, "needs method gmm"),
                           ({"k": "many"}, "or auto"),
                           ({"linkage": "single"}, "cluster.linkage")]:
        res = _invoke("fit", config(cluster=cluster))
        assert res.exit_code == 2 and match in res.stderr, res.stderr


def test_a_shared_config_switches_to_a_method_that_finds_k(tmp_path, config):
    res = _invoke("fit", config(), "--set", "cluster.method=hdbscan", "-q")
    assert res.exit_code == 0, res.output
    res = _invoke("fit", config(), "--set", "cluster.method=meanshift", "--overwrite")
    assert res.exit_code == 0, res.output
    assert "cluster.k=5 is ignored: method 'meanshift'" in res.stderr
    assert json.loads((tmp_path / "out" / "model.json").read_text())["method"] == "meanshift"
    assert not (tmp_path / "out" / "model.npz").exists()  # the hdbscan arrays are gone
