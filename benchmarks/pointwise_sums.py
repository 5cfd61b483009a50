"""Kernel gradients of a 1x1 convolution: the matmul path against the GradientTape path.

``sums.kernel_grads`` computes a 1x1 convolution's kernel gradients as
``x_strided^T g`` because TensorFlow's oneDNN kernel for the conv backprop
crashes the process on strided 1x1 kernels.  This measures what that costs or
saves: ``kernel_grads`` (three ``g``, as a fit's batch sums) against the tape
path (``sums._tape_grads``) for a 32x28x28x64 input and 128 filters, stride 1
and 2, each in a ``tf.function``, with oneDNN on and off.  Each point runs in
its own subprocess (a crash of the tape path is recorded, not fatal); a point
is the median over 15 repetitions of the mean of 5 calls, in wall time and in
process CPU time (steadier on a shared machine).

Prints a table and writes ``benchmarks/results/pointwise_sums.json``.

    python benchmarks/pointwise_sums.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SHAPE, FILTERS, GRADS, REPEATS, CALLS = (32, 28, 28, 64), 128, 3, 15, 5


def measure(path: str, stride: int) -> dict[str, float]:
    """Wall and CPU seconds per call of one path (``GRADS`` gradients), in this process."""
    import keras
    import numpy as np
    import tensorflow as tf

    from innv_pattern.canonize import canonize
    from innv_pattern.patterns import sums

    inp = keras.Input(SHAPE[1:])
    model = keras.Model(inp, keras.layers.Conv2D(FILTERS, 1, strides=stride)(inp))
    op = canonize(model).kernel_ops[0]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=SHAPE), tf.float32)
    out = (SHAPE[0],) + tuple(-(-d // stride) for d in SHAPE[1:3]) + (FILTERS,)
    gs = [tf.constant(rng.normal(size=out), tf.float32) for _ in range(GRADS)]
    grads = sums.kernel_grads if path == "matmul" else sums._tape_grads
    fn = tf.function(lambda x, kernel, *gs: grads(op, x, kernel, list(gs)))
    kernel = op.get_kernel()
    fn(x, kernel, *gs)
    wall, cpu = [], []
    for _ in range(REPEATS):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(CALLS):
            fn(x, kernel, *gs)
        wall.append((time.perf_counter() - start) / CALLS)
        cpu.append((time.process_time() - start_cpu) / CALLS)
    return {"wall_s": float(np.median(wall)), "cpu_s": float(np.median(cpu))}


def run_point(path: str, stride: int, onednn: bool) -> dict[str, float] | str:
    """One point in a fresh subprocess: :func:`measure`'s times, or why it failed."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, __file__, "--worker", path, str(stride)],
                         capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    if run.returncode != 0:
        return f"crashed (exit {run.returncode})"
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "STRIDE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                             / "pointwise_sums.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]))))
        return
    rows = []
    print("oneDNN stride  ms per call (wall / cpu): tape, matmul;  tape/matmul (wall / cpu)")
    for onednn in (True, False):
        for stride in (1, 2):
            tape, matmul = (run_point(p, stride, onednn) for p in ("tape", "matmul"))
            row = {"onednn": onednn, "stride": stride, "tape": tape, "matmul": matmul}
            if isinstance(tape, dict):
                row["tape_over_matmul"] = {k: tape[k] / matmul[k] for k in matmul}
            rows.append(row)
            print(f"{'on' if onednn else 'off':>6} {stride:>6}  {_shown(tape)}, {_shown(matmul)};  "
                  + (_shown(row["tape_over_matmul"], 1, "x") if isinstance(tape, dict) else "-"),
                  flush=True)
    import tensorflow as tf

    Path(args.out).write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__},
        "input": list(SHAPE), "filters": FILTERS, "grads_per_call": GRADS,
        "timing": f"median of {REPEATS} repetitions of the mean of {CALLS} calls",
        "points": rows}, indent=2) + "\n")


def _shown(times: dict[str, float] | str, scale: float = 1e3, unit: str = " ms") -> str:
    if isinstance(times, str):
        return times
    return f"{times['wall_s'] * scale:.2f} / {times['cpu_s'] * scale:.2f}{unit}"


if __name__ == "__main__":
    main()
