"""The stages of a run, in order: open, fit, label, post-process, write, report.

Together with :mod:`pipeline.runner`, which calls them in order, these modules are the
orchestrator: the only code that computes or persists (``fit`` computes its sample).
Each stage takes the run's :class:`RunContext` and lazy arrays, and records its time
with :meth:`Timings.stage`.
"""

from ._context import RunContext
from ._fit import (
    Fitted,
    draw,
    fit_stage,
    given_model,
    save_model,
    write_comparison,
    write_elbow,
    write_figures,
)
from ._open import DEFAULT_FORMATS, Opened, describe_formats, open_input, output_formats
from ._resume import Ledger, Manifest, load_resumed, start_manifest
from ._segments import Segments, min_pixels, segments_stage, write_segments
from ._staging import (
    PREPARED,
    Job,
    Timings,
    check_space,
    hold_output,
    output_bytes,
    prepared,
    recover,
    refuse_existing,
    staged_output,
    staging_dir,
)
from ._write import (
    Progress,
    Written,
    make_writer,
    segment_spill,
    stage_progress,
    store_rasters,
    write_stage,
)

__all__ = [
    "DEFAULT_FORMATS",
    "Fitted",
    "Ledger",
    "Manifest",
    "load_resumed",
    "start_manifest",
    "Job",
    "Opened",
    "PREPARED",
    "Progress",
    "RunContext",
    "Segments",
    "Timings",
    "Written",
    "check_space",
    "describe_formats",
    "draw",
    "fit_stage",
    "given_model",
    "hold_output",
    "make_writer",
    "min_pixels",
    "open_input",
    "output_bytes",
    "output_formats",
    "prepared",
    "recover",
    "refuse_existing",
    "save_model",
    "segment_spill",
    "segments_stage",
    "stage_progress",
    "staged_output",
    "staging_dir",
    "store_rasters",
    "write_comparison",
    "write_elbow",
    "write_figures",
    "write_segments",
    "write_stage",
]
