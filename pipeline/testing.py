"""Helpers shared by the test suite (and usable by anyone testing a tileseg setup)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

__all__ = ["write_raster", "assert_same_labelling", "serve_directory", "SHARED_DATA"]

#: Real sample data shipped beside the repository (absent in a user's clone).
SHARED_DATA = Path(os.environ.get("TILESEG_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


def write_raster(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    nodata: float | None = None,
    crs: str | None = "EPSG:32633",
    transform: Any = None,
    tile: int | None = 64,
    driver: str = "GTiff",
    **options: Any,
) -> Path:
    """Write ``data`` (band, y, x) or (y, x) as a raster and return its path."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    profile: dict[str, Any] = dict(driver=driver, width=width, height=height, count=count,
                                   dtype=data.dtype.name)
    if nodata is not None:
        profile["nodata"] = nodata
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or from_origin(300000.0, 4000000.0, 30.0, 30.0)
    if driver == "GTiff" and tile:
        profile.update(tiled=True, blockxsize=tile, blockysize=tile, compress="deflate")
    profile.update(options)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return Path(path)


def assert_same_labelling(a: np.ndarray, b: np.ndarray) -> None:
    """Assert two label maps are equal up to a one-to-one renaming of the labels."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    assert a.shape == b.shape
    pairs = np.unique(np.stack([a, b]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "a label of a maps to several of b"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "a label of b maps to several of a"


def _serve(directory: str, queue: Any) -> None:  # runs in a child process
    import http.server
    import re

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def send_head(self):
            self._remaining = None
            rng = self.headers.get("Range")
            path = self.translate_path(self.path)
            if not rng or not os.path.isfile(path):
                return super().send_head()
            m = re.match(r"bytes=(\d+)-(\d*)", rng)
            size = os.path.getsize(path)
            start = int(m.group(1)) if m else 0
            end = min(int(m.group(2)) if m and m.group(2) else size - 1, size - 1)
            f = open(path, "rb")  # noqa: SIM115 - closed by the base class
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            self._remaining = end - start + 1
            return f

        def copyfile(self, source, outputfile):
            remaining = self._remaining
            if remaining is None:
                return super().copyfile(source, outputfile)
            while remaining > 0:
                buf = source.read(min(65536, remaining))
                if not buf:
                    break
                outputfile.write(buf)
                remaining -= len(buf)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    queue.put(server.server_address[1])
    server.serve_forever()


def serve_directory(directory: str | os.PathLike[str]):
    """Serve ``directory`` over HTTP on loopback with byte-range support (for GDAL).

    Returns ``(base_url, shutdown)``. The server runs in a child process: GDAL holds
    the GIL in parts of its HTTP reads, so a server thread in the same process could
    deadlock. Python's ``http.server`` ignores ``Range`` headers, which GDAL's
    ``/vsicurl/`` relies on to read COG tiles, so the handler adds them (single ranges).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(os.fspath(directory), queue), daemon=True)
    proc.start()
    port = queue.get(timeout=60)

    def shutdown() -> None:
        proc.terminate()
        proc.join(10)
        queue.close()

    return f"http://127.0.0.1:{port}", shutdown
