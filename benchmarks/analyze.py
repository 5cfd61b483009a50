"""Time every analyzer relative to a plain ``tf.GradientTape`` gradient.

Both are measured side by side in one run, on the same model and batch, with
interleaved repetitions (the median of each is reported).  Prints a table and
writes ``benchmarks/results/analyze.json``.

    python benchmarks/analyze.py               # small CNN and VGG16 at 112x112
    python benchmarks/analyze.py --quick       # small CNN only

Sampling analyzers (smoothgrad, integrated_gradients) are reported per sample
(time divided by their number of samples), the others per analysis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import innv_pattern as ip  # noqa: E402

SAMPLING = {"smoothgrad": 8, "integrated_gradients": 8}


def small_cnn() -> keras.Model:
    """A digits-sized CNN (32x32x3 input)."""
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(inp)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", padding="same")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x))


def vgg16(size: int) -> keras.Model:
    return keras.applications.VGG16(weights=None, input_shape=(size, size, 3))


def fake_patterns(model: keras.Model) -> dict:
    """Random patterns of the right shapes: timing does not depend on values."""
    from innv_pattern.canonize import canonize

    rng = np.random.default_rng(0)
    return {op.name: rng.normal(size=op.kernel_shape).astype("float32")
            for op in canonize(model).kernel_ops}


def plain_gradient(model: keras.Model):
    @tf.function(reduce_retracing=True)
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=False)
            y = tf.reduce_max(y, axis=-1)
        return tape.gradient(y, x)
    return grad


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_model(name: str, model: keras.Model, batch: int, reps: int) -> list[dict]:
    x = np.random.default_rng(1).normal(size=(batch,) + model.input_shape[1:]).astype("float32")
    xt = tf.constant(x)
    base = plain_gradient(model)
    base(xt).numpy()
    patterns = fake_patterns(model)
    rows = []
    for analyzer_name in ip.list_analyzers():
        kwargs = {}
        if analyzer_name in SAMPLING:
            key = "augment_by_n" if analyzer_name == "smoothgrad" else "steps"
            kwargs[key] = SAMPLING[analyzer_name]
        if analyzer_name.startswith("pattern."):
            kwargs["patterns"] = patterns
        analyzer = ip.create_analyzer(analyzer_name, model, **kwargs)
        analyzer.analyze(x)  # trace
        t_an, t_base = [], []
        for _ in range(reps):  # interleaved: both see the same machine state
            t_base.append(median_time(lambda: base(xt).numpy(), 1))
            t_an.append(median_time(lambda: analyzer.analyze(x), 1))
        per = SAMPLING.get(analyzer_name, 1)
        ratio = float(np.median(t_an)) / per / float(np.median(t_base))
        rows.append({"model": name, "analyzer": analyzer_name, "batch": batch,
                     "gradient_s": float(np.median(t_base)), "analyzer_s": float(np.median(t_an)),
                     "per": "sample" if per > 1 else "analysis", "ratio": ratio})
        print(f"{name:14s} {analyzer_name:22s} {rows[-1]['analyzer_s']*1e3:9.1f} ms  "
              f"gradient {rows[-1]['gradient_s']*1e3:8.1f} ms  ratio {ratio:5.2f}x", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CNN only")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "analyze.json"))
    args = parser.parse_args()
    models = [("small_cnn", small_cnn, 32)]
    if not args.quick:
        models.append(("vgg16_112", lambda: vgg16(112), 8))
    rows = []
    for name, make, batch in models:
        rows += bench_model(name, make(), batch, args.reps)
    worst = max(r["ratio"] for r in rows if r["per"] == "analysis")
    print(f"worst non-sampling ratio: {worst:.2f}x (target <= 1.10x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "target": 1.10, "worst_ratio": worst, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
