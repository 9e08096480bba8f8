"""``tileseg run``."""

from __future__ import annotations

import click

from ._options import output_job, start, verbosity


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set cluster.k=5 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--resume", is_flag=True,
              help="Continue a run that was killed or interrupted, from its staged work.")
@click.option("--dry-run", is_flag=True, help="Validate and show the plan; compute nothing.")
@verbosity
def run(config: str, overrides: tuple[str, ...], overwrite: bool, resume: bool,
        dry_run: bool, verbose: int, quiet: bool) -> None:
    """Segment the raster named in CONFIG (YAML) and write the outputs.

    One run at a time writes an output (a second one exits 2); SIGTERM or Ctrl-C stops
    it with exit 143 / 130, keeping its work for --resume.
    """
    start(verbose, quiet)
    if dry_run:
        import json

        from ..config import load_config
        from ..runner import plan

        click.echo(json.dumps(plan(load_config(config, overrides)), indent=2))
        return
    with output_job(config, overrides):
        from ..config import load_config
        from ..runner import run as run_pipeline

        result = run_pipeline(load_config(config, overrides), overwrite=overwrite,
                              progress=not quiet, resume=resume)
    if not quiet:
        r = result.report
        i = r["input"]
        size = f"{i['width']} x {i['height']} pixels" if i.get("depth") is None else \
            f"{i['width']} x {i['height']} x {i['depth']} voxels"  # a volume: (x, y, z)
        click.echo(f"segmented {size} into {r['k']} classes in "
                   f"{r['timings_s']['total']:.1f} s")
        for p in result.outputs:
            click.echo(f"  {p}")
