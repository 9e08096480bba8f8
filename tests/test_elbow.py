"""Choosing k: knee detection, the scores, `cluster.k: auto` and `tileseg elbow`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import pipeline
from pipeline.cli import main
from pipeline.cli._elbow import parse_ks
from pipeline.cluster import draw_sample, elbow_on, knee_point
from pipeline.config import parse_config
from pipeline.runner import run


@pytest.mark.parametrize(
    ("y", "decreasing", "knee"),
    [
        ([100, 50, 10, 9, 8, 7, 6], True, 2),        # a clear elbow
        ([10, 9, 8, 7, 6], True, None),               # straight: no knee
        ([10, 9.9, 9.7, 5, 1], True, None),           # concave: no knee
        ([1, 1.1, 1.2, 1.3, 10, 20], False, 3),       # sorted k-distances
        ([3, 3, 3], True, None),                      # flat
        ([5, 1], True, None),                         # too short
    ],
)
def test_knee_point(y, decreasing, knee):
    assert knee_point(range(len(y)), y, decreasing=decreasing) == knee


def test_parse_ks():
    import click

    assert parse_ks("2..5") == [2, 3, 4, 5]
    assert parse_ks("8, 2,4") == [2, 4, 8]
    for bad in ("1..4", "2-5", "a", ""):
        with pytest.raises(click.BadParameter):
            parse_ks(bad)


@pytest.fixture(scope="module")
def scores(scene):
    feats = pipeline.compute_features(pipeline.open_image(scene.path, chunks=96))
    return elbow_on(draw_sample(feats, 4000, 0), range(2, 9), n_init=1)


def test_elbow_finds_the_five_classes(scores):
    assert scores.knee == 5 and scores.k == 5 and scores.chosen_by == "knee"
    best = scores.ks
    assert best[int(np.argmax(scores.silhouette))] == 5
    assert best[int(np.argmax(scores.calinski_harabasz))] == 5
    assert best[int(np.argmin(scores.davies_bouldin))] == 5
    assert all(a > b for a, b in zip(scores.wcss, scores.wcss[1:], strict=False))
    d = json.loads(json.dumps(scores.to_dict()))
    assert [s["k"] for s in d["scores"]] == list(range(2, 9)) and d["k"] == 5
    assert d["sample_size"] == 4000 and d["silhouette_size"] == 4000
    # its models are ordinary K-means models
    assert scores.models[5].k == 5 and scores.models[5].inertia == scores.wcss[3]


def test_elbow_does_not_depend_on_chunking(scene, scores):
    feats = pipeline.compute_features(pipeline.open_image(scene.path, chunks=50))
    other = elbow_on(draw_sample(feats, 4000, 0), range(2, 9), n_init=1)
    assert other.to_dict() == scores.to_dict()


def test_k_auto_in_a_run(tmp_path, scene):
    cfg = parse_config({"input": str(scene.path), "output": str(tmp_path / "out"),
                        "cluster": {"method": "gmm", "k": "auto", "k_range": [3, 7],
                                    "sample_size": 4000, "n_init": 1}})
    res = run(cfg)
    assert res.model.k == 5 and res.model.method == "gmm"
    names = sorted(p.name for p in res.output.iterdir())
    assert {"elbow.json", "elbow.png", "model.json"} <= set(names)
    assert res.report["elbow"]["k"] == 5 and res.report["k"] == 5
    assert (res.output / "elbow.png").read_bytes()[:4] == b"\x89PNG"


def test_elbow_cli(tmp_path, scene):
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"input": str(scene.path), "output": str(out),
                                   "cluster": {"n_init": 1}}))
    res = CliRunner().invoke(main, ["elbow", str(cfg), "--k", "2..7", "--sample-size",
                                    "4000", "--comparison", "3,5"])
    assert res.exit_code == 0, res.output
    assert "chosen k = 5 (knee)" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png", "elbow.json",
                                                      "elbow.png"]
    d = json.loads((out / "elbow.json").read_text())
    assert d["k"] == 5 and len(d["scores"]) == 6
    again = CliRunner().invoke(main, ["elbow", str(cfg), "--k", "2..4"])
    assert again.exit_code == 2 and "pass --overwrite" in again.stderr
    bad = CliRunner().invoke(main, ["elbow", str(cfg), "--k", "1..4"])
    assert bad.exit_code == 2 and "k >= 2" in bad.stderr
    # a run into the elbow's output keeps the figures
    run_res = CliRunner().invoke(main, ["run", str(cfg), "-q", "--set", "cluster.k=5",
                                        "--set", "cluster.sample_size=4000"])
    assert run_res.exit_code == 0, run_res.output
    assert {"elbow.json", "elbow.png", "comparison.png", "labels.tif"} <= {
        p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert "elbow.json" in report["outputs"]
