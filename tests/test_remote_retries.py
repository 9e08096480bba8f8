"""Remote input over a flaky HTTP server: GDAL's retries give an identical result."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import rasterio

from pipeline.config import parse_config
from pipeline.runner import run
from pipeline.synthetic import make_scene

# A loopback server in a child process (GDAL holds the GIL in parts of its HTTP reads:
# a server thread in this process could deadlock), with single byte-range support. It
# answers a seeded 10 % of range requests with 503 and drops one connection mid-body,
# and appends one line per fault to a log for the test to count.
_SERVER = textwrap.dedent('''
    import http.server, os, random, re, socket, struct, sys, threading

    directory, log_path = sys.argv[1], sys.argv[2]
    seed, drop_at = int(sys.argv[3]), int(sys.argv[4])
    rng, lock, state = random.Random(seed), threading.Lock(), {"ranges": 0}

    def note(what):
        with lock, open(log_path, "a") as f:
            f.write(what + "\\n")

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            rng_header = self.headers.get("Range")
            path = self.translate_path(self.path)
            if not rng_header or not os.path.isfile(path):
                return super().do_GET()
            with lock:
                state["ranges"] += 1
                n, fail = state["ranges"], rng.random() < 0.10
            if fail:
                note("503")
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            m = re.match(r"bytes=(\\d+)-(\\d*)", rng_header)
            size = os.path.getsize(path)
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            with open(path, "rb") as f:
                f.seek(start)
                body = f.read(end - start + 1)
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if n == drop_at:  # half the body, then a reset: a dropped connection
                note("drop")
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()
''')


def _flaky_server(tmp_path, drop_at):
    served = tmp_path / "served"
    served.mkdir()
    log = tmp_path / "faults.log"
    log.touch()
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(served), str(log), "15",
                             str(drop_at)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}", served, log
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def flaky_server(tmp_path):
    yield from _flaky_server(tmp_path, drop_at=12)  # 503s, a drop mid-run


@pytest.fixture
def dropping_server(tmp_path):
    yield from _flaky_server(tmp_path, drop_at=1)  # drops the first range request


def test_flaky_http_input_gives_identical_labels(tmp_path, flaky_server, monkeypatch):
    url, served, log = flaky_server
    # small enough to stay quick, with enough tiles (~200 range requests) for faults
    scene = make_scene(served / "scene.tif", size=512, bands=4, n_classes=5, cell=64,
                       border=12, tile=32, seed=5)
    # each read goes to the server (no cached blocks between opens or runs), and
    # the retries wait less than the default 0.5 s (the user's setting wins)
    monkeypatch.setenv("VSI_CACHE", "FALSE")
    monkeypatch.setenv("CPL_VSIL_CURL_NON_CACHED", f"/vsicurl/{url}")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.05")
    monkeypatch.setenv("CPL_VSIL_CURL_CHUNK_SIZE", "16384")
    cfg = {"cluster": {"k": 5, "sample_size": 5000}, "chunks": 128}
    local = run(parse_config({**cfg, "input": str(scene.path), "output": str(tmp_path / "a")}))
    t0 = time.monotonic()
    remote = run(parse_config({**cfg, "input": f"{url}/scene.tif",
                               "output": str(tmp_path / "b")}))
    faults = log.read_text().split()
    assert faults.count("503") >= 3, faults
    assert faults.count("drop") == 1, faults
    assert time.monotonic() - t0 < 30
    with rasterio.open(local.output / "labels.tif") as a, \
            rasterio.open(remote.output / "labels.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_dropped_connection_is_retried(tmp_path, dropping_server, scene):
    import shutil

    """A 206 cut short by a reset is kept by GDAL 3.10 (and cached): tileseg retries it."""
    from pipeline.io import open_image

    url, served, log = dropping_server
    shutil.copy(scene.path, served / "scene.tif")
    remote = open_image(f"{url}/scene.tif", chunks=128)
    assert log.read_text().split().count("drop") == 1
    np.testing.assert_array_equal(remote.values, open_image(scene.path).values)
