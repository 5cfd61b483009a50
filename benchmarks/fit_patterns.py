"""Fitting ``relu`` patterns for all layers, relative to a training step.

Both are measured in one run, on the same model and batch size:

* time per sample: a training step (forward, backward, SGD update) against
  the marginal cost of one more batch in ``PatternComputer.compute``
  (``t(2k batches) - t(k batches)``, so one-time costs such as tracing, the
  shift pass, finalizing and fingerprinting cancel), with interleaved
  repetitions, in wall time and in process CPU time (steadier on a shared
  machine); the end-to-end ``compute`` time per sample (k = 4: 8 batches,
  one-time costs included) is reported too;
* peak memory (``relu``, and the low-memory ``relu.positive``): each
  workload in a fresh subprocess, the peak resident set
  size (``VmHWM``) of the whole process, and above the resident size once
  the model and data are built; the training step uses plain SGD (the
  target's reference: no optimizer state), and an Adam step (two moments
  per weight) is measured too.

Prints a table and writes ``benchmarks/results/fit_patterns.json``.

    python benchmarks/fit_patterns.py                           # issue 15's configurations
    python benchmarks/fit_patterns.py --configs small_cnn:32    # one model at batch 32

Targets (issue 15): at most 1.5x a training step per sample, peak memory at
most 1.5x an Adam step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from innv_pattern.patterns import PatternComputer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analyze import small_cnn  # noqa: E402  (the same small CNN in every benchmark)

TIME_TARGET, MEMORY_TARGET = 1.5, 1.5
CONFIGS = ["small_cnn:32", "vgg16_64:8", "vgg16_64:32"]


MODELS = {
    "small_cnn": small_cnn,
    "vgg16_64": lambda: keras.applications.VGG16(weights=None, input_shape=(64, 64, 3)),
    "vgg16_224": lambda: keras.applications.VGG16(weights=None, input_shape=(224, 224, 3)),
}


def batches(model: keras.Model, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs and one-hot labels for ``steps`` batches."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (steps * batch,) + tuple(model.input_shape[1:])).astype("float32")
    labels = rng.integers(0, model.output_shape[-1], steps * batch)
    return x, np.eye(model.output_shape[-1], dtype="float32")[labels]


def train_step(model: keras.Model, optimizer: str = "sgd"):
    """One compiled training step (forward, backward, update): plain SGD or Adam."""
    loss_fn = keras.losses.CategoricalCrossentropy()
    optimizer = (keras.optimizers.Adam(learning_rate=1e-4) if optimizer == "adam"
                 else keras.optimizers.SGD(learning_rate=1e-3))
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


def memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MiB (Linux).

    Unlike ``ru_maxrss``, which a child inherits from its parent, the peak
    starts afresh in each executed process.
    """
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def cpu_seconds() -> float:
    """CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(name: str, batch: int, workload: str, steps: int) -> None:
    """Runs one workload in this (fresh) process; prints its memory as JSON."""
    model = MODELS[name]()
    x, y = batches(model, batch, steps)
    baseline = memory_mb("VmRSS")
    if workload.startswith("train"):
        step = train_step(model, "adam" if workload == "train_adam" else "sgd")
        for i in range(steps):
            step(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]).numpy()
    else:  # "fit": both regimes; "fit_positive": the low-memory mode
        pattern_type = "relu.positive" if workload == "fit_positive" else "relu"
        PatternComputer(model, pattern_type).compute(x, batch_size=batch, verbose=0)
    print(json.dumps({"baseline_mb": baseline, "peak_mb": memory_mb("VmHWM")}))


def measure_memory(name: str, batch: int, workload: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, str(batch), workload,
                          str(steps)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def measure_time(name: str, batch: int, reps: int, k: int) -> dict:
    model = MODELS[name]()
    x, y = batches(model, batch, 2 * k)
    step = train_step(model)
    computer = PatternComputer(model, "relu")
    xt, yt = tf.constant(x[:batch]), tf.constant(y[:batch])
    step(xt, yt).numpy()
    computer.compute(x, batch_size=batch, verbose=0)  # traces
    rows = []
    for _ in range(reps):  # interleaved: both see the same machine state
        train = timed(lambda: [step(xt, yt).numpy() for _ in range(k)])
        fit_k = timed(lambda: computer.compute(x[:k * batch], batch_size=batch, verbose=0))
        fit_2k = timed(lambda: computer.compute(x, batch_size=batch, verbose=0))
        rows.append([t / (k * batch) for t in train]
                    + [(b - a) / (k * batch) for a, b in zip(fit_k, fit_2k)]
                    + [t / (2 * k * batch) for t in fit_2k])
    med = 1e3 * np.median(np.array(rows), axis=0)
    return {"batch": batch, "params": int(model.count_params()),
            "train_ms_per_sample": med[0], "train_cpu_ms_per_sample": med[1],
            "fit_ms_per_sample": med[2], "fit_cpu_ms_per_sample": med[3],
            "fit_end_to_end_ms_per_sample": med[4], "fit_end_to_end_cpu_ms_per_sample": med[5]}


def bench(name: str, batch: int, reps: int, k: int) -> dict:
    row = {"model": name, "load_average_before": os.getloadavg(),
           **measure_time(name, batch, reps, k)}
    row["time_ratio"] = row["fit_ms_per_sample"] / row["train_ms_per_sample"]
    row["cpu_time_ratio"] = row["fit_cpu_ms_per_sample"] / row["train_cpu_ms_per_sample"]
    row["end_to_end_time_ratio"] = (row["fit_end_to_end_ms_per_sample"]
                                    / row["train_ms_per_sample"])
    train, adam, fit, positive = (measure_memory(name, batch, w, 2 * k)
                                  for w in ("train", "train_adam", "fit", "fit_positive"))
    row.update(train_peak_mb=train["peak_mb"], fit_peak_mb=fit["peak_mb"],
               train_adam_peak_mb=adam["peak_mb"],
               memory_ratio_vs_adam=fit["peak_mb"] / adam["peak_mb"],
               fit_positive_peak_mb=positive["peak_mb"],
               positive_memory_ratio_vs_adam=positive["peak_mb"] / adam["peak_mb"],
               baseline_mb=min(train["baseline_mb"], fit["baseline_mb"]),
               memory_ratio=fit["peak_mb"] / train["peak_mb"],
               memory_ratio_above_baseline=(fit["peak_mb"] - fit["baseline_mb"])
               / (train["peak_mb"] - train["baseline_mb"]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS,
                        help=f"model:batch pairs, models {list(MODELS)} (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--k", type=int, default=4, help="batches per timed compute")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"
                                             / "fit_patterns.json"))
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.child[2], int(args.child[3]))
    rows = []
    print(f"{'model':10s} {'batch':>5s} {'train ms/s':>10s} {'fit ms/s':>9s} {'time':>6s} "
          f"{'cpu time':>8s} {'end2end':>7s} {'train MB':>9s} {'fit MB':>8s} {'memory':>7s} "
          f"{'above base':>10s} {'vs Adam':>7s} {'low-mem':>7s} {'load':>5s}")
    for config in args.configs:
        name, _, batch = config.partition(":")
        if name not in MODELS or not batch.isdigit():
            parser.error(f"--configs takes model:batch with a model of {list(MODELS)}; "
                         f"received {config!r}")
        r = bench(name, int(batch), args.reps, args.k)
        rows.append(r)
        print(f"{name:10s} {r['batch']:5d} {r['train_ms_per_sample']:10.2f} "
              f"{r['fit_ms_per_sample']:9.2f} {r['time_ratio']:5.2f}x "
              f"{r['cpu_time_ratio']:7.2f}x {r['end_to_end_time_ratio']:6.2f}x "
              f"{r['train_peak_mb']:9.0f} {r['fit_peak_mb']:8.0f} {r['memory_ratio']:6.2f}x "
              f"{r['memory_ratio_above_baseline']:9.2f}x {r['memory_ratio_vs_adam']:6.2f}x "
              f"{r['positive_memory_ratio_vs_adam']:6.2f}x "
              f"{r['load_average_before'][0]:5.2f}",
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_after": os.getloadavg(),
                    "tensorflow": tf.__version__, "keras": keras.__version__,
                    "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU"},
        "targets": {"time_ratio": TIME_TARGET, "memory_ratio": MEMORY_TARGET},
        "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
