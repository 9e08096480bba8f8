"""``tileseg predict``."""

from __future__ import annotations

import click

from ._options import output_job, start, verbosity


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="A model.json written by `tileseg fit` or `tileseg run`.")
@click.option("--k", "k", type=click.IntRange(min=2), default=None,
              help="Cut a hierarchical or bisecting_kmeans model at this k (no refit).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set input=other.tif (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--resume", is_flag=True,
              help="Continue a run that was killed or interrupted, from its staged work.")
@verbosity
def predict(config: str, model_path: str, k: int | None, overrides: tuple[str, ...],
            overwrite: bool, resume: bool, verbose: int, quiet: bool) -> None:
    """Label the input of CONFIG with a saved model; write what `tileseg run` writes.

    The scene must have the model's bands and features; class IDs mean the same on
    every scene.
    """
    start(verbose, quiet)
    with output_job(config, overrides):
        from ..config import load_config
        from ..runner import predict_model

        result = predict_model(load_config(config, overrides), model_path, k=k,
                               overwrite=overwrite, progress=not quiet, resume=resume)
    if not quiet:
        r = result.report
        click.echo(f"labelled {r['input']['width']} x {r['input']['height']} pixels with "
                   f"{r['k']} classes in {r['timings_s']['total']:.1f} s")
        for p in result.outputs:
            click.echo(f"  {p}")
