from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import RunConfig, apply_overrides, load_config, parse_config
from pipeline.errors import ConfigError


def test_defaults_documented_in_default_yaml():
    cfg = load_config("configs/default.yaml")
    minimal = parse_config({"input": "scene.tif", "output": "out/"})
    assert cfg.to_dict() == minimal.to_dict()


def test_minimal_config_has_documented_defaults():
    cfg = parse_config({"input": "a.tif", "output": "out"})
    assert cfg.cluster.k == 8 and cfg.cluster.seed == 0
    assert cfg.cluster.sample_size == 1_000_000
    assert cfg.formats is None  # by input kind (pipeline.stages.DEFAULT_FORMATS)
    assert cfg.input_level == 0 and cfg.mask is None
    assert cfg.compute.scheduler == "threads"
    assert cfg.features[0].describe() == {"bands": {"scale": True, "bands": None}}


def test_unknown_key_is_named_with_a_suggestion():
    match = r"c\.yaml: unknown key 'clusterr'.*did you mean 'cluster'"
    with pytest.raises(ConfigError, match=match):
        parse_config({"input": "a", "output": "b", "clusterr": {}}, "c.yaml")


def test_unknown_nested_key():
    with pytest.raises(ConfigError, match=r"unknown key 'cluster\.kk'.*did you mean 'k'"):
        parse_config({"input": "a", "output": "b", "cluster": {"kk": 3}})


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("cluster.k=1", r"key 'cluster\.k'.*greater than or equal to 2.*got 1"),
        ("chunks=8", r"key 'chunks'.*16"),
        ("formats=[png]", r"key 'formats\.0'"),
        ("compute.scheduler=gpu", r"compute\.scheduler.*threads, processes"),
        ("features=[colours]", r"unknown feature 'colours'"),
        ("features=[{bands: {bandz: [1]}}]", r"bandz"),
        ("compute.memory_limit=lots", r"compute\.memory_limit.*4GiB"),
    ],
)
def test_bad_values_name_the_key(override, match):
    data = apply_overrides({"input": "a", "output": "b"}, [override])
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_overrides_are_yaml_and_do_not_mutate():
    base = {"input": "a", "output": "b", "cluster": {"k": 4}}
    new = apply_overrides(base, ["cluster.k=5", "cluster.seed=7", "formats=[cog]"])
    assert base["cluster"]["k"] == 4
    cfg = parse_config(new)
    assert (cfg.cluster.k, cfg.cluster.seed, cfg.formats) == (5, 7, ["cog"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["cluster.k"])


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing key 'output'"):
        parse_config({"input": "a"})


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(lst)


def test_config_token_is_stable():
    from dask.base import tokenize

    a = parse_config({"input": "a", "output": "b", "cluster": {"k": 3}})
    b = parse_config({"input": "a", "output": "b", "cluster": {"k": 3}})
    c = parse_config({"input": "a", "output": "b", "cluster": {"k": 4}})
    assert tokenize(a) == tokenize(b) != tokenize(c)
    assert isinstance(a, RunConfig)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_example_configs_parse(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.output and cfg.features


def test_photo_config_takes_the_checked_overrides():
    for n in (2, 64):
        cfg = load_config(CONFIGS / "photo.yaml", [f"postprocess.merge.regions={n}",
                                                 "input=x.jpg", "output=o"])
        assert cfg.postprocess.merge is not None and cfg.postprocess.merge.regions == n


def test_volume_keys_validated():
    cfg = parse_config({"input": "a.nii", "output": "o", "input_level": 2, "mask": "otsu",
                        "postprocess": {"segments": {"connectivity": 26},
                                        "min_size": {"volume": 5.0}},
                        "formats": ["nifti", "ome-zarr"]})
    assert cfg.postprocess.segments.for_ndim(3) == 26
    assert cfg.postprocess.min_size.volume == 5.0
    with pytest.raises(ConfigError, match="connectivity: 26 is not defined on an image"):
        cfg.postprocess.segments.for_ndim(2)
    default = parse_config({"input": "a", "output": "o", "postprocess": {"segments": True}})
    assert (default.postprocess.segments.for_ndim(2),
            default.postprocess.segments.for_ndim(3)) == (8, 26)
    with pytest.raises(ConfigError, match="input_level"):
        parse_config({"input": "a", "output": "o", "input_level": -1})
    with pytest.raises(ConfigError, match="formats"):
        parse_config({"input": "a", "output": "o", "formats": ["nii"]})
