"""A corrupt tile of the input: named by window (exit 2), or read as nodata."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.testing import write_raster

BAD_ROWS, BAD_COLS = (64, 128), (128, 192)  # tile x=2, y=1 of 64 px tiles


def _scene(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256]
    base = ((y // 64 + x // 64) % 3).astype(np.uint16) * 1000 + 100
    data = np.stack([base + rng.integers(0, 50, base.shape, dtype=np.uint16)
                     for _ in range(3)])
    return write_raster(path, data, nodata=0, tile=64)


def _corrupt(path: Path) -> None:
    """Overwrite the compressed bytes of the tile at BAD_ROWS, BAD_COLS with garbage."""
    with rasterio.open(path) as ds:
        bx, by = BAD_COLS[0] // 64, BAD_ROWS[0] // 64
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff\x00garbage" * (size // 9) + b"\xff" * (size % 9))


def _config(tmp_path: Path, image: Path, name: str, **over: object) -> Path:
    cfg = {"input": str(image), "output": str(tmp_path / name), "chunks": 64,
           "cluster": {"method": "kmeans", "k": 3, "seed": 0}, "formats": ["cog"], **over}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def corrupt(tmp_path):
    path = _scene(tmp_path / "scene.tif")
    _corrupt(path)
    return path


def test_corrupt_tile_fails_naming_the_window(tmp_path, corrupt):
    res = CliRunner().invoke(main, ["run", str(_config(tmp_path, corrupt, "out")), "-q"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    assert str(corrupt) in lines[0]
    # the window of the chunk read: a label chunk (64 px) or a sample cell (512 px)
    found = re.search(r"cannot read pixels rows (\d+)-(\d+), cols (\d+)-(\d+) \(", lines[0])
    assert found, lines[0]
    r0, r1, c0, c1 = map(int, found.groups())
    assert r0 <= BAD_ROWS[0] and BAD_ROWS[1] <= r1 and c0 <= BAD_COLS[0] and BAD_COLS[1] <= c1
    assert "previous exception" not in lines[0]
    assert "expected a complete, readable raster" in lines[0]
    assert not (tmp_path / "out").exists()


def test_corrupt_tile_as_nodata(tmp_path, corrupt):
    intact = _scene(tmp_path / "intact.tif")
    res = CliRunner().invoke(main, ["run", str(_config(tmp_path, corrupt, "out",
                                                       input_errors="nodata")), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (fault,) = report["input_errors"]
    assert fault["rows"] == list(BAD_ROWS) and fault["cols"] == list(BAD_COLS)
    assert fault["error"]
    res = CliRunner().invoke(main, ["run", str(_config(tmp_path, intact, "ref")), "-q"])
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "out" / "labels.tif") as ds:
        got, nodata = ds.read(1), ds.nodata
    with rasterio.open(tmp_path / "ref" / "labels.tif") as ds:
        want = ds.read(1)
    bad = np.zeros(got.shape, bool)
    bad[slice(*BAD_ROWS), slice(*BAD_COLS)] = True
    assert (got[bad] == nodata).all()
    assert (got[~bad] != nodata).all()
    # the same classes elsewhere, up to their numbering (the sample may differ)
    pairs = np.unique(np.stack([got[~bad], want[~bad]]), axis=1)
    assert pairs.shape[1] == 3


def test_nodata_needs_threads_and_a_nodata_value(tmp_path):
    with pytest.raises(ConfigError, match="input_errors: nodata"):
        parse_config({"input": "a.tif", "output": "o", "input_errors": "nodata",
                      "compute": {"scheduler": "processes"}})
    image = write_raster(tmp_path / "int.tif", np.ones((1, 64, 64), np.uint8))
    cfg = parse_config({"input": str(image), "output": str(tmp_path / "o"),
                        "input_errors": "nodata"})
    from pipeline.stages import open_input

    with pytest.raises(ConfigError, match="needs a nodata value"):
        open_input(cfg, summarise=False)
