"""Object storage in and out, against a real S3 server on loopback (moto, a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from _s3_server import SECRET, clean_env, moto_server, use_s3
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.errors import OutputError, OutputExistsError
from pipeline.io._remote import RemoteOutput, is_url, object_storage_env
from pipeline.runner import run

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")

BUCKET = "bucket"


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def s3(endpoint, scene):
    """A boto3 client of the server, with the scene uploaded as s3://bucket/scene.tif."""
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k",
                          aws_secret_access_key="s", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(scene.path), BUCKET, "scene.tif")
    return client


@pytest.fixture
def aws(monkeypatch, endpoint, tmp_path):
    """Only the standard AWS variables set; runs in tmp_path (the staging lands there)."""
    use_s3(monkeypatch, endpoint)
    monkeypatch.chdir(tmp_path)
    return endpoint


def _config(input_: str, output: str, **extra: object):
    return parse_config({"input": input_, "output": output, "features": ["bands"],
                         "cluster": {"method": "kmeans", "k": 5, "seed": 1},
                         "formats": ["cog", "zarr"], "chunks": 128, **extra})


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _labels_tif(s3, key: str, tmp_path: Path) -> np.ndarray:
    local = tmp_path / key.replace("/", "_")
    s3.download_file(BUCKET, key, str(local))
    with rasterio.open(local) as ds:
        return ds.read(1)


def _labels_zarr(path: str) -> np.ndarray:
    ds = xr.open_zarr(path)
    return ds[next(iter(ds.data_vars))].values


