"""``tileseg demo``."""

from __future__ import annotations

import click

from ._options import start, verbosity


@click.command()
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
    start(verbose, quiet)
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
