"""Object storage: URLs, GDAL's names for the standard AWS variables, remote outputs.

Inputs on object storage need nothing of their own: GDAL reads ``s3://``, ``gs://``
and ``https://`` rasters through its virtual file systems (``/vsis3/``, ``/vsigs/``,
``/vsicurl/``), and xarray/zarr read Zarr stores through fsspec (s3fs, gcsfs). What
GDAL lacks is the standard ``AWS_ENDPOINT_URL`` (botocore's, hence s3fs's): with only
it set, :func:`object_storage_env` gives GDAL the same endpoint under its own names.

An output on object storage (:class:`RemoteOutput`) is written as a local one is, into
a staging directory on this machine (under ``compute.staging_dir``), then uploaded
file by file under the prefix, Zarr stores as trees of objects, ``report.json`` last:
an output is complete exactly when its ``report.json`` exists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._secrets import redact
from ..errors import OutputError, OutputExistsError, first_line

__all__ = ["REMOTE_SCHEMES", "RemoteOutput", "is_url", "object_storage_env",
           "DEFAULT_STAGING_DIR"]

log = logging.getLogger("pipeline.runner")

#: URL schemes of object storage and the web (inputs); outputs need an fsspec
#: file system that can write (s3fs for ``s3://``, gcsfs for ``gs://``, adlfs ...)
REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https")

#: where outputs on object storage are staged when ``compute.staging_dir`` is null
DEFAULT_STAGING_DIR = ".tileseg-staging"

#: the commit marker of an output, uploaded last
MARKER = "report.json"


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URL of object storage or the web (``s3://bucket/key`` ...)."""
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in REMOTE_SCHEMES


def object_storage_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Return GDAL's settings for an S3 endpoint given only as ``AWS_ENDPOINT_URL``.

    ``AWS_ENDPOINT_URL_S3`` (else ``AWS_ENDPOINT_URL``) ``http://host:9000`` becomes
    ``AWS_S3_ENDPOINT=host:9000``, ``AWS_HTTPS=NO`` (``YES`` for https) and
    ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style requests, as MinIO, Ceph and moto
    expect). Nothing is returned when GDAL's ``AWS_S3_ENDPOINT`` is set: the user's
    own GDAL settings win, each of them.
    """
    env = dict(os.environ if environ is None else environ)
    url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not url or env.get("AWS_S3_ENDPOINT"):
        return {}
    parts = urlsplit(url if "://" in url else f"https://{url}")
    out = {"AWS_S3_ENDPOINT": parts.netloc + parts.path.rstrip("/"),
           "AWS_HTTPS": "NO" if parts.scheme == "http" else "YES",
           "AWS_VIRTUAL_HOSTING": "FALSE"}
    return {k: v for k, v in out.items() if k not in env}


def _filesystem(url: str) -> tuple[Any, str]:
    """Return the fsspec file system of ``url`` and the path in it (a clear error if none)."""
    import fsspec

    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith("s3://") and endpoint:
        # botocore reads it too; given here, it keys fsspec's cache of file systems
        options["endpoint_url"] = endpoint
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:  # s3fs, gcsfs ... not installed
        raise OutputError(url, f"no file system for this URL ({first_line(exc)})") from None
    except ValueError as exc:  # an unknown protocol
        raise OutputError(url, first_line(exc)) from None


def _shadow_name(url: str) -> str:
    """Return a directory name for ``url``: readable, unique (a hash of the whole URL)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("._")[:80]
    return f"{readable}-{hashlib.sha1(url.encode()).hexdigest()[:10]}"