def test_object_storage_env_maps_aws_endpoint_url():
    assert object_storage_env({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {
        "AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    # the S3-specific variable wins; https keeps HTTPS; a user's GDAL names win
    assert object_storage_env({"AWS_ENDPOINT_URL": "http://a:1",
                               "AWS_ENDPOINT_URL_S3": "https://minio.lan/s3/",
                               "AWS_VIRTUAL_HOSTING": "TRUE"}) == {
        "AWS_S3_ENDPOINT": "minio.lan/s3", "AWS_HTTPS": "YES"}
    assert object_storage_env({"AWS_ENDPOINT_URL": "http://a:1", "AWS_S3_ENDPOINT": "b"}) == {}
    assert object_storage_env({}) == {}
    assert is_url("s3://b/k") and is_url("https://h/x.tif") and not is_url("/data/x.tif")


def test_s3_input_and_output_equal_a_local_run(aws, s3, scene, tmp_path):
    local = run(_config(str(scene.path), str(tmp_path / "local")))
    result = run(_config(f"s3://{BUCKET}/scene.tif", f"s3://{BUCKET}/runs/a/"))

    assert result.output == f"s3://{BUCKET}/runs/a"
    keys = _keys(s3, "runs/a/")
    assert "runs/a/report.json" in keys and "runs/a/labels.tif" in keys
    assert any(k.startswith("runs/a/labels.zarr/") for k in keys)
    with rasterio.open(tmp_path / "local" / "labels.tif") as ds:
        want = ds.read(1)
    np.testing.assert_array_equal(_labels_tif(s3, "runs/a/labels.tif", tmp_path), want)
    np.testing.assert_array_equal(_labels_zarr(f"s3://{BUCKET}/runs/a/labels.zarr"),
                                  _labels_zarr(str(tmp_path / "local" / "labels.zarr")))
    report = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/a/report.json")["Body"].read())
    assert report["input"]["source"] == f"s3://{BUCKET}/scene.tif"
    assert report["classes"] == local.report["classes"]
    # the local staging is gone, and no file of the run was written elsewhere
    assert not (tmp_path / ".tileseg-staging").exists()


def test_zarr_input_from_s3(aws, s3, tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.integers(0, 3, (1, 96, 80)) * 1000 + rng.integers(0, 50, (1, 96, 80)))
    ds = xr.Dataset({"image": (("band", "y", "x"), img.astype("uint16"))})
    ds.to_zarr(tmp_path / "in.zarr", mode="w", consolidated=False)
    ds.to_zarr(f"s3://{BUCKET}/in.zarr", mode="w", consolidated=False)
    cfg = {"cluster": {"method": "kmeans", "k": 3, "seed": 0}, "formats": ["zarr"],
           "features": ["bands"]}
    want = run(parse_config({**cfg, "input": str(tmp_path / "in.zarr"),
                             "output": str(tmp_path / "a")}))
    got = run(parse_config({**cfg, "input": f"s3://{BUCKET}/in.zarr",
                            "output": str(tmp_path / "b")}))
    assert got.report["classes"] == want.report["classes"]
    np.testing.assert_array_equal(_labels_zarr(str(tmp_path / "b" / "labels.zarr")),
                                  _labels_zarr(str(tmp_path / "a" / "labels.zarr")))


def test_existing_output_refused_then_replaced_with_overwrite(aws, s3, scene, tmp_path,
                                                              write_config):
    out = f"s3://{BUCKET}/runs/ow"
    run(_config(str(scene.path), out))
    # a stale object of the old output's Zarr store, and someone else's object
    s3.put_object(Bucket=BUCKET, Key="runs/ow/labels.zarr/stale", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="runs/ow/notes.txt", Body=b"mine")
    config = write_config({"input": str(scene.path), "output": out + "/",
                           "features": ["bands"], "chunks": 128,
                           "cluster": {"method": "kmeans", "k": 4, "seed": 1}})
    r = CliRunner().invoke(main, ["run", str(config), "-q"])
    assert r.exit_code == 2, r.output
    assert r.output == (f"tileseg: error: {out}: output exists (report.json); pass "
                        "--overwrite to replace it\n")

    r = CliRunner().invoke(main, ["run", str(config), "-q", "--overwrite"])
    assert r.exit_code == 0, r.output
    keys = _keys(s3, "runs/ow/")
    assert "runs/ow/labels.zarr/stale" not in keys and "runs/ow/notes.txt" in keys
    report = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/ow/report.json")["Body"].read())
    assert report["k"] == 4


def test_unwritable_prefix_is_refused_before_computing(aws, s3, scene, write_config):
    config = write_config({"input": str(scene.path), "output": "s3://no-such-bucket/run",
                           "features": ["bands"]})
    r = CliRunner().invoke(main, ["run", str(config), "-q"])
    assert r.exit_code == 2
    assert r.output.startswith("tileseg: error: output: s3://no-such-bucket/run: cannot "
                               "write under this prefix (")
    assert len(r.output.strip().splitlines()) == 1


def test_failed_upload_leaves_no_report(aws, s3, tmp_path):
    files = tmp_path / "staged"
    (files / "labels.zarr").mkdir(parents=True)
    (files / "labels.zarr" / "zarr.json").write_text("{}")
    (files / "model.json").write_text("{}")
    (files / "report.json").write_text("{}")
    (files / "labels.tif").symlink_to(tmp_path / "gone.tif")  # unreadable mid-upload
    remote = RemoteOutput(f"s3://{BUCKET}/runs/fail")
    with pytest.raises(OutputError) as info:
        remote.commit(files, overwrite=False)
    assert str(info.value).startswith(f"output: s3://{BUCKET}/runs/fail: upload failed (")
    assert info.value.keep_staging  # type: ignore[attr-defined]
    assert "runs/fail/report.json" not in _keys(s3, "runs/fail/")
    assert not remote.exists()


def test_output_appearing_during_the_run_is_not_replaced(aws, s3, tmp_path):
    files = tmp_path / "staged"
    files.mkdir()
    (files / "report.json").write_text("{}")
    s3.put_object(Bucket=BUCKET, Key="runs/race/report.json", Body=b"{}")
    with pytest.raises(OutputExistsError, match="appeared during this run"):
        RemoteOutput(f"s3://{BUCKET}/runs/race").commit(files, overwrite=False)


def test_no_credential_in_logs_reports_or_errors(endpoint, s3, scene, tmp_path):
    """The CLI at -vv, a run on S3 and a failing one: the secret is nowhere."""
    env = clean_env(endpoint)
    base = {"features": ["bands"], "cluster": {"method": "kmeans", "k": 3, "seed": 0},
            "formats": ["cog"]}
    ok = tmp_path / "ok.yaml"
    ok.write_text(json.dumps({**base, "input": f"s3://{BUCKET}/scene.tif",
                              "output": f"s3://{BUCKET}/runs/secret"}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**base, "input": f"s3://{BUCKET}/missing.tif",
                               "output": str(tmp_path / "o")}))
    cli = [sys.executable, "-c", "from pipeline.cli import console; console()", "run"]
    done = subprocess.run([*cli, str(ok), "-vv"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    failed = subprocess.run([*cli, str(bad), "-q"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "missing.tif" in failed.stderr
    report = s3.get_object(Bucket=BUCKET, Key="runs/secret/report.json")["Body"].read()
    for text in (done.stdout, done.stderr, failed.stderr, report.decode()):
        assert SECRET not in text
    assert "DEBUG" in done.stderr  # the logs were there to leak it


def test_signed_urls_and_passwords_are_redacted():
    from pipeline._secrets import redact

    url = ("https://h.example/b/x.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK"
           "%2F20260101&X-Amz-Signature=deadbeef&x=1")
    assert redact(url) == ("https://h.example/b/x.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&"
                           "X-Amz-Credential=***&X-Amz-Signature=***&x=1")
    assert redact("ftp://me:pw1234@h/x and s3://b/k") == "ftp://me:***@h/x and s3://b/k"
    os.environ["TILESEG_TEST_TOKEN"] = "abcdef-123456"
    try:
        assert redact("token abcdef-123456 seen") == "token *** seen"
    finally:
        del os.environ["TILESEG_TEST_TOKEN"]


def test_http_and_presigned_url_inputs_through_gdal(aws, s3, scene, tmp_path):
    """``https://`` inputs go through GDAL's /vsicurl/; a signature never reaches the report."""
    want = run(_config(str(scene.path), str(tmp_path / "local")))
    s3.copy_object(Bucket=BUCKET, Key="public.tif", ACL="public-read",
                   CopySource={"Bucket": BUCKET, "Key": "scene.tif"})
    plain = run(_config(f"{aws}/{BUCKET}/public.tif", str(tmp_path / "http")))
    from botocore.config import Config

    v4 = boto3.client("s3", config=Config(signature_version="s3v4"))
    signed_url = v4.generate_presigned_url("get_object", ExpiresIn=600,
                                           Params={"Bucket": BUCKET, "Key": "scene.tif"})
    signature = signed_url.split("X-Amz-Signature=")[1].split("&")[0]
    signed = run(_config(signed_url, str(tmp_path / "signed")))
    for got in (plain, signed):
        assert got.report["classes"] == want.report["classes"]
    text = (tmp_path / "signed" / "report.json").read_text()
    assert signature not in text and "X-Amz-Signature=***" in text
