"""A 1x1 convolution as canonize builds it (strided selection + matrix product) against the conv op.

TensorFlow's oneDNN kernels for the gradients of strided 1x1 convolutions
crash the process, so :mod:`innv_pattern.canonize` makes every 1x1
convolution's ``linear(x, K)`` a selection of ``x`` at the positions
``0, s, 2s, ...`` followed by a matrix product over the channel axis.  This
measures what that costs or saves, for two shapes (32x28x28x64 input with 128
filters; ResNet50's 8x16x16x256 with 512), stride 1 and 2, oneDNN on and off:

* ``analysis``: the forward pass and the input gradient (what every analyzer
  runs per 1x1 layer);
* ``fit``: three kernel gradients (a pattern fit's batch sums,
  ``sums.kernel_grads``);

each for ``conv`` (``keras.ops.conv``, the former ``linear``) and ``matmul``
(the canonical op's ``linear``).  For stride 2 the analysis is also timed with
the selection made by ``gather`` (``tf.gather`` per axis) and by
``strided_slice`` (``x[:, ::s, ::s]``) instead of canonize's pad, reshape and
slice.  Each point runs in its own subprocess (a crash is recorded, not
fatal), in a ``tf.function``; a point is the median over 15 repetitions of the
mean of 5 calls, in wall time and in process CPU time (steadier on a shared
machine).

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
from typing import Any, Callable

#: name -> (input shape, filters).
SHAPES = {"32x28x28x64": ((32, 28, 28, 64), 128), "8x16x16x256": ((8, 16, 16, 256), 512)}
GRADS, REPEATS, CALLS = 3, 15, 5
FORMS = ("conv", "matmul")
SELECTIONS = ("gather", "strided_slice")


def linear_of(form: str, stride: int, op: Any) -> Callable[[Any, Any], Any]:
    """``linear(x, K)`` of a 1x1 convolution with ``stride``, in the form named."""
    import keras
    import tensorflow as tf

    if form == "conv":
        return lambda x, k: keras.ops.conv(x, k, strides=stride)
    if form == "matmul":
        return op.linear

    def select(x: Any) -> Any:
        if form == "strided_slice":
            return x[:, ::stride, ::stride, :]
        for axis in (1, 2):
            x = tf.gather(x, tf.range(0, tf.shape(x)[axis], stride), axis=axis)
        return x

    return lambda x, k: keras.ops.matmul(select(x), tf.reshape(k, k.shape[-2:]))


def measure(form: str, task: str, shape_name: str, stride: int) -> dict[str, float]:
    """Wall and CPU seconds per call of one point, in this process."""
    import keras
    import numpy as np
    import tensorflow as tf

    from innv_pattern.canonize import canonize
    from innv_pattern.patterns import sums

    shape, filters = SHAPES[shape_name]
    inp = keras.Input(shape[1:])
    op = canonize(keras.Model(inp, keras.layers.Conv2D(filters, 1, strides=stride)(inp))
                  ).kernel_ops[0]
    op.linear = linear_of(form, stride, op)  # this process's copy only
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape), tf.float32)
    out = (shape[0],) + tuple(-(-d // stride) for d in shape[1:3]) + (filters,)
    gs = [tf.constant(rng.normal(size=out), tf.float32) for _ in range(GRADS)]
    kernel = op.get_kernel()

    def analysis(x: tf.Tensor, kernel: tf.Tensor, g: tf.Tensor, *_: tf.Tensor) -> list:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = op.linear(x, kernel)
        return [y, tape.gradient(y, x, output_gradients=g)]

    def fit(x: tf.Tensor, kernel: tf.Tensor, *gs: tf.Tensor) -> list:
        return sums.kernel_grads(op, x, kernel, list(gs))

    fn = tf.function(analysis if task == "analysis" else fit)
    fn(x, kernel, *gs)
    wall, cpu = [], []
    for _ in range(REPEATS):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(CALLS):
            [t.numpy() for t in fn(x, kernel, *gs)]
        wall.append((time.perf_counter() - start) / CALLS)
        cpu.append((time.process_time() - start_cpu) / CALLS)
    return {"wall_s": float(np.median(wall)), "cpu_s": float(np.median(cpu))}


def run_point(form: str, task: str, shape_name: str, stride: int,
              onednn: bool) -> dict[str, float] | str:
    """One point in a fresh subprocess: :func:`measure`'s times, or why it failed."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, __file__, "--worker", form, task, shape_name,
                          str(stride)], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    if run.returncode != 0:
        return f"crashed (exit {run.returncode})"
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=4, metavar=("FORM", "TASK", "SHAPE", "STRIDE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                             / "pointwise_sums.json"))
    args = parser.parse_args()
    if args.worker:
        form, task, shape_name, stride = args.worker
        print(json.dumps(measure(form, task, shape_name, int(stride))))
        return
    rows = []
    print("oneDNN shape        stride task      ms per call (wall / cpu): "
          + ", ".join(FORMS + SELECTIONS))
    for onednn in (True, False):
        for shape_name in SHAPES:
            for stride in (1, 2):
                for task in ("analysis", "fit"):
                    forms = FORMS + (SELECTIONS if stride > 1 and task == "analysis" else ())
                    row = {"onednn": onednn, "shape": shape_name, "stride": stride, "task": task,
                           **{f: run_point(f, task, shape_name, stride, onednn) for f in forms}}
                    rows.append(row)
                    print(f"{'on' if onednn else 'off':>6} {shape_name:12s} {stride:>6} {task:9s} "
                          + ", ".join(_shown(row[f]) for f in forms), flush=True)
    import tensorflow as tf

    Path(args.out).write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "load_average": os.getloadavg()},
        "shapes": {k: {"input": list(s), "filters": f} for k, (s, f) in SHAPES.items()},
        "fit_grads_per_call": GRADS,
        "timing": f"median of {REPEATS} repetitions of the mean of {CALLS} calls",
        "points": rows}, indent=2) + "\n")


def _shown(times: dict[str, float] | str) -> str:
    if isinstance(times, str):
        return times
    return f"{times['wall_s'] * 1e3:.2f} / {times['cpu_s'] * 1e3:.2f}"


if __name__ == "__main__":
    main()
