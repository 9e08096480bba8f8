"""Fit time, peak memory and quality of every clustering method over sample sizes.

Each (method, sample size) runs in a fresh process, so its peak memory is its own:
a thread samples the process's resident memory every 5 ms during the fit, and the
figure reported is the peak minus the memory before the fit. The data are the
synthetic scene's classes (``pipeline.synthetic``: 6 classes, 4 bands, reflectance
noise 0.02) drawn at random pixel positions, so the truth is known:

* ``ari``: adjusted Rand index of the labels of 200 000 held-out pixels against the
  truth (noise counts as one more class for dbscan / hdbscan);
* ``noise``: the fraction of held-out pixels labelled noise;
* ``label MPix/s``: the model's block kernel on the held-out pixels, one thread.

Sizes grow until a fit takes longer than ``--budget`` seconds; then the method stops.

Usage::

    python bench/bench_methods.py                       # 1e4 .. 1e6, 60 s budget
    python bench/bench_methods.py --sizes 10000 30000 --methods kmeans dbscan
    python bench/bench_methods.py --json bench/out/methods.json

The table is Markdown, ready for ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np

HELD_OUT = 200_000
DEFAULT_SIZES = (10_000, 30_000, 100_000, 300_000, 1_000_000)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pixels of the synthetic scene at random positions, and their classes."""
    from pipeline.synthetic import class_window, signatures

    grid = class_window(0, 0, 1024, 1024, cell=96, n_classes=6, seed=0).ravel()
    rng = np.random.default_rng(seed)
    truth = grid[rng.integers(0, grid.size, n)]
    x = signatures(6, 4, seed=0)[truth] + rng.normal(0, 0.02, (n, 4))
    return x * 10000.0, truth.astype(np.int64)


class _PeakRSS:
    """Peak resident memory of this process while the block runs, in MiB above start."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def one(method: str, n: int, seed: int) -> dict:
    """Fit ``method`` on ``n`` pixels and score it (runs in its own process)."""
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    from pipeline.cluster import METHODS, Sample, fit_on

    x, _ = _data(n, seed)
    held, truth = _data(HELD_OUT, seed + 1)
    sample = Sample.from_array(x, feature_names=[f"band{i}" for i in range(1, 5)],
                               seed=seed)
    k = None if METHODS[method].finds_k else 6
    fit_on(Sample.from_array(x[:2000], seed=seed), k, method=method)  # warm numba/imports
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _PeakRSS() as mem:
            t = time.perf_counter()
            model = fit_on(sample, k, method=method)
            fit_s = time.perf_counter() - t
    block = held.T.astype(np.float32)[:, None, :]
    model.predict_block(block[:, :, :1000])  # compile the kernel
    with threadpool_limits(limits=1):
        t = time.perf_counter()
        labels = model.predict_block(block)[0]
        label_s = time.perf_counter() - t
    noise = model.noise_label
    return {
        "method": method,
        "sample_size": n,
        "fit_s": round(fit_s, 3),
        "fit_peak_mib": round(mem.mib, 1),
        "k": model.k,
        "ari": round(float(adjusted_rand_score(truth, labels)), 4),
        "noise": round(float((labels == noise).mean()), 4) if noise is not None else None,
        "label_mpix_s": round(HELD_OUT / label_s / 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every (method, size) in a subprocess and print a Markdown table."""
    from pipeline.cluster import METHODS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES))
    ap.add_argument("--budget", type=float, default=60.0,
                    help="stop growing a method's sample once a fit takes longer (s)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="kill a single fit after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.seed)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    rows = []
    print("| method | sample | fit s | fit peak MiB | k | ARI | noise | label MPix/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method in args.methods:
        for n in sorted(args.sizes):
            cmd = [sys.executable, __file__, "--one", method, str(n), "--seed",
                   str(args.seed)]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                     timeout=args.timeout, check=True).stdout
            except subprocess.TimeoutExpired:
                print(f"| {method} | {n} | > {args.timeout:.0f} | | | | | |", flush=True)
                break
            except subprocess.CalledProcessError as exc:
                print(f"| {method} | {n} | failed: {exc.stderr.strip().splitlines()[-1]} "
                      "| | | | | |", flush=True)
                break
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            noise = "" if row["noise"] is None else f"{row['noise']:.3f}"
            print(f"| {method} | {n} | {row['fit_s']:.2f} | {row['fit_peak_mib']:.0f} | "
                  f"{row['k']} | {row['ari']:.3f} | {noise} | {row['label_mpix_s']:.2f} |",
                  flush=True)
            if row["fit_s"] > args.budget:
                break
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
