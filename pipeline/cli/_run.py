"""``tileseg run``."""

from __future__ import annotations

import click

from ._options import start, verbosity


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set cluster.k=5 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--dry-run", is_flag=True, help="Validate and show the plan; compute nothing.")
@verbosity
def run(config: str, overrides: tuple[str, ...], overwrite: bool, dry_run: bool,
        verbose: int, quiet: bool) -> None:
    """Segment the raster named in CONFIG (YAML) and write the outputs."""
    start(verbose, quiet)
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
