"""``tileseg evaluate``."""

from __future__ import annotations

from typing import Any

import click

from ._options import start, verbosity

_MAX_SHOWN = 16  # widest confusion matrix printed in the text table


@click.command()
@click.argument("pred", type=click.Path())
@click.argument("truth", type=click.Path())
@click.option("--ignore", "ignore", multiple=True, type=int, metavar="VALUE",
              help="A label meaning 'no label' (e.g. 0 for background): its truth pixels "
                   "are left out of class and region measures, and it is never matched "
                   "(repeatable). Without it, 0 is an ordinary label.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@verbosity
def evaluate(pred: str, truth: str, ignore: tuple[int, ...], as_json: bool, verbose: int,
             quiet: bool) -> None:
    """Score the label raster or volume PRED against the reference TRUTH (same grid).

    Prints class-map measures (confusion matrix after Hungarian matching, overall
    accuracy, Cohen's kappa, NMI, adjusted Rand index), region-map measures (BSDS500:
    probabilistic Rand index, variation of information in bits, covering) and
    instance measures (F1 at IoU 0.5, mean IoU of matches). Fractions have 4 decimals.
    Pixels that are nodata in either raster are left out. Memory stays bounded by the
    chunk size, whatever the rasters' size.

    Any format tileseg reads: GeoTIFF, NIfTI, OME-Zarr, Zarr, ... (2-D or z, y, x).
    In the NIfTI and OME-Zarr label images tileseg writes, 0 means "no label" (class c
    is stored as c + 1): those 0 voxels are nodata. Pass --ignore 0 when the truth's 0
    is an unlabelled background.
    """
    start(verbose, quiet)
    import json
    import os

    from ..config import ComputeConfig
    from ..evaluate import evaluate_rasters, rounded

    # tile-at-a-time reads gain nothing from GDAL's default block cache (5 % of RAM)
    os.environ.setdefault("GDAL_CACHEMAX", str(ComputeConfig().gdal_cachemax))

    result = rounded(evaluate_rasters(pred, truth, ignore=ignore))
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


def _num(v: Any, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:.4f}{unit}"


def format_table(r: dict[str, Any]) -> str:
    """Render a rounded result of :func:`pipeline.evaluate.evaluate_rasters` as text."""
    px, c, g, i = r["pixels"], r["class"], r["region"], r["instance"]
    ignored = f"; ignored labels: {', '.join(map(str, r['ignore']))}" if r["ignore"] else ""
    lines = [
        f"prediction  {r['pred']} ({r['labels']['pred']} labels)",
        f"truth       {r['truth']} ({r['labels']['truth']} labels{ignored})",
        f"pixels      {px['compared']} compared, {px['nodata']} nodata, "
        f"{px['ignored']} with an ignored truth label",
        "",
        "class map",
        f"  overall accuracy           {_num(c['overall_accuracy'])}",
        f"  Cohen's kappa              {_num(c['cohen_kappa'])}",
        f"  NMI (arithmetic)           {_num(c['normalized_mutual_info'])}",
        f"  adjusted Rand index        {_num(c['adjusted_rand_index'])}",
    ]
    if c.get("note"):
        lines.append(f"  ({c['note']})")
    conf = c["confusion"]
    if conf is not None:
        lines.append("  confusion after Hungarian matching (rows: truth, columns: prediction, "
                     "matched first):")
        if len(conf["pred_labels"]) > _MAX_SHOWN or len(conf["truth_labels"]) > _MAX_SHOWN:
            lines.append(f"    {len(conf['truth_labels'])} x {len(conf['pred_labels'])}: "
                         "see --json")
        else:
            cells = [["truth\\pred"] + [str(p) for p in conf["pred_labels"]]]
            cells += [[str(t)] + [str(v) for v in row]
                      for t, row in zip(conf["truth_labels"], conf["matrix"], strict=True)]
            width = max(len(s) for row in cells for s in row)
            lines += ["    " + " ".join(s.rjust(width) for s in row) for row in cells]
    lines += [
        "region map (BSDS500)",
        f"  probabilistic Rand index   {_num(g['probabilistic_rand_index'])}",
        f"  variation of information   {_num(g['variation_of_information'], ' bits')} "
        f"(false splits {_num(g['voi_false_splits'])}, "
        f"false merges {_num(g['voi_false_merges'])})",
        f"  segmentation covering      {_num(g['segmentation_covering'])}",
        f"instance map (IoU > {i['iou_threshold']})",
        f"  F1                         {_num(i['f1'])}",
        f"  precision, recall          {_num(i['precision'])}, {_num(i['recall'])}",
        f"  mean IoU of matches        {_num(i['mean_iou'])}",
        f"  objects                    {i['pred_objects']} predicted, {i['truth_objects']} "
        f"true, {i['matched']} matched",
    ]
    return "\n".join(lines)
