"""The GPU check of issue 15, in one process: analysis, fit and a mirrored fit.

* the analyze ratios (every analyzer against a plain gradient) on VGG16-224,
  batch 32 (``benchmarks/analyze.py``'s measurement);
* the fit ratio (``PatternComputer("relu")`` per sample against a training
  step, ``benchmarks/fit_patterns.py``'s measurement) and the peak device
  memory of a fit against an Adam step
  (``tf.config.experimental.get_memory_info``, reset between the two);
* a ``MirroredStrategy`` fit over every GPU it sees, against a fit on one
  device: the patterns must agree to float32 summation order.

Each part writes the JSON as it finishes (a run cut short keeps what it
measured).  ``--smoke`` runs the same code on a tiny CNN (any device; on a
CPU the mirrored fit uses two logical CPUs) in about a minute.

    benchmarks/gpu_check.sh            # on a GPU machine, under 5 minutes
    benchmarks/gpu_check.sh --smoke    # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Largest relative difference between the statistics of a mirrored and a one-device
#: fit (float32 summation order; the patterns of ill-conditioned neurons of an
#: untrained network amplify it, so the statistics are compared).
MIRRORED_RTOL = 1e-5
#: The analyzers of the issue's table.
ANALYZERS = ["gradient", "input_t_gradient", "deconvnet", "guided_backprop", "lrp.z",
             "lrp.epsilon", "pattern.net", "pattern.attribution", "smoothgrad",
             "integrated_gradients"]


def devices(smoke: bool) -> list[str]:
    """The devices to mirror over: every GPU, else (smoke) two logical CPUs."""
    if tf.config.list_physical_devices("GPU"):
        return [d.name for d in tf.config.list_logical_devices("GPU")]
    if smoke:  # before anything initializes the devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return [d.name for d in tf.config.list_logical_devices("CPU")]
    raise SystemExit("No GPU visible: run on a GPU machine, or pass --smoke.")


def peak_memory_mb(device: str, fn) -> float | None:
    """Peak device memory (MiB) while ``fn()`` runs, or ``None`` where unsupported (CPU)."""
    try:
        tf.config.experimental.reset_memory_stats(device)
    except (ValueError, tf.errors.InvalidArgumentError):
        fn()
        return None
    fn()
    return tf.config.experimental.get_memory_info(device)["peak"] / 2**20


def memory(name: str, batch: int, device: str, steps: int) -> dict:
    """Peak memory of Adam steps, then of a fit, on the same model and data."""
    from fit_patterns import MODELS, batches, train_step

    from innv_pattern.patterns import PatternComputer

    model = MODELS[name]()
    x, y = batches(model, batch, steps)
    step = train_step(model, "adam")
    adam = peak_memory_mb(device, lambda: [step(x[i * batch:(i + 1) * batch],
                                               y[i * batch:(i + 1) * batch]).numpy()
                                          for i in range(steps)])
    fit = peak_memory_mb(device, lambda: PatternComputer(model, "relu").compute(
        x, batch_size=batch, verbose=0))
    return {"adam_peak_mb": adam, "fit_peak_mb": fit,
            "memory_ratio_vs_adam": None if adam is None else fit / adam}


def mirrored(name: str, batch: int, names: list[str], steps: int) -> dict:
    """A mirrored fit over ``names`` against a fit on the first device alone."""
    from fit_patterns import MODELS, batches

    from innv_pattern.patterns import PatternComputer

    model = MODELS[name]()
    x, _ = batches(model, batch, steps)
    one = PatternComputer(model, "relu", strategy=tf.distribute.OneDeviceStrategy(names[0]))
    many = PatternComputer(model, "relu", strategy=tf.distribute.MirroredStrategy(names))
    t0 = time.perf_counter()
    a = one.compute(x, batch_size=batch, verbose=0)
    t1 = time.perf_counter()
    b = many.compute(x, batch_size=batch, verbose=0)
    t2 = time.perf_counter()
    worst = 0.0  # float64 statistics, each array relative to its largest entry
    for layer, stats in a.statistics.items():
        for key, value in stats.sums.items():
            diff = np.abs(b.statistics[layer].sums[key] - value).max()
            worst = max(worst, float(diff / max(np.abs(value).max(), 1e-30)))
    return {"devices": names, "replicas": many.strategy.num_replicas_in_sync,
            "samples": a.samples_seen, "one_device_s": t1 - t0, "mirrored_s": t2 - t1,
            "max_relative_difference": worst, "equal": bool(
                worst <= MIRRORED_RTOL and a.samples_seen == b.samples_seen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, any device")
    parser.add_argument("--out", default=None, help="JSON file (default: "
                        "benchmarks/results/gpu_check.json, or a temporary file with --smoke)")
    args = parser.parse_args()
    names = devices(args.smoke)
    model, batch, reps = ("small_cnn", 4, 2) if args.smoke else ("vgg16_224", 32, 5)
    out = Path(args.out or (Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_check_smoke.json"
                            if args.smoke else Path(__file__).parent / "results"
                            / "gpu_check.json"))
    gpus = tf.config.list_physical_devices("GPU")
    result = {"machine": {"platform": platform.platform(), "tensorflow": tf.__version__,
                          "devices": names, "device_name": tf.config.experimental.
                          get_device_details(gpus[0]).get("device_name") if gpus else "CPU"},
              "model": model, "batch": batch, "smoke": args.smoke}

    def part(key: str, fn) -> None:
        t0 = time.perf_counter()
        result[key] = fn()
        result[key + "_wall_s"] = time.perf_counter() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=float))
        print(f"{key}: {json.dumps(result[key], default=float)}", flush=True)

    import analyze
    from fit_patterns import MODELS, measure_time

    part("analyze", lambda: [{k: r[k] for k in ("analyzer", "ratio", "gradient_s", "analyzer_s")}
                             for r in analyze.bench_model(model, MODELS[model](), batch, reps,
                                                          False, ANALYZERS)])
    part("fit", lambda: (lambda t: {**t, "time_ratio": t["fit_ms_per_sample"]
                                    / t["train_ms_per_sample"]})(
        measure_time(model, batch, reps=3, k=2 if args.smoke else 4)))
    part("memory", lambda: memory(model, batch, names[0], steps=4))
    part("mirrored", lambda: mirrored(model, batch * len(names), names, steps=4))
    if not result["mirrored"]["equal"]:
        raise SystemExit(f"The mirrored fit differs from the one-device fit: {result['mirrored']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
