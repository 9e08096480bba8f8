"""Options shared by every command."""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

__all__ = ["verbosity", "setup_logging", "start", "output_job"]


def setup_logging(verbose: int, quiet: bool) -> None:
    """Map ``-v``/``-q`` to logging levels (warnings by default)."""
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(
        verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    from .._secrets import redact_logs

    redact_logs()  # no credential in any log record (rasterio's and botocore's included)
    logging.getLogger("pipeline").setLevel(level)
    # the in-process scheduler of a LocalCluster logs every worker at INFO
    noisy = level if verbose > 1 else max(level, logging.WARNING)
    for name in ("distributed", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(noisy)
    quiet_pixel_grids()


def quiet_pixel_grids() -> None:
    """Silence rasterio's NotGeoreferencedWarning, here and in workers.

    Images without map coordinates (PNG, slides, microscopy) are worked on in pixels
    on purpose: the warning would only be noise on every run.
    """
    import warnings

    # by message: importing rasterio here would slow down `tileseg --help`
    for text in ("Dataset has no geotransform", "The given matrix is equal to Affine.identity"):
        warnings.filterwarnings("ignore", message=text)


def verbosity(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``-v/--verbose`` (repeatable) and ``-q/--quiet`` after the verb."""
    func = click.option("-q", "--quiet", is_flag=True,
                        help="Only errors; no progress bars.")(func)
    func = click.option("-v", "--verbose", count=True,
                        help="More logging (-vv for debug); tracebacks on errors.")(func)
    return func


def start(verbose: int, quiet: bool) -> None:
    """Record ``-v`` for the error handler and configure logging."""
    click.get_current_context().meta["tileseg.verbose"] = verbose > 0
    setup_logging(verbose, quiet)


def _command_line(ctx: click.Context) -> list[str]:
    """Return this command as it was given (the options that matter to its outputs)."""
    words = (ctx.command_path or "tileseg").split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif isinstance(param, click.Option) and param.name not in (
                "verbose", "quiet", "dry_run", "resume"):
            flag = param.opts[-1]
            if param.is_flag:
                words += [flag] if value else []
            elif param.multiple:
                words += [w for v in value or () for w in (flag, str(v))]
            elif value is not None and value != param.default:
                words += [flag, str(value)]
    return words


@contextlib.contextmanager
def output_job(config: str, overrides: Sequence[str] = ()) -> Iterator[None]:
    """Run the block of a command that writes a run's outputs (``run``, ``predict``).

    Records how to resume it (printed if a signal stops it) and takes the output's
    lock at once, before the pipeline is imported, so that a second run on the output
    is refused within a fraction of a second (the run holds the lock on; with an
    output this cannot tell yet, the run takes it itself).
    """
    ctx = click.get_current_context()
    ctx.meta["tileseg.resume"] = shlex.join([*_command_line(ctx), "--resume"])
    import yaml

    output = None
    try:
        with open(config) as f:
            data = yaml.safe_load(f)
        output = data.get("output") if isinstance(data, dict) else None
        for item in overrides:  # `--set output=...` wins over the file's
            key, _, value = item.partition("=")
            if key.strip() == "output":
                output = yaml.safe_load(value)
    except (OSError, ValueError, yaml.YAMLError):
        pass  # reported by the config's own validation
    if not (isinstance(output, str) and output and Path(output).parent.is_dir()):
        yield
        return
    from .._lock import output_lock

    with output_lock(Path(output)):
        yield
