from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.synthetic import make_scene

os.environ.setdefault("GDAL_CACHEMAX", "64")
# the runs of the suite compile their kernels in their own processes: a child per kind
# of run would cost seconds each; tests/test_warmup.py turns it on where it is tested
os.environ["TILESEG_WARMUP"] = "0"


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> object:
    """A 320 x 320 x 4 uint16 scene with 5 well-separated classes, 64-pixel tiles."""
    d = tmp_path_factory.mktemp("scene")
    return make_scene(d / "scene.tif", size=320, bands=4, n_classes=5, cell=48, border=12,
                      tile=64, truth_path=d / "truth.tif", seed=3)


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML config into tmp_path and return its path."""

    def write(data: dict, name: str = "config.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data))
        return p

    return write
