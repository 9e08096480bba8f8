"""The ``tileseg`` console script: a thin layer over :mod:`pipeline.runner`.

Heavy imports (dask, xarray, rasterio) happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

import click

__all__ = ["main", "console"]


class _Group(click.Group):
    """Turns every :class:`pipeline.errors.PipelineError` into one line and exit 2.

    SIGTERM and SIGINT stop a command cleanly (:mod:`pipeline._signals`): one line on
    stderr (how to resume, for ``run`` and ``predict``) and exit 143 / 130.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from .._signals import stop_on_signals
        from ..errors import PipelineError

        try:
            with stop_on_signals():
                return super().invoke(ctx)
        except PipelineError as exc:
            if ctx.meta.get("tileseg.verbose"):
                raise
            from .._secrets import redact

            click.echo(f"tileseg: error: {redact(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # pipeline._signals.Interrupted, or Ctrl-C
            signum = getattr(exc, "signum", 2)
            name = getattr(exc, "name", "SIGINT")
            hint = ctx.meta.get("tileseg.resume")
            click.echo(f"tileseg: interrupted by {name}"
                       + (f"; continue with `{hint}`" if hint else ""), err=True)
            # a write stopped inside zarr's event loop leaves coroutines that Python
            # reports, at exit, as "never awaited": the one line above says it all
            import warnings

            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            sys.exit(128 + signum)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tileseg")
def main() -> None:
    """Seam-free unsupervised segmentation of rasters larger than memory."""


def _register() -> None:
    # one module per command; each is imported only for the group (click needs the
    # command objects), and each imports the heavy libraries inside its body
    from ._cut import cut
    from ._demo import demo
    from ._elbow import elbow
    from ._evaluate import evaluate
    from ._fit import fit
    from ._predict import predict
    from ._run import run

    for command in (run, fit, predict, elbow, demo, evaluate, cut):
        main.add_command(command)


_register()


def _cap_malloc_arenas() -> None:
    """Cap glibc's malloc arenas in this process (M_ARENA_MAX), before any thread starts.

    glibc gives threads up to 8 arenas a core, and each keeps the chunk-sized arrays
    it freed: at 16384^2 the peak RSS of a run went from 641 to 594 MiB with 2 arenas,
    and with post-processing (segments) from 1499 to 1246 MiB, at the same speed
    (3 paired rounds each, bench/RESULTS.md section 0). A ``MALLOC_ARENA_MAX`` set by
    the user wins; other C libraries are left alone.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):
        return
    mallopt(ctypes.c_int(-8), ctypes.c_int(max(2, (os.cpu_count() or 1) // 4)))


def console() -> None:
    """Run :func:`main` as the ``tileseg`` console script, then exit quickly.

    Every output is complete when a command returns. Freezing the garbage collector
    then spares the interpreter's final collection of the ~10^6 objects that numpy,
    dask, xarray and numba leave behind: exit takes ~0.1 s instead of ~0.7 s. Only the
    console script does this, never an in-process ``main()`` call (tests, notebooks),
    and only the console script caps malloc's arenas (:func:`_cap_malloc_arenas`).
    """
    _cap_malloc_arenas()
    try:
        main(prog_name="tileseg")
    finally:
        gc.freeze()
