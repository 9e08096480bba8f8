"""``tileseg elbow``."""

from __future__ import annotations

import re

import click

from ._options import start, verbosity


def parse_ks(text: str) -> list[int]:
    """``"2..16"``, ``"2,4,8"`` or ``"5"`` as a sorted list of k (each >= 2).

    Raises
    ------
    click.BadParameter
        Naming what was expected.
    """
    text = text.strip()
    m = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        ks = list(range(lo, hi + 1))
    elif re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        ks = sorted({int(v) for v in text.split(",")})
    else:
        raise click.BadParameter(f"{text!r}: expected a range such as 2..16 or a list "
                                 "such as 2,4,8")
    if not ks or ks[0] < 2:
        raise click.BadParameter(f"{text!r}: expected values of k >= 2")
    return ks


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--k", "ks", default=None, metavar="RANGE",
              help="k to try: 2..16 or 2,4,8 (default: cluster.k_range).")
@click.option("--sample-size", type=click.IntRange(min=10), default=None,
              help="Sampled pixels the fits see (default 100000).")
@click.option("--comparison", default=None, metavar="LIST",
              help="Also write comparison.png for these k, e.g. 2,4,8 "
                   "(default: report.comparison).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace elbow.json/png if they exist.")
@verbosity
def elbow(config: str, ks: str | None, sample_size: int | None, comparison: str | None,
          overrides: tuple[str, ...], overwrite: bool, verbose: int, quiet: bool) -> None:
    """Choose k for CONFIG: K-means scores over k on its sample.

    Within-cluster sum of squares with its knee, silhouette, Calinski-Harabasz and
    Davies-Bouldin; writes elbow.json and elbow.png into the output directory.
    """
    start(verbose, quiet)
    from ..config import load_config
    from ..runner import elbow_model

    cfg = load_config(config, overrides)
    k_list = parse_ks(ks) if ks else list(range(cfg.cluster.k_range[0],
                                                cfg.cluster.k_range[1] + 1))
    wanted = parse_ks(comparison) if comparison else None
    result, paths = elbow_model(cfg, k_list, sample_size=sample_size, comparison=wanted,
                                overwrite=overwrite)
    if not quiet:
        click.echo(" k  wcss          silhouette  calinski_harabasz  davies_bouldin")
        for row in result.to_dict()["scores"]:
            cells = [f"{row[n]:.4g}" if row[n] is not None else "-" for n in
                     ("silhouette", "calinski_harabasz", "davies_bouldin")]
            click.echo(f"{row['k']:>2}  {row['wcss']:<12.6g}  {cells[0]:<10}  "
                       f"{cells[1]:<17}  {cells[2]}")
        click.echo(f"chosen k = {result.k} ({result.chosen_by}); set cluster.k: "
                   f"{result.k} or cluster.k: auto")
        for p in paths:
            click.echo(f"  {p}")
