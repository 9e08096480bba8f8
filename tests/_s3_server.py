"""A real S3 server on loopback for the tests: moto's server mode, in a subprocess."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest

#: credentials of the test server: the secret must never appear in logs or reports
SECRET = "tileseg-test-secret-0123456789"
ACCESS_KEY = "tilesegtestkey"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: a direct opener: the server is on loopback, never behind a proxy from the environment
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _start(log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str] | None:
    """Start one server on a port free a moment ago; None if it exits (the port was taken)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90  # a loaded 2-core machine starts Python slowly
    while True:
        try:
            _DIRECT.open(url, timeout=2).close()
            if proc.poll() is None:  # it answered, not another server on the port
                return proc, url
        except (OSError, http.client.HTTPException):
            pass
        if proc.poll() is not None:
            return None
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            return None
        time.sleep(0.1)


@contextmanager
def moto_server() -> Iterator[str]:
    """Start ``python -m moto.server`` on a free loopback port; yield its endpoint URL.

    Between choosing a free port and the server binding it, another process (a Dask
    worker, a parallel test) may take it: the server then exits and is started again
    on another port.
    """
    pytest.importorskip("moto.server", reason="moto[server] (the [test] extra) is needed")
    pytest.importorskip("flask", reason="moto[server] (the [test] extra) is needed")
    with tempfile.TemporaryFile() as log:
        for _ in range(3):
            started = _start(log)
            if started is not None:
                break
        else:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"moto server did not start three times; its output:\n{tail}")
        proc, url = started
        try:
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
