"""Smoke test of the benchmark harness (bench/): it runs and prints its table.

No benchmark runs here: the scene is 256 x 256, one round, the floor and tileseg only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.synthetic import make_scene

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TILESEG_BENCH_READ_LOG", None)
    return env


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_run_bench_prints_the_table(tmp_path):
    scene = tmp_path / "scene.tif"
    make_scene(scene, size=256, bands=4, tile=256, border=8)
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run_bench.py"), "--scene", str(scene),
         "--approaches", "floor,tileseg,tileseg-cog,tileseg-post", "--repeat", "1",
         "--no-warmup", "--no-read-count",
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=170, env=_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "| approach | MPix | wall s | MPix/s | CPU s | peak RSS MiB | x floor |" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith(("| floor ", "| tileseg"))}
    assert set(rows) == {"floor", "tileseg", "tileseg-cog", "tileseg-post"}
    assert "| floor | 0.1 |" in rows["floor"] and "1.00" in rows["floor"]
    saved = json.loads(out.read_text())
    by = {r["approach"]: r for r in saved["summary"]}
    assert by["floor"]["runs"] == 1 and by["tileseg"]["runs"] == 1
    assert by["tileseg"]["peak_rss_mib"] > 0 and by["tileseg"]["wall_s"] > 0
    assert by["tileseg"]["timings_s"]["total"] > 0
    # the post-processing variant runs the segments stage, and its ratio is printed
    assert by["tileseg-post"]["timings_s"]["segments"] > 0
    assert "- tileseg-post / tileseg-cog: post-processing on / K-means only" in text
    assert (tmp_path / "work").is_dir()


def test_read_hook_logs_rasterio_reads(tmp_path):
    scene = tmp_path / "scene.tif"
    make_scene(scene, size=64, bands=3, tile=32, border=2)
    log = tmp_path / "reads.tsv"
    env = _env()
    env["TILESEG_BENCH_READ_LOG"] = str(log)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(BENCH / "_readhook")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = (
        "import rasterio\n"
        f"with rasterio.open({str(scene)!r}) as ds:\n"
        "    ds.read(window=((0, 32), (32, 64)))\n"
        "    ds.read(2)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    lines = [ln.split("\t") for ln in log.read_text().splitlines()]
    assert [ln[1:] for ln in lines] == [
        ["read", str(scene), "3", "0", "32", "32", "32"],
        ["read", str(scene), "1", "0", "0", "64", "64"],
    ]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fixed_cost_prints_its_table(tmp_path):
    out = tmp_path / "fixed.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "fixed_cost.py"), "--repeat", "1",
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=170, env=_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| tileseg run (256^2, [cog]) (process) |" in proc.stdout
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"tileseg --help", "tileseg run (256^2, [cog])",
                         "import pipeline.runner"}
    assert all(len(v) == 1 and v[0] > 0 for v in runs.values())
    assert (tmp_path / "work" / "out" / "labels.tif").exists()
