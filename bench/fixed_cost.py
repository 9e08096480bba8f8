"""Fixed cost of tileseg: the seconds a run pays whatever the image size.

    python bench/fixed_cost.py                 # 10 runs of each
    python bench/fixed_cost.py --repeat 20 --json bench/out/fixed.json

Each measurement is a whole process, started the way a scheduled job starts it:
``tileseg --help``, and ``tileseg run`` on a 256 x 256 x 4 uint16 scene with k = 8 and
``formats: [cog]``, from process start to exit (imports, numba kernels from their
cache, the run, exit). The import of ``pipeline.runner`` (the libraries) is timed inside
a process of its own.
One untimed run first writes numba's and Python's caches, as an installed tileseg has
them. Prints the median, range and every run; the machine is named as in run_bench.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _harness import OUT, SceneParams, ensure_scene
from run_bench import APPROACHES, child_env, clear, machine_info, tileseg_cmd, write_tileseg_config

#: seconds spent importing tileseg's run module and its libraries, timed inside the
#: process (a bare interpreter's exit tears down every module, which ``tileseg`` skips)
IMPORT = ("import time; t = time.perf_counter(); import pipeline.runner; "
          "print(time.perf_counter() - t)")


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds of one process and its output; raises if it fails."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10, help="timed runs of each command")
    ap.add_argument("--workdir", type=Path, default=OUT / "fixed-cost")
    ap.add_argument("--json", type=Path, default=None, help="save every run here")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    work = args.workdir.resolve()
    scene, _ = ensure_scene(SceneParams(size=256, tile=256), work / "scene.tif", quiet=True)
    out = work / "out"
    config = write_tileseg_config(APPROACHES["tileseg-cog"], scene, out, k=8, chunks=None)
    tileseg = tileseg_cmd()
    run = "tileseg run (256^2, [cog])"
    commands = {
        "tileseg --help": [*tileseg, "--help"],
        run: [*tileseg, "run", str(config), "--overwrite", "-q"],
        "import pipeline.runner": [sys.executable, "-c", IMPORT],
    }
    clear(out)
    timed(commands[run], work)  # caches, as installed
    runs: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeat):  # interleaved, so that a busy moment hits all alike
        for name, cmd in commands.items():
            wall, stdout = timed(cmd, work)
            runs[name].append(float(stdout) if cmd[-1] == IMPORT else wall)

    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores; {args.repeat} runs each, whole processes")
    print("\n| measured | median s | min s | max s |\n| --- | ---: | ---: | ---: |")
    for name, walls in runs.items():
        label = name + (" (in the process)" if name.startswith("import") else " (process)")
        print(f"| {label} | {statistics.median(walls):.2f} | {min(walls):.2f} | "
              f"{max(walls):.2f} |")
    run_s = statistics.median(runs[run])
    import_s = statistics.median(runs["import pipeline.runner"])
    print(f"\nof a run's {run_s:.2f} s, importing the libraries takes {import_s:.2f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "repeat": args.repeat,
                                         "runs": runs}, indent=2))
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
