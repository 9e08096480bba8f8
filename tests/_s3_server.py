"""A real S3 server on loopback for the tests: moto's server mode, in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

#: credentials of the test server: the secret must never appear in logs or reports
SECRET = "tileseg-test-secret-0123456789"
ACCESS_KEY = "tilesegtestkey"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """Start ``python -m moto.server`` on a free loopback port; yield its endpoint URL."""
    pytest.importorskip("moto.server", reason="moto[server] (the [test] extra) is needed")
    pytest.importorskip("flask", reason="moto[server] (the [test] extra) is needed")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


#: the environment a user sets for an S3-compatible endpoint: the standard AWS variables
#: only (GDAL's own names are derived from AWS_ENDPOINT_URL by tileseg)
def aws_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}


#: variables the run sets itself (GDAL's names of the endpoint): unset around each test
DERIVED = ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING")


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Set the standard AWS variables for ``endpoint``; what the run derives is undone."""
    for k, v in aws_env(endpoint).items():
        monkeypatch.setenv(k, v)
    for k in DERIVED + ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(k, "x")  # recorded as unset: restored (removed) afterwards
        monkeypatch.delenv(k)


def clean_env(endpoint: str) -> dict[str, str]:
    """Return this process's environment for a subprocess using ``endpoint``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(aws_env(endpoint))
    return env
