"""One exception hierarchy for every error a user can cause.

Each message names the file or the configuration key and says what was expected,
so the command line can print it on one line and exit with code 2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "PipelineError",
    "ConfigError",
    "InputError",
    "ModelError",
    "OutputExistsError",
    "first_line",
    "reading",
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
