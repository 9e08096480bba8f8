"""``python -m pipeline.cli``."""

from . import main

main(prog_name="tileseg")
