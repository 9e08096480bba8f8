"""``tileseg fit``."""

from __future__ import annotations

import click

from ._options import start, verbosity


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set cluster.method=gmm (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace a model.json in the output.")
@verbosity
def fit(config: str, overrides: tuple[str, ...], overwrite: bool, verbose: int,
        quiet: bool) -> None:
    """Fit the model of CONFIG once and write model.json into its output directory.

    Apply it to any scene with the same bands and features with `tileseg predict`.
    """
    start(verbose, quiet)
    from ..config import load_config
    from ..runner import fit_model

    model, paths = fit_model(load_config(config, overrides), overwrite=overwrite)
    if not quiet:
        noise = f" (class {model.noise_label} is noise)" if model.noise_label is not None \
            else ""
        click.echo(f"fitted {model.method} with {model.k} classes{noise} on "
                   f"{model.sample_size} sampled pixels")
        for p in paths:
            click.echo(f"  {p}")