class RemoteOutput:
    """An output on object storage, staged in a local directory and uploaded once complete.

    Parameters
    ----------
    url : str
        ``s3://bucket/prefix`` (a trailing ``/`` is ignored): the run's files go to
        ``prefix/labels.tif``, ``prefix/labels.zarr/...``, ``prefix/report.json``.
    staging_dir : path, optional
        The local directory in which outputs on object storage are staged
        (:data:`DEFAULT_STAGING_DIR` in the current directory by default).

    Attributes
    ----------
    local : Path
        The stand-in local output: a run holds its lock (``.{name}.lock``, on this
        machine: runs on other machines are not excluded) and stages into
        ``.{name}.partial/output`` beside it, exactly as for a local output; the same
        URL always maps to the same directory, so ``--resume`` finds a killed run.

    Notes
    -----
    Replacing an output (``--overwrite``) first deletes its ``report.json`` (the
    output is then incomplete), then the objects under the names the old and the new
    run write (``labels.zarr/`` ...; other objects under the prefix are left alone),
    then uploads. A failed upload leaves no ``report.json``.
    """

    def __init__(self, url: str, staging_dir: str | os.PathLike[str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self.path = _filesystem(self.url)
        self.path = self.path.rstrip("/")
        root = Path(staging_dir if staging_dir is not None else DEFAULT_STAGING_DIR)
        self.local = root.absolute() / _shadow_name(self.url)

    def __repr__(self) -> str:
        return f"RemoteOutput({self.url!r})"

    def _key(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _error(self, exc: BaseException, what: str) -> OutputError:
        return OutputError(self.url, redact(f"{what} ({first_line(exc)})"))

    def exists(self) -> bool:
        """Whether a finished output is at the prefix (its ``report.json``)."""
        try:
            self.fs.invalidate_cache()  # listings cached by an earlier call are stale
            return bool(self.fs.exists(self._key(MARKER)))
        except Exception as exc:  # botocore, aiohttp, OSError: the storage's own types
            raise self._error(exc, "cannot reach the object storage") from None

    def refuse_existing(self, overwrite: bool) -> None:
        """Raise :class:`OutputExistsError` if a finished output is at the prefix."""
        if not overwrite and self.exists():
            raise OutputExistsError(f"{self.url}: output exists ({MARKER}); pass "
                                    "--overwrite to replace it")

    def check_writable(self) -> None:
        """Write and delete a small object under the prefix, before any computation.

        Raises
        ------
        OutputError
            ``output: s3://...: cannot write (cause)``: no such bucket, access denied,
            no server at the endpoint.
        """
        probe = self._key(".tileseg-write-test")
        try:
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except Exception as exc:
            raise self._error(exc, "cannot write under this prefix") from None

    def _old_names(self) -> set[str]:
        """Return the top-level names the existing output's report lists."""
        import json

        try:
            report = json.loads(self.fs.cat_file(self._key(MARKER)))
            return {str(n).split("/")[0] for n in report.get("outputs", [])}
        except FileNotFoundError:
            return set()
        except (ValueError, AttributeError, TypeError):  # not our report
            return set()

    def commit(self, files: Path, overwrite: bool) -> None:
        """Upload the staged ``files`` under the prefix, ``report.json`` last.

        Raises
        ------
        OutputExistsError
            An output appeared at the prefix during the run and ``overwrite`` is false.
        OutputError
            The upload failed (``keep_staging``: ``--resume`` uploads the finished run
            again without recomputing it); no ``report.json`` was written.
        """
        if self.exists() and not overwrite:
            exc = OutputExistsError(
                f"{self.url}: output appeared during this run; not replaced (pass "
                "--overwrite to replace it; the finished run is kept for --resume)")
            exc.keep_staging = True  # type: ignore[attr-defined]
            raise exc
        local = sorted(p for p in files.rglob("*") if p.is_file() or p.is_symlink())
        marker = files / MARKER
        try:
            if self.fs.exists(self._key(MARKER)):
                names = self._old_names()
                self.fs.rm_file(self._key(MARKER))  # the old output is incomplete from here
            else:
                names = set()
            names |= {p.name for p in files.iterdir() if p.name != MARKER}
            self._delete(sorted(names))
            body = [p for p in local if p != marker]
            self.fs.put([os.fspath(p) for p in body],
                        [self._key(p.relative_to(files).as_posix()) for p in body])
            if marker.exists():
                self.fs.put_file(os.fspath(marker), self._key(MARKER))
        except Exception as exc:
            err = self._error(exc, "upload failed")
            err.keep_staging = True  # type: ignore[attr-defined]
            raise err from None
        log.info("%s: uploaded %d files", self.url, len(local))

    def _delete(self, names: list[str]) -> None:
        """Delete the objects under each ``prefix/name`` (a file or a tree)."""
        paths: list[str] = []
        for name in names:
            key = self._key(name)
            try:
                paths += self.fs.find(key) if self.fs.isdir(key) else (
                    [key] if self.fs.exists(key) else [])
            except FileNotFoundError:
                continue
        if paths:
            self.fs.rm(paths)
