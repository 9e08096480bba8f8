"""The ``tileseg`` console script: a thin layer over :mod:`pipeline.runner`.

Heavy imports (dask, xarray, rasterio) happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ._options import setup_logging, verbosity

__all__ = ["main"]


class _Group(click.Group):
    """Turns every :class:`pipeline.errors.PipelineError` into one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..errors import PipelineError

        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            if ctx.meta.get("tileseg.verbose"):
                raise
            click.echo(f"tileseg: error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tileseg")
def main() -> None:
    """Seam-free unsupervised segmentation of rasters larger than memory."""


def _start(verbose: int, quiet: bool) -> None:
    click.get_current_context().meta["tileseg.verbose"] = verbose > 0
    setup_logging(verbose, quiet)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set cluster.k=5 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--dry-run", is_flag=True, help="Validate and show the plan; compute nothing.")
@verbosity
def run(config: str, overrides: tuple[str, ...], overwrite: bool, dry_run: bool,
        verbose: int, quiet: bool) -> None:
    """Segment the raster named in CONFIG (YAML) and write the outputs."""
    _start(verbose, quiet)
    import json

    from ..config import load_config
    from ..runner import plan
    from ..runner import run as run_pipeline

    cfg = load_config(config, overrides)
    if dry_run:
        click.echo(json.dumps(plan(cfg), indent=2))
        return
    result = run_pipeline(cfg, overwrite=overwrite, progress=not quiet)
    if not quiet:
        r = result.report
        click.echo(f"segmented {r['input']['width']} x {r['input']['height']} pixels into "
                   f"{r['k']} classes in {r['timings_s']['total']:.1f} s")
        for p in result.outputs:
            click.echo(f"  {p}")


@main.command()
@click.option("--output", "-o", default="tileseg-demo", show_default=True,
              type=click.Path(file_okay=False), help="Directory for the scene and results.")
@click.option("--size", default=4096, show_default=True, type=click.IntRange(min=64),
              help="Side of the synthetic scene in pixels.")
@click.option("--scheduler", default="processes", show_default=True,
              help="threads, processes (a local cluster) or tcp://host:port.")
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@verbosity
def demo(output: str, size: int, scheduler: str, overwrite: bool, verbose: int,
         quiet: bool) -> None:
    """Generate a synthetic scene with known classes, segment it and score the result."""
    _start(verbose, quiet)
    from ..runner import run_demo

    result, ari, cfg = run_demo(output, size=size, overwrite=overwrite, progress=not quiet,
                                scheduler=scheduler)
    if not quiet:
        r = result.report
        click.echo(f"synthetic scene: {r['input']['width']} x {r['input']['height']} x "
                   f"{r['input']['bands']} {r['input']['dtype']}, {r['k']} classes")
        click.echo(f"segmented in {r['timings_s']['total']:.1f} s; outputs:")
        for p in result.outputs:
            click.echo(f"  {p}")
        click.echo(f"adjusted Rand index against the truth: {ari:.4f}")
        click.echo(f"rerun with: tileseg run {cfg} --overwrite")
