"""Time every analyzer relative to a plain ``tf.GradientTape`` gradient.

Both are measured side by side in one run, on the same model and batch, with
interleaved repetitions (the median of each is reported).  Prints a table and
writes ``benchmarks/results/analyze.json``.

    python benchmarks/analyze.py                         # every model below
    python benchmarks/analyze.py --models small_cnn      # one model
    python benchmarks/analyze.py --xla                   # also XLA-compiled analyses

Models: a small CNN (batch 32), VGG16-shaped at 64x64 and 112x112 and
ResNet50-shaped at 64x64 (batch 8), all ``weights=None``.

Sampling analyzers (smoothgrad, integrated_gradients) are reported per sample
(time divided by their number of samples), the others per analysis.  The ratio
is the median over repetitions of (analysis time / the gradient timed just
before it), robust to a machine whose load drifts; ``first_call_s`` is
``create_analyzer`` plus the first (tracing) call.
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
    """Random patterns of the kernels' shapes and scales: timing does not depend on values.

    At the kernels' scale the back-projected signal stays in float32's range
    (unit-variance patterns overflow it through ResNet50's 53 kernel layers,
    which the analyzer refuses).
    """
    from innv_pattern.canonize import canonize

    rng = np.random.default_rng(0)
    return {op.name: (rng.normal(size=op.kernel_shape) * float(np.std(op.get_kernel().numpy()))
                      ).astype("float32")
            for op in canonize(model, merge_kernels=True).kernel_ops}


MODELS = {
    "small_cnn": (lambda: small_cnn(), 32),
    "vgg16_64": (lambda: vgg16(64), 8),
    "vgg16_112": (lambda: vgg16(112), 8),
    "resnet50_64": (lambda: keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3)), 8),
}


def plain_gradient(model: keras.Model, jit: bool = False):
    @tf.function(reduce_retracing=True, jit_compile=jit)
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


def bench_model(name: str, model: keras.Model, batch: int, reps: int, jit: bool,
                analyzers: list[str]) -> list[dict]:
    x = np.random.default_rng(1).normal(size=(batch,) + model.input_shape[1:]).astype("float32")
    xt = tf.constant(x)
    base = plain_gradient(model, jit)
    base(xt).numpy()
    patterns = fake_patterns(model)
    rows = []
    for analyzer_name in analyzers:
        kwargs = {}
        if analyzer_name in SAMPLING:
            key = "augment_by_n" if analyzer_name == "smoothgrad" else "steps"
            kwargs[key] = SAMPLING[analyzer_name]
        if analyzer_name.startswith("pattern."):
            kwargs["patterns"] = patterns
        t0 = time.perf_counter()
        analyzer = ip.create_analyzer(analyzer_name, model, jit_compile=jit, **kwargs)
        analyzer.analyze(x)  # trace
        first = time.perf_counter() - t0
        t_an, t_base = [], []
        for _ in range(reps):  # interleaved: both see the same machine state
            t_base.append(median_time(lambda: base(xt).numpy(), 1))
            t_an.append(median_time(lambda: analyzer.analyze(x), 1))
        per = SAMPLING.get(analyzer_name, 1)
        ratio = float(np.median(np.array(t_an) / np.array(t_base))) / per
        rows.append({"model": name, "xla": jit, "analyzer": analyzer_name, "batch": batch,
                     "gradient_s": float(np.median(t_base)), "analyzer_s": float(np.median(t_an)),
                     "per": "sample" if per > 1 else "analysis", "ratio": ratio,
                     "first_call_s": first})
        print(f"{name + (' xla' if jit else ''):16s} {analyzer_name:22s} {rows[-1]['analyzer_s']*1e3:9.1f} ms  "
              f"gradient {rows[-1]['gradient_s']*1e3:8.1f} ms  ratio {ratio:5.2f}x  "
              f"first call {first:6.2f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--analyzers", nargs="+", choices=ip.list_analyzers(),
                        default=ip.list_analyzers())
    parser.add_argument("--xla", action="store_true", help="also measure jit_compile=True")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "analyze.json"))
    args = parser.parse_args()
    rows = []
    for name in args.models:
        make, batch = MODELS[name]
        model = make()
        for jit in ([False, True] if args.xla else [False]):
            rows += bench_model(name, model, batch, args.reps, jit, args.analyzers)
    worst = max((r["ratio"] for r in rows if r["per"] == "analysis" and not r["xla"]),
                default=float("nan"))
    print(f"worst non-sampling ratio: {worst:.2f}x (target <= 1.10x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "target": 1.10, "worst_ratio": worst, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
