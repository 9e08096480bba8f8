"""``tileseg cut``."""

from __future__ import annotations

import click

from ._options import start, verbosity


@click.command()
@click.argument("output", type=click.Path())
@click.option("--regions", type=int, default=None, metavar="N",
              help="Keep merging until N regions are left (more where nodata or the "
                   "image's edges cut it into more parts).")
@click.option("--threshold", type=float, default=None, metavar="T",
              help="Stop before the first merge whose cost exceeds T squared (the scale "
                   "parameter).")
@verbosity
def cut(output: str, regions: int | None, threshold: float | None, verbose: int,
        quiet: bool) -> None:
    """Re-cut the merge hierarchy of the run in OUTPUT (postprocess.merge).

    Rewrites segments.* (the run's formats) and segments.parquet from
    hierarchy.parquet and leaves.zarr, exactly as a run with that regions or
    threshold writes them; nothing else is computed and the input is only opened for
    its geometry. With both options the first stop reached wins.
    """
    start(verbose, quiet)
    import json

    from ..stages._cut import cut_output

    summary = cut_output(output, regions=regions, threshold=threshold)
    if not quiet:
        click.echo(json.dumps(summary.get("merge", {})))
