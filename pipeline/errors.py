"""One exception hierarchy for every error a user can cause.

Each message names the file or the configuration key and says what was expected,
so the command line can print it on one line and exit with code 2.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = [
    "PipelineError",
    "ConfigError",
    "InputError",
    "ModelError",
    "OutputError",
    "OutputExistsError",
    "OutputLockedError",
    "ClusterError",
    "ResourceError",
    "first_line",
    "reading",
    "writing",
]


class PipelineError(Exception):
    """Base class of every error caused by the user's input or configuration."""

    exit_code = 2


class ConfigError(PipelineError, ValueError):
    """A configuration key is unknown, missing or has a bad value."""


class InputError(PipelineError, ValueError):
    """An input raster is missing, unreadable, or not what the run needs."""


class ModelError(PipelineError, ValueError):
    """A saved model is unreadable or does not match the image it is applied to."""


class OutputExistsError(PipelineError, FileExistsError):
    """The output exists and ``--overwrite`` was not given."""


class OutputLockedError(PipelineError):
    """Another run holds the output's lock (one writer per output)."""


class ClusterError(PipelineError):
    """The Dask cluster cannot run the job.

    A scheduler file that cannot be read, a scheduler that does not answer, workers
    whose versions differ from the client's.
    """


class ResourceError(PipelineError):
    """The machine cannot hold what the job needs (memory), known before it tries."""


class OutputError(PipelineError):
    """The output cannot be written: read-only, full or over quota, a file too large.

    Printed as ``output: <path>: <cause>``. ``path`` and ``cause`` are also its
    ``args``, so that it crosses process boundaries (a Dask worker's write).
    """

    def __init__(self, path: str | os.PathLike[str], cause: str) -> None:
        super().__init__(os.fspath(path), cause)
        self.path = os.fspath(path)
        self.cause = cause

    def __str__(self) -> str:
        return f"output: {self.path}: {self.cause}"


def first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message (its type's name if it has none)."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def reading(*sources: str) -> Iterator[None]:
    """Turn GDAL read failures while computing into one InputError naming the inputs."""
    from rasterio.errors import RasterioError

    try:
        yield
    except RasterioError as exc:
        first = first_line(exc)
        what = ("a complete, readable raster" if len(sources) == 1
                else "complete, readable rasters")
        raise InputError(f"{' or '.join(sources)}: cannot read the pixels ({first}); "
                         f"expected {what}") from None


def write_cause(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """Return why a write failed, in a few words (``No space left on device``).

    An OS error says so itself; GDAL's ("Write failed", "Write error at scanline 0") do
    not, so the file system of ``path`` is looked at: read-only, full, a file size
    limit (``ulimit -f``), no permission.
    """
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = first_line(exc)
    previous = exc.__cause__ or exc.__context__
    if "previous exception" in text and previous is not None:
        text = first_line(previous)
    found = _diagnose(path) if path is not None else None
    return f"{found} ({text})" if found else text


def _diagnose(path: str | os.PathLike[str]) -> str | None:
    """Guess why writing ``path`` failed from its file system and this process's limits."""
    import pathlib

    where = pathlib.Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    if where.is_file():
        where = where.parent
    try:
        st = os.statvfs(where)
        if st.f_flag & os.ST_RDONLY:
            return "Read-only file system"
        if st.f_bavail * st.f_frsize < 2**20:
            return "No space left on device"
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY:
            return f"File too large (a file size limit of {soft} bytes: ulimit -f)"
    except (OSError, ImportError, AttributeError):  # pragma: no cover - not POSIX
        return None
    return None if os.access(where, os.W_OK) else "Permission denied"


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an OS or GDAL failure to write ``path`` into an :class:`OutputError`.

    Else :func:`reading`, around the same computation, would blame the input.
    """
    from rasterio._err import CPLE_BaseError  # GDAL's own, not a RasterioError
    from rasterio.errors import RasterioError

    try:
        yield
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        raise OutputError(path, write_cause(exc, path)) from exc
