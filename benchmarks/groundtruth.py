"""Every analyzer on data with a known answer (issue 14): XAI-TRIS 8x8 scenarios.

Runs :func:`innv_pattern.groundtruth_benchmark.run_benchmark` over the four
scenarios (LIN, MULT, RIGID, XOR) and two backgrounds (WHITE, CORR) with a
linear model (LIN only), an MLP and a small CNN, every analyzer of the library
and three baselines (random map, Sobel edge map, the input), scored by the EMD
score, top-k precision, mass on the ground truth and AUROC; then each
analyzer's input invariance on the LIN/WHITE models.

    python benchmarks/groundtruth.py            # full: about 20 minutes on 2 cores
    python benchmarks/groundtruth.py --quick    # what `innv-pattern benchmark` runs: ~4 min

Writes ``benchmarks/results/groundtruth{,_quick}.json``, ``.md`` (score
matrices, invariance table) and ``_scores.png`` / ``_examples.png``.
``benchmarks/results/groundtruth_discussion.md`` compares them with the
published findings.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from innv_pattern.groundtruth_benchmark import run_benchmark  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small version (minutes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run_benchmark(RESULTS, quick=args.quick, seed=args.seed,
                  prefix="groundtruth_quick" if args.quick else "groundtruth")


if __name__ == "__main__":
    main()
