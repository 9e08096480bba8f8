"""What every stage of a run shares: the config, the opened input, the client, the timings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ._open import Opened
from ._staging import Timings

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """One run's shared state, handed from stage to stage.

    Attributes
    ----------
    config : RunConfig
    opened : Opened
        The lazy input, features, geometry, mask and output formats.
    timings : Timings
    client : distributed.Client or None
        None with the threaded scheduler.
    progress : bool
        Show progress bars on a terminal.
    """

    config: RunConfig
    opened: Opened
    timings: Timings
    client: Any = None
    progress: bool = False
