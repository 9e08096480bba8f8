"""Options shared by every command."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

__all__ = ["verbosity", "setup_logging", "start"]


def setup_logging(verbose: int, quiet: bool) -> None:
    """Map ``-v``/``-q`` to logging levels (warnings by default)."""
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(
        verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("pipeline").setLevel(level)
    # the in-process scheduler of a LocalCluster logs every worker at INFO
    noisy = level if verbose > 1 else max(level, logging.WARNING)
    for name in ("distributed", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(noisy)


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
