"""PatternNet and PatternAttribution on trained modern networks (issue 13).

Trains eight networks on the ``digits32`` data (sklearn's 1,797 digits upscaled
to 32x32x3, three copies of each shifted by up to 3 pixels: 5,391 images in
[0, 1], split by source digit into train and held-out), fits patterns, and
measures every analyzer on held-out images:

* image degradation (4x4 patches replaced by their mean, 20 steps, the selected
  *logit*) and its AOPC, with a random order as the baseline; signal methods
  (PatternNet, gradient, Guided BackProp) rank by |signal| summed over channels
  and are labelled ``(abs)``, attributions rank by their channel sum;
* max |analysis| next to max |input|;
* the share of sum |analysis| on a 4-pixel border (a uniform map puts 43.75%
  there);
* input invariance (Kindermans et al., 2017): a twin model with the first
  kernel layer's bias compensating a constant shift ``m`` of the input (and
  padding with ``m`` where the first kernel layer reads padding) computes
  ``twin(x + m) == model(x)``; the relative change of each analysis;
* PatternAttribution's relevance bookkeeping per layer.

Networks: ``plain`` (10 3x3 ReLU convs, max pooling, dense head), ``plain_bn``,
``residual`` (ResNet-20-style, no BN), ``residual_bn``, ``xception`` (a
mini-Xception: separable convs, BN, 1x1 stride-2 residual shortcuts),
``densenet`` (BN-ReLU-conv, Concatenate), ``resnet50`` and ``mobilenetv2``
(``keras.applications``, ``weights=None``).

Each network is trained once (cached under ``/tmp/innv_tn_cache``) in a
subprocess and measured in its own subprocess, with TensorFlow's defaults:
TensorFlow's oneDNN kernel for the kernel gradient of some 1x1 stride-2
convolutions corrupts the heap (issue 13).  If a process dies (a signal, not an
exception) the crash is recorded and the step is repeated with
``TF_ENABLE_ONEDNN_OPTS=0`` (which makes training ResNet50 10x slower).  Any analyzer that raises is recorded with its message.

    python benchmarks/trained_networks.py                 # everything (< 15 min, 2 cores)
    python benchmarks/trained_networks.py --quick         # 2 nets, fewer epochs and images
    python benchmarks/trained_networks.py --nets plain residual_bn --estimators relu linear
    python benchmarks/trained_networks.py --replot       # table, JSON, figure of the last run

Networks are trained and measured ``--jobs`` at a time (default 2, each subprocess
with cores/jobs threads).

Writes ``benchmarks/results/trained_networks.json`` and ``.png``
(``trained_networks_quick.*`` with ``--quick``, ``trained_networks_subset.*``
for a subset of the networks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path("/tmp/innv_tn_cache")
DATA_VERSION = "d1"          # bump when the data or a builder changes (cache key)

NETS = ("plain", "plain_bn", "residual", "residual_bn", "xception", "densenet",
        "resnet50", "mobilenetv2")
QUICK_NETS = ("plain", "residual_bn")
EPOCHS = {"plain": 4, "plain_bn": 3, "residual": 4, "residual_bn": 3, "xception": 5,
          "densenet": 3, "resnet50": 3, "mobilenetv2": 3}
#: CPU seconds on one thread (one training epoch; the measurement), to balance parallel jobs.
COST = {"plain": (4, 42), "plain_bn": (5, 44), "residual": (11, 120), "residual_bn": (13, 138),
        "xception": (3.4, 50), "densenet": (20, 126), "resnet50": (37, 296),
        "mobilenetv2": (8, 108)}
QUICK_EPOCHS = 2
SHIFT = np.array([-0.5, -0.3, -0.7], np.float32)   # the input shift m of the invariance test
PATCH, STEPS, BORDER = 4, 20, 4
UNIFORM_BORDER = 1.0 - (32 - 2 * BORDER) ** 2 / 32 ** 2
SIGNALS = ("pattern.net", "gradient", "guided_backprop")   # ranked by |.| summed over channels


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------
def digits32(seed: int) -> dict[str, np.ndarray]:
    """The digits32 data: ``x_train, y_train, x_test, y_test`` (split by source digit)."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = (bunch.images / 16.0).astype(np.float32)[..., None]
    big = np.clip(tf.image.resize(small, (32, 32), method="bilinear").numpy(), 0, 1)
    rng = np.random.default_rng(seed)
    n = len(big)
    copies = []
    for _ in range(3):
        shifts = rng.integers(-3, 4, size=(n, 2))
        copies.append(np.stack([_shift(img, dy, dx) for img, (dy, dx) in zip(big, shifts)]))
    x = np.repeat(np.concatenate(copies), 3, axis=-1).astype(np.float32)
    y = np.tile(bunch.target, 3).astype(np.int64)
    source = np.tile(np.arange(n), 3)
    held_out = np.zeros(n, bool)
    held_out[rng.permutation(n)[: n // 5]] = True
    test = held_out[source]
    train_idx = rng.permutation(np.flatnonzero(~test))
    test_idx = rng.permutation(np.flatnonzero(test))
    return {"x_train": x[train_idx], "y_train": y[train_idx],
            "x_test": x[test_idx], "y_test": y[test_idx]}


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` moved by ``(dy, dx)`` pixels, zeros shifted in."""
    out = np.zeros_like(img)
    h, w = img.shape[:2]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


# ---------------------------------------------------------------------------
# Networks (all: 32x32x3 in, Dense(10, softmax) out; own nets read no padding
# in the first conv).
# ---------------------------------------------------------------------------
def _conv(x: Any, filters: int, bn: bool, name: str, relu: bool = True, kernel: int = 3,
          strides: int = 1, padding: str = "same") -> Any:
    import keras

    L = keras.layers
    x = L.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=not bn,
                 name=name)(x)
    if bn:
        x = L.BatchNormalization(name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x) if relu else x


def build_plain(bn: bool) -> Any:
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, 3), name="input")
    x = _conv(inp, 16, bn, "conv1", padding="valid")                     # 30
    x = _conv(x, 16, bn, "conv2")
    x = L.MaxPooling2D(2, name="pool1")(x)                               # 15
    for i in (3, 4, 5):
        x = _conv(x, 32, bn, f"conv{i}")
    x = L.MaxPooling2D(2, name="pool2")(x)                               # 7
    for i in (6, 7, 8):
        x = _conv(x, 64, bn, f"conv{i}")
    x = L.MaxPooling2D(2, name="pool3")(x)                               # 3
    for i in (9, 10):
        x = _conv(x, 64, bn, f"conv{i}")
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(64, activation="relu", name="dense1")(x)
    out = L.Dense(10, activation="softmax", name="logits")(x)
    return keras.Model(inp, out, name="plain_bn" if bn else "plain")


def build_residual(bn: bool) -> Any:
    """ResNet-20 style: 3 stages x 3 basic blocks (16, 32, 64 filters), GAP, Dense."""
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, 3), name="input")
    x = _conv(inp, 16, bn, "stem", padding="valid")                      # 30
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            name = f"s{stage + 1}b{block + 1}"
            strides = 2 if stage > 0 and block == 0 else 1
            y = _conv(x, filters, bn, f"{name}_conv1", strides=strides)
            y = _conv(y, filters, bn, f"{name}_conv2", relu=False)
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = _conv(x, filters, bn, f"{name}_proj", relu=False, kernel=1,
                                 strides=strides)
            x = L.Add(name=f"{name}_add")([y, shortcut])
            x = L.ReLU(name=f"{name}_out")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, activation="softmax", name="logits")(x)
    return keras.Model(inp, out, name="residual_bn" if bn else "residual")


def build_xception() -> Any:
    """mini-Xception (Arriaga et al.'s emotion CNN) for 32x32x3, Dense head."""
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, 3), name="input")
    x = _conv(inp, 8, True, "conv1", padding="valid")                    # 30
    x = _conv(x, 8, True, "conv2")
    for i, filters in enumerate((16, 32, 64, 128)):
        name = f"m{i + 1}"
        shortcut = L.Conv2D(filters, 1, strides=2, padding="same", use_bias=False,
                            name=f"{name}_short")(x)
        shortcut = L.BatchNormalization(name=f"{name}_short_bn")(shortcut)
        x = L.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep1")(x)
        x = L.BatchNormalization(name=f"{name}_sep1_bn")(x)
        x = L.ReLU(name=f"{name}_sep1_relu")(x)
        x = L.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep2")(x)
        x = L.BatchNormalization(name=f"{name}_sep2_bn")(x)
        x = L.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
        x = L.Add(name=f"{name}_add")([x, shortcut])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, activation="softmax", name="logits")(x)
    return keras.Model(inp, out, name="xception")


def build_densenet() -> Any:
    """DenseNet-BC-like: 3 dense blocks of 4 BN-ReLU-conv(12) layers, transitions, GAP."""
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, 3), name="input")
    x = L.Conv2D(24, 3, padding="valid", use_bias=False, name="stem")(inp)     # 30
    for block in range(3):
        for layer in range(4):
            name = f"b{block + 1}l{layer + 1}"
            y = L.BatchNormalization(name=f"{name}_bn")(x)
            y = L.ReLU(name=f"{name}_relu")(y)
            y = L.Conv2D(12, 3, padding="same", use_bias=False, name=f"{name}_conv")(y)
            x = L.Concatenate(name=f"{name}_cat")([x, y])
        if block < 2:
            name = f"t{block + 1}"
            x = L.BatchNormalization(name=f"{name}_bn")(x)
            x = L.ReLU(name=f"{name}_relu")(x)
            x = L.Conv2D(int(x.shape[-1]) // 2, 1, use_bias=False, name=f"{name}_conv")(x)
            x = L.AveragePooling2D(2, name=f"{name}_pool")(x)
    x = L.BatchNormalization(name="final_bn")(x)
    x = L.ReLU(name="final_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, activation="softmax", name="logits")(x)
    return keras.Model(inp, out, name="densenet")


def build(name: str) -> Any:
    import keras

    builders = {
        "plain": lambda: build_plain(False), "plain_bn": lambda: build_plain(True),
        "residual": lambda: build_residual(False), "residual_bn": lambda: build_residual(True),
        "xception": build_xception, "densenet": build_densenet,
        "resnet50": lambda: keras.applications.ResNet50(
            weights=None, input_shape=(32, 32, 3), classes=10),
        "mobilenetv2": lambda: keras.applications.MobileNetV2(
            weights=None, input_shape=(32, 32, 3), classes=10),
    }
    return builders[name]()


def cache_path(name: str, seed: int, epochs: int) -> Path:
    return CACHE / f"{name}_seed{seed}_ep{epochs}_{DATA_VERSION}.weights.h5"


def train(name: str, data: dict, seed: int, epochs: int, use_cache: bool) -> dict:
    """Trains (or loads) ``name``; returns accuracies and seconds, caches the weights."""
    import keras

    path = cache_path(name, seed, epochs)
    info_path = path.with_suffix(".json")
    if use_cache and path.exists() and info_path.exists():
        return json.loads(info_path.read_text())
    keras.utils.set_random_seed(seed)
    model = build(name)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(data["x_train"], data["y_train"], batch_size=64, epochs=epochs,
                        verbose=0, shuffle=True).history
    recalibrate_batchnorm(model, data["x_train"][:1024])
    seconds = time.perf_counter() - start
    train_acc = model.evaluate(data["x_train"], data["y_train"], batch_size=256, verbose=0)[1]
    val_acc = model.evaluate(data["x_test"], data["y_test"], batch_size=256, verbose=0)[1]
    CACHE.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    info = {"epochs": epochs, "train_seconds": round(seconds, 1),
            "fit_history": {k: [round(float(v), 4) for v in vs] for k, vs in history.items()},
            "batchnorm_recalibrated": any(_batchnorms(model)), "train_acc": float(train_acc),
            "val_acc": float(val_acc), "params": int(model.count_params())}
    info_path.write_text(json.dumps(info))
    return info


def _batchnorms(model: Any) -> list:
    import keras

    return [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]


def recalibrate_batchnorm(model: Any, x: np.ndarray) -> None:
    """Sets every BatchNormalization's moving statistics to those of ``x`` ("precise BN").

    After a few epochs the moving averages (momentum 0.99) still lag the weights;
    one training-mode pass with momentum 0 replaces them by the statistics of
    ``x`` as the trained network computes them.
    """
    layers = _batchnorms(model)
    if not layers:
        return
    saved = [l.momentum for l in layers]
    for l in layers:
        l.momentum = 0.0
    model(x, training=True)
    for l, momentum in zip(layers, saved):
        l.momentum = momentum


def load_trained(name: str, seed: int, epochs: int) -> Any:
    """The trained network from the cache, trained first if it is not cached."""
    if not cache_path(name, seed, epochs).exists():
        log(f"{name}: training (not cached)")
        train(name, digits32(seed), seed, epochs, True)
    model = build(name)
    model.load_weights(cache_path(name, seed, epochs))
    return model


# ---------------------------------------------------------------------------
# The input-invariance twin.
# ---------------------------------------------------------------------------
def first_kernel_layer(model: Any) -> Any:
    """The first Conv2D of ``model`` (all nets here start with one)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer
    raise ValueError(f"{model.name} has no Conv2D")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def make_twin(model: Any, m: np.ndarray | None, dtype: str = "float32") -> tuple[Any, str]:
    """A model with ``twin(x + m) == model(x)``: same weights, the first conv's bias
    ``b - sum_fan-in(K) m``, and padding that reads ``m`` instead of 0 where the first
    conv reads padding (a ``ZeroPadding2D`` before it, or its own ``'same'``).

    The padding is ``keras.ops.pad`` (zeros) plus a constant tensor holding ``m`` on
    the border, both on symbolic tensors.  Returns the twin and a description.
    Every layer and the weights are in ``dtype`` (the compensated bias is computed
    in float64).  ``m=None`` gives an exact copy of ``model`` in ``dtype``.
    """
    import keras

    first = first_kernel_layer(model)
    node = first._inbound_nodes[0]
    feeding = node.input_tensors[0]._keras_history.operation
    pad_layer = feeding if isinstance(feeding, keras.layers.ZeroPadding2D) else None
    kernel_shape = tuple(first.kernel.shape)
    notes = []
    shift = None if m is None else np.asarray(m, np.float64)

    def constant_pad(x: Any, pads: tuple) -> Any:
        (top, bottom), (left, right) = pads
        h, w, c = (int(d) for d in x.shape[1:])
        border = np.zeros((1, h + top + bottom, w + left + right, c), dtype)
        border[...] = shift
        border[:, top:top + h, left:left + w, :] = 0.0
        padded = keras.ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
        return padded + border

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = dtype
        if layer is first and shift is not None:
            config.update(use_bias=True, padding="valid")
        return layer.__class__.from_config(config)

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if shift is None:
            return layer(*args, **kwargs)
        if pad_layer is not None and layer.name == pad_layer.name:
            return constant_pad(args[0], tuple(tuple(p) for p in pad_layer.padding))
        if layer.name == first.name and first.padding == "same":
            x = args[0]
            pads = tuple(_same_padding(int(x.shape[1 + i]), kernel_shape[i], first.strides[i])
                         for i in range(2))
            return layer(constant_pad(x, pads), **kwargs)
        return layer(*args, **kwargs)

    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=dtype, name=t.name), model.input)
    twin = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone,
                                    call_function=call)
    for layer in model.layers:
        if not layer.weights:
            continue
        target = twin.get_layer(layer.name)
        if layer is first and shift is not None:
            kernel = np.asarray(first.kernel, np.float64)
            bias = np.asarray(first.bias, np.float64) if first.use_bias else np.zeros(kernel.shape[-1])
            compensation = np.einsum("hwio,i->o", kernel, shift)
            target.set_weights([kernel.astype(dtype), (bias - compensation).astype(dtype)])
        else:
            target.set_weights([w.astype(dtype) for w in layer.get_weights()])
    if shift is None:
        return twin, f"a copy in {dtype}"
    if pad_layer is not None:
        notes.append(f"'{pad_layer.name}' (ZeroPadding2D) replaced by keras.ops.pad + a constant "
                     "border of m")
    if first.padding == "same":
        notes.append(f"'{first.name}' padding 'same' -> explicit keras.ops.pad + a constant border "
                     "of m, then 'valid'")
    if not first.use_bias:
        notes.append(f"'{first.name}' had no bias: the twin's has one")
    notes.append(f"first kernel layer '{first.name}': bias b - sum(K) m")
    return twin, "; ".join(notes)


def logits_of(model: Any, x: np.ndarray) -> np.ndarray:
    """Pre-softmax outputs, computed with Keras only (features @ W + b of the last Dense)."""
    import keras

    last = model.layers[-1]
    features = keras.Model(model.inputs, last.input)(x, training=False)
    return np.asarray(features) @ np.asarray(last.kernel) + np.asarray(last.bias)


# ---------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------
def analyzer_specs(estimators: list[str]) -> list[tuple[str, str, dict]]:
    """``(label, analyzer name, kwargs)``; signal methods get ``(abs)`` labels."""
    specs = []
    for est in estimators:
        specs.append((f"pattern.attribution[{est}]", "pattern.attribution", {"pattern_type": est}))
        specs.append((f"pattern.net[{est}] (abs)", "pattern.net", {"pattern_type": est}))
    specs += [("lrp.epsilon", "lrp.epsilon", {}), ("gradient (abs)", "gradient", {}),
              ("input_t_gradient", "input_t_gradient", {}),
              ("integrated_gradients", "integrated_gradients", {"steps": 16}),
              ("guided_backprop (abs)", "guided_backprop", {})]
    return specs


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 600 else text[:600] + " ..."


def run_analyzer(model: Any, name: str, kwargs: dict, patterns: Any, x: np.ndarray,
                 batch: int = 50) -> dict:
    """``{"analysis": array}`` or ``{"error": message}``, plus warnings raised on the way."""
    import innv_pattern as ip

    out: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            extra = dict(kwargs)
            if name.startswith("pattern."):
                if isinstance(patterns, BaseException):
                    raise RuntimeError(f"pattern fit failed: {_short(patterns)}")
                extra["patterns"] = patterns
            analyzer = ip.create_analyzer(name, model, neuron_selection_mode="max_activation",
                                          **extra)
            start = time.perf_counter()
            out["analysis"] = analyzer.analyze(x, batch_size=batch)
            out["seconds"] = round(time.perf_counter() - start, 2)
            out["analyzer"] = analyzer
        except Exception as exc:  # recorded, never fatal
            out["error"] = _short(exc)
    notes = sorted({f"{w.category.__name__}: {str(w.message)[:400]}" for w in caught
                    if "FallbackWarning" in w.category.__name__})
    if notes:
        out["warnings"] = notes
    return out


def ranking(label: str, analysis: np.ndarray) -> np.ndarray:
    """Per-pixel score: |.| summed over channels for signals, the channel sum otherwise."""
    if label.endswith("(abs)"):
        return np.abs(analysis).sum(-1)
    return analysis.sum(-1)


def border_share(analysis: np.ndarray) -> float:
    heat = np.abs(analysis).sum(-1)
    inner = heat[:, BORDER:-BORDER, BORDER:-BORDER].sum()
    total = heat.sum()
    return float((total - inner) / total) if total > 0 else float("nan")


def degradation(model: Any, scores: dict[str, Any], x: np.ndarray) -> dict[str, dict]:
    """Degradation curve and AOPC per ranking (``"random"`` for the random order).

    All rankings go through one ``perturbation_curve`` call (the images repeated
    once per ranking; each image's curve is independent of the others), so the
    forward pass is compiled once instead of once per analyzer.
    """
    from innv_pattern.evaluate.perturbation import aopc, perturbation_curve

    def curves(score: Any, xs: np.ndarray) -> np.ndarray:
        return perturbation_curve(model, score, xs, patch_size=PATCH, steps=STEPS,
                                  output="logit", batch_size=200)["per_sample"]

    out = {}
    ranked = [k for k in scores if not isinstance(scores[k], str)]
    if ranked:
        per_sample = curves(np.concatenate([scores[k] for k in ranked]),
                            np.tile(x, (len(ranked), 1, 1, 1)))
        for i, k in enumerate(ranked):
            part = per_sample[i * len(x):(i + 1) * len(x)]
            out[k] = {"aopc": aopc(part), "curve": [float(v) for v in part.mean(0)]}
    for k in scores:
        if isinstance(scores[k], str):
            part = curves(scores[k], x)
            out[k] = {"aopc": aopc(part), "curve": [float(v) for v in part.mean(0)]}
    return out


def fit_patterns(model: Any, estimators: list[str], x: np.ndarray) -> tuple[Any, dict]:
    from innv_pattern.patterns import PatternComputer

    info: dict[str, Any] = {"estimators": estimators, "samples": len(x)}
    start = time.perf_counter()
    try:
        patterns = PatternComputer(model, tuple(estimators)).compute(x, batch_size=100, verbose=0)
        degenerate: dict[str, int] = {}
        for per_type in getattr(patterns, "degenerate", {}).values():
            for t, count in per_type.items():
                degenerate[t] = degenerate.get(t, 0) + int(np.sum(count))
        info["degenerate_neurons"] = degenerate
    except Exception as exc:
        patterns = exc
        info["error"] = _short(exc)
    info["seconds"] = round(time.perf_counter() - start, 1)
    return patterns, info


def relevance_bookkeeping(analyzer: Any, x: np.ndarray) -> dict:
    """Where PatternAttribution's relevance goes, per kernel layer and ReLU.

    Relevance at a tensor is the analyzer's modified gradient of
    ``sum(start * y)`` w.r.t. it (``start`` = the selected logit's value, one-hot).
    Reads the analyzer's internals (``_graph``, ``_rules``, ``_start``): kept in
    this one function so that it is easy to adapt when they change.
    """
    import tensorflow as tf
    from innv_pattern.canonize import ActivationOp, KernelOp

    graph = analyzer._graph
    call = getattr(analyzer, "_call", None) or (lambda op, *a: analyzer._rules[op.name](*a))
    xt = tf.constant(x)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(xt)
        outs, values = graph.run([xt], call=call, keep=True)
        y = tf.reshape(outs[0], [len(x), -1])
    start = analyzer._start(y, tf.fill([len(x)], -1))
    watched = [op for op in graph.ops if isinstance(op, KernelOp)
               or (isinstance(op, ActivationOp) and op.activation in ("relu", "relu6"))]
    keys = sorted({k for op in watched for k in (op.inputs[0], op.outputs[0])})
    grads = tape.gradient(y, [values[k] for k in keys] + [xt], output_gradients=start)
    relevance = {k: (None if g is None else g.numpy().astype(np.float64))
                 for k, g in zip(keys, grads[:-1])}
    r_in = grads[-1].numpy().astype(np.float64)
    # The relevance entering the net is the start itself; report it against the
    # selected logit (the two agree for analyzers that start from the value).
    logit = tf.reduce_sum(tf.where(start != 0, y, tf.zeros_like(y)), axis=1).numpy().astype(np.float64)
    start_total = float(tf.reduce_sum(start).numpy())
    per_image = r_in.reshape(len(x), -1).sum(1) / logit
    layers = []
    for op in watched:
        r_out, r_inp = relevance[op.outputs[0]], relevance[op.inputs[0]]
        if r_out is None or r_inp is None:
            continue
        s_out, s_in = float(r_out.sum()), float(r_inp.sum())
        layers.append({"op": op.name, "kind": "kernel" if isinstance(op, KernelOp) else "relu",
                       "share": s_in / s_out if s_out else float("nan"),
                       "in": s_in, "out": s_out})
    kernel = [l["share"] for l in layers if l["kind"] == "kernel" and np.isfinite(l["share"])]
    relu = [l["share"] for l in layers if l["kind"] == "relu" and np.isfinite(l["share"])]
    return {"images": len(x), "input_sum": float(r_in.sum()), "logit_sum": float(logit.sum()),
            "total_over_logit": float(r_in.sum() / logit.sum()),
            "start_over_logit": start_total / float(logit.sum()),
            "total_over_logit_per_image": {
                "median": float(np.median(per_image)), "min": float(per_image.min()),
                "max": float(per_image.max())},
            "kernel_share_min": float(min(kernel)) if kernel else None,
            "kernel_share_median": float(np.median(kernel)) if kernel else None,
            "relu_share_min": float(min(relu)) if relu else None,
            "relu_share_median": float(np.median(relu)) if relu else None,
            "product_of_shares": float(np.prod(kernel + relu)),
            "layers": layers}


def invariance(model: Any, estimators: list[str], specs: list, x_fit: np.ndarray,
               x_eval: np.ndarray, originals: dict[str, Any]) -> dict:
    """Relative change of each analysis when the twin explains ``x + m``."""
    out: dict[str, Any] = {"m": SHIFT.tolist()}
    twin, out["twin"] = make_twin(model, SHIFT)
    reference = logits_of(model, x_eval)
    shifted = logits_of(twin, x_eval + SHIFT)
    err = float(np.max(np.abs(reference - shifted)))
    scale = float(max(1.0, np.max(np.abs(reference))))
    out["twin_max_logit_error"] = err
    out["twin_max_logit"] = scale
    if err > 1e-4 * scale:
        out["error"] = f"twin(x + m) != model(x): max |diff| {err:.3g} (logits up to {scale:.3g})"
        return out
    patterns, out["patterns"] = fit_patterns(twin, estimators, x_fit + SHIFT)
    errors: dict[str, Any] = {}
    for label, name, kwargs in specs:
        if name == "guided_backprop":
            continue
        if name == "integrated_gradients":
            label = "integrated_gradients (zero reference)"
        base = originals.get(label.replace(" (zero reference)", ""), {})
        if "analysis" not in base:
            errors[label] = {"error": "no analysis of the original: " + base.get("error", "?")}
            continue
        res = run_analyzer(twin, name, kwargs, patterns, x_eval + SHIFT)
        if "analysis" not in res:
            errors[label] = {"error": res["error"]}
            continue
        a = base["analysis"][:len(x_eval)].astype(np.float64)
        b = res["analysis"].astype(np.float64)
        entry = {"relative_error": float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-300))}
        if res.get("warnings"):
            entry["warnings"] = res["warnings"]
        errors[label] = entry
    out["relative_error"] = errors
    return out


def measure(name: str, cfg: argparse.Namespace) -> dict:
    """Every measurement of one trained network (runs in the worker subprocess)."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    data = digits32(cfg.seed)
    epochs = net_epochs(name, cfg)
    model = load_trained(name, cfg.seed, epochs)
    info = json.loads(cache_path(name, cfg.seed, epochs).with_suffix(".json").read_text())
    result: dict[str, Any] = {"net": name, "train": info, "seconds": {}}
    x_fit = data["x_train"][:cfg.n_fit]
    x_eval = data["x_test"][:cfg.n_eval]
    from innv_pattern.patterns import PATTERN_TYPES

    estimators = [e for e in cfg.estimators if e in PATTERN_TYPES]
    result["estimators_missing"] = [e for e in cfg.estimators if e not in PATTERN_TYPES]
    log(f"{name}: fitting {estimators} patterns on {len(x_fit)} images")
    patterns, result["patterns"] = fit_patterns(model, estimators, x_fit)
    result["seconds"]["fit"] = result["patterns"]["seconds"]

    specs = analyzer_specs(estimators)
    t0 = time.perf_counter()
    runs = {label: run_analyzer(model, an, kw, patterns, x_eval) for label, an, kw in specs}
    result["seconds"]["analyze"] = round(time.perf_counter() - t0, 1)
    log(f"{name}: analyses done in {result['seconds']['analyze']} s")

    t0 = time.perf_counter()
    max_x = float(np.abs(x_eval).max())
    metrics: dict[str, Any] = {"random": {"border_share": UNIFORM_BORDER}}
    scores: dict[str, Any] = {"random": "random"}
    for label, run in runs.items():
        entry: dict[str, Any] = {k: run[k] for k in ("error", "warnings", "seconds") if k in run}
        if "analysis" in run:
            a = run["analysis"]
            entry["finite"] = bool(np.all(np.isfinite(a)))
            entry["max_abs"] = float(np.abs(a).max())
            entry["max_abs_input"] = max_x
            entry["max_ratio"] = entry["max_abs"] / max_x
            entry["border_share"] = border_share(a)
            if entry["finite"]:
                scores[label] = ranking(label, a)
        metrics[label] = entry
    for label, curve in degradation(model, scores, x_eval).items():
        metrics[label].update(curve)
    result["analyzers"] = metrics
    result["seconds"]["degradation"] = round(time.perf_counter() - t0, 1)
    log(f"{name}: degradation done in {result['seconds']['degradation']} s")

    t0 = time.perf_counter()
    try:
        result["invariance"] = invariance(model, estimators, specs, x_fit, x_eval[:cfg.n_inv],
                                          runs)
        result["invariance"]["images"] = cfg.n_inv
    except Exception as exc:
        result["invariance"] = {"error": _short(exc), "traceback": traceback.format_exc()[-2000:]}
    result["seconds"]["invariance"] = round(time.perf_counter() - t0, 1)
    log(f"{name}: invariance done in {result['seconds']['invariance']} s")

    t0 = time.perf_counter()
    book: dict[str, Any] = {}
    for est in estimators:
        run = runs.get(f"pattern.attribution[{est}]", {})
        if "analyzer" not in run:
            book[est] = {"error": run.get("error", "no analyzer")}
            continue
        try:
            book[est] = relevance_bookkeeping(run["analyzer"], x_eval[:cfg.n_book])
            final = run["analysis"][:cfg.n_book].reshape(cfg.n_book, -1).sum(1)
            book[est]["analysis_sum"] = float(final.sum())   # equals input_sum if the tape is right
        except Exception as exc:
            book[est] = {"error": _short(exc), "traceback": traceback.format_exc()[-2000:]}
    result["bookkeeping"] = book
    result["seconds"]["bookkeeping"] = round(time.perf_counter() - t0, 1)

    example = {label: run["analysis"][0] for label, run in runs.items() if "analysis" in run}
    example["input"] = x_eval[0]
    result["example"] = example
    return result


# ---------------------------------------------------------------------------
# Orchestration: subprocesses, table, JSON, figure.
# ---------------------------------------------------------------------------
def net_epochs(name: str, cfg: argparse.Namespace) -> int:
    return QUICK_EPOCHS if cfg.quick else EPOCHS[name]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="2 nets, 2 epochs, 1,000 fitting and 64 held-out images")
    p.add_argument("--nets", nargs="+", choices=NETS, default=None)
    p.add_argument("--estimators", nargs="+", default=["relu", "relu_eq7", "linear"],
                   help="pattern types to fit (unknown ones are reported and skipped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="retrain even if cached")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="networks trained and measured in parallel subprocesses (each with "
                        "cores/jobs threads)")
    p.add_argument("--replot", action="store_true",
                   help="redraw the table, JSON and figure of the last run (no computation)")
    p.add_argument("--worker", choices=("train", "measure"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.nets is None:
        args.nets = list(QUICK_NETS if args.quick else NETS)
    args.n_fit = 1000 if args.quick else 3000
    args.n_eval = 64 if args.quick else 200
    args.n_book = 32 if args.quick else 50
    args.n_inv = 32 if args.quick else 50
    return args


def forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--seed", str(args.seed), "--estimators", *args.estimators]
    out += ["--jobs", str(args.jobs)]
    return out + (["--quick"] if args.quick else []) + (["--no-cache"] if args.no_cache else [])


def run_worker(kind: str, nets: list[str], args: argparse.Namespace, out: str | None,
               onednn: bool) -> int:
    env = dict(os.environ)
    env["INNV_TN_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, args.jobs)))
    if not onednn:
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    cmd = [sys.executable, __file__, *forwarded(args), "--worker", kind, "--nets", *nets]
    if out:
        cmd += ["--out", out]
    proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join(l for l in proc.stderr.splitlines()
                         if not l.startswith(("I0000", "W0000", "E0000", "WARNING: All log")))
        print(tail[-3000:], file=sys.stderr)
    return proc.returncode


def worker(args: argparse.Namespace) -> None:
    import tensorflow as tf

    threads = int(os.environ.get("INNV_TN_THREADS", "0"))
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    if args.worker == "train":
        data = digits32(args.seed)
        for name in args.nets:
            info = train(name, data, args.seed, net_epochs(name, args), not args.no_cache)
            log(f"{name}: trained {info['epochs']} epochs in {info['train_seconds']} s, "
                f"train acc {info['train_acc']:.3f}, val acc {info['val_acc']:.3f}")
        return
    result = measure(args.nets[0], args)
    result["cpu_seconds"] = round(time.process_time(), 1)
    with open(args.out, "wb") as f:
        pickle.dump(result, f)


def balanced(nets: list[str], jobs: int, cost: Any) -> list[list[str]]:
    """``nets`` in ``jobs`` groups of similar total cost (longest first)."""
    groups: list[list[str]] = [[] for _ in range(max(1, jobs))]
    totals = [0.0] * len(groups)
    for name in sorted(nets, key=cost, reverse=True):
        i = int(np.argmin(totals))
        groups[i].append(name)
        totals[i] += cost(name)
    return [g for g in groups if g]


def library_state() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    diff = git("diff", "HEAD", "--", "innv_pattern")
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_library_files": git("status", "--porcelain", "--", "innv_pattern").splitlines(),
            "uncommitted_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None}


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    tag = "_quick" if args.quick else ("" if list(args.nets) == list(NETS) else "_subset")
    last = CACHE / f"last_run{tag}.pkl"
    if args.replot:
        with open(last, "rb") as f:
            saved = pickle.load(f)
        for r in saved["results"].values():
            print_table(r)
        print_targets(saved["results"], default_estimator(args))
        write_outputs(saved["results"], args, *saved["rest"], tag)
        return
    start = time.perf_counter()
    load_start = os.getloadavg()
    state = library_state()
    seconds: dict[str, float] = {}
    need = [n for n in args.nets if args.no_cache or not cache_path(
        n, args.seed, net_epochs(n, args)).with_suffix(".json").exists()]
    t0 = time.perf_counter()
    if need:
        groups = balanced(need, args.jobs, lambda n: COST[n][0] * net_epochs(n, args))
        log(f"training {groups} ({len(groups)} subprocess(es) in parallel)")
        with ThreadPoolExecutor(len(groups)) as pool:
            codes = list(pool.map(lambda g: train_group(g, args, seconds), groups))
        if any(codes):
            raise SystemExit(f"training failed (exit statuses {codes})")
    seconds["train"] = round(time.perf_counter() - t0, 1)
    cpu = {"train": round(_child_cpu(), 1)}
    order = sorted(args.nets, key=lambda n: COST[n][1], reverse=True)

    def one(name: str) -> dict:
        t = time.perf_counter()
        result = measure_in_subprocess(name, args)
        seconds[name] = round(time.perf_counter() - t, 1)
        return result

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        done = dict(zip(order, pool.map(one, order)))
    results = {name: done[name] for name in args.nets}
    for r in results.values():
        print_table(r)
    print_targets(results, default_estimator(args))
    seconds["total"] = round(time.perf_counter() - start, 1)
    cpu["measure"] = {n: r.get("cpu_seconds") for n, r in results.items()}
    cpu["total"] = round(_child_cpu(), 1)
    seconds["cpu_seconds_of_subprocesses"] = cpu
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(last, "wb") as f:
        pickle.dump({"results": results, "rest": (state, seconds, load_start)}, f)
    write_outputs(results, args, state, seconds, load_start, tag)
    log(f"total {seconds['total']} s wall, {cpu['total']} s CPU (user+sys of the "
        f"subprocesses); load average at the start {load_start}, now {os.getloadavg()}")


def train_group(nets: list[str], args: argparse.Namespace, seconds: dict) -> int:
    """Trains ``nets`` in one subprocess; repeats with oneDNN off if it dies by a signal."""
    rc = run_worker("train", nets, args, None, onednn=True)
    if rc < 0:
        log(f"training process {nets} died (signal {-rc}); repeating with TF_ENABLE_ONEDNN_OPTS=0")
        seconds.setdefault("train_crash_signals", []).append([nets, -rc])
        rc = run_worker("train", nets, args, None, onednn=False)
    return rc


def _child_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_in_subprocess(name: str, args: argparse.Namespace) -> dict:
    crashes = []
    for onednn in (True, False):
        with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
            out = f.name
        rc = run_worker("measure", [name], args, out, onednn=onednn)
        try:
            if rc == 0:
                with open(out, "rb") as f:
                    result = pickle.load(f)
                result["process_crashes"] = crashes
                result["onednn"] = onednn
                return result
        finally:
            os.unlink(out)
        what = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
        crashes.append(f"measurement process died ({what}) with oneDNN "
                       f"{'on' if onednn else 'off'}")
        log(f"{name}: {crashes[-1]}" + ("; repeating with TF_ENABLE_ONEDNN_OPTS=0" if onednn else ""))
    return {"net": name, "process_crashes": crashes, "error": "; ".join(crashes)}


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def targets(r: dict, est: str = "relu") -> dict:
    """Issue 13's targets for one net, with the estimator ``est`` (the library's default)."""
    a = r.get("analyzers", {})
    pa, pn = a.get(f"pattern.attribution[{est}]", {}), a.get(f"pattern.net[{est}] (abs)", {})
    rnd, lrp = a.get("random", {}).get("aopc"), a.get("lrp.epsilon", {}).get("aopc")
    inv = r.get("invariance", {}).get("relative_error", {})
    inv_pa = inv.get(f"pattern.attribution[{est}]", {}).get("relative_error")
    inv_pn = inv.get(f"pattern.net[{est}] (abs)", {}).get("relative_error")

    def ratio(x: Any, y: Any) -> Any:
        return None if x is None or not y else x / y

    t = {"estimator": est, "pa_over_random": ratio(pa.get("aopc"), rnd),
         "pa_over_lrp": ratio(pa.get("aopc"), lrp), "pn_finite": pn.get("finite"),
         "pn_max_ratio": pn.get("max_ratio"), "pn_over_random": ratio(pn.get("aopc"), rnd),
         "invariance_pa": inv_pa, "invariance_pn": inv_pn,
         "process_crashes": len(r.get("process_crashes", []))}
    checks = [(t["pa_over_random"] or 0) >= 1.3, (t["pa_over_lrp"] or 0) >= 0.9,
              bool(t["pn_finite"]) and (t["pn_max_ratio"] or np.inf) <= 1e6,
              (t["pn_over_random"] or 0) > 1.0, (inv_pa if inv_pa is not None else 1) < 1e-3,
              (inv_pn if inv_pn is not None else 1) < 1e-3, t["process_crashes"] == 0]
    t["met"] = dict(zip(("pa_1.3x_random", "pa_within_10pct_of_lrp", "pn_finite_below_1e6",
                         "pn_above_random", "pa_invariant", "pn_invariant", "no_crash"), checks))
    return t


def print_targets(results: dict, est: str) -> None:
    print(f"\nIssue 13 targets, estimator '{est}' (* = not met): PA/random >= 1.3, "
          f"PA/LRP-eps >= 0.9, PN max|s|/max|x| <= 1e6, PN/random > 1, invariance < 1e-3")
    print(f"   {'net':12s} {'PA/rand':>8s} {'PA/LRP':>8s} {'PN ratio':>9s} {'PN/rand':>8s} "
          f"{'inv PA':>9s} {'inv PN':>9s} {'crashes':>7s}")
    for name, r in results.items():
        t = targets(r, est)
        m = t["met"]
        flag = lambda ok: " " if ok else "*"  # noqa: E731
        print(f"   {name:12s} {_fmt(t['pa_over_random'], '7.2f')}{flag(m['pa_1.3x_random'])} "
              f"{_fmt(t['pa_over_lrp'], '7.2f')}{flag(m['pa_within_10pct_of_lrp'])} "
              f"{_fmt(t['pn_max_ratio'], '8.1e')}{flag(m['pn_finite_below_1e6'])} "
              f"{_fmt(t['pn_over_random'], '7.2f')}{flag(m['pn_above_random'])} "
              f"{_fmt(t['invariance_pa'], '8.1e')}{flag(m['pa_invariant'])} "
              f"{_fmt(t['invariance_pn'], '8.1e')}{flag(m['pn_invariant'])} "
              f"{t['process_crashes']:7d}{flag(m['no_crash'])}")


def default_estimator(args: argparse.Namespace) -> str:
    return "relu" if "relu" in args.estimators else args.estimators[0]


def print_table(r: dict) -> None:
    name = r["net"]
    if "analyzers" not in r:
        print(f"\n== {name}: {r.get('error')}")
        return
    t = r["train"]
    print(f"\n== {name}: {t['params']:,} params, {t['epochs']} epochs, train acc {t['train_acc']:.3f}, "
          f"val acc {t['val_acc']:.3f}; patterns {r['patterns'].get('estimators')} on "
          f"{r['patterns']['samples']} images in {r['patterns']['seconds']} s"
          + (f"; {'; '.join(r['process_crashes'])}" if r.get("process_crashes") else ""))
    if r["patterns"].get("error"):
        print(f"   pattern fit: {r['patterns']['error']}")
    if r.get("estimators_missing"):
        print(f"   estimators not in this library version: {r['estimators_missing']}")
    rnd = r["analyzers"]["random"]["aopc"]
    inv = r.get("invariance", {})
    rel = inv.get("relative_error", {})
    print(f"   {'analyzer':34s} {'AOPC':>7s} {'/rand':>6s} {'max|a|':>9s} {'max|x|':>6s} "
          f"{'ratio':>9s} {'border':>6s} {'inv.err':>9s}")
    for label, e in r["analyzers"].items():
        inv_label = "integrated_gradients (zero reference)" if label == "integrated_gradients" else label
        ie = rel.get(inv_label, {})
        ie_s = _fmt(ie.get("relative_error"), ".2e") if "error" not in ie else "ERR"
        if "error" in e:
            print(f"   {label:34s} ERROR {e['error'][:150]}")
            continue
        aopc = e.get("aopc")
        print(f"   {label:34s} {_fmt(aopc, '7.3f')} {_fmt(aopc / rnd if aopc is not None else None, '6.2f')} "
              f"{_fmt(e.get('max_abs'), '9.2e')} {_fmt(e.get('max_abs_input'), '6.2f')} "
              f"{_fmt(e.get('max_ratio'), '9.2e')} {_fmt(e.get('border_share'), '6.3f')} {ie_s:>9s}")
    if inv.get("error"):
        print(f"   invariance: {inv['error'][:300]}")
    else:
        print(f"   invariance twin: {inv.get('twin')}; max |twin(x+m) - model(x)| = "
              f"{_fmt(inv.get('twin_max_logit_error'), '.2e')} (logits up to "
              f"{_fmt(inv.get('twin_max_logit'), '.3g')})")
        for label, ie in rel.items():
            if "error" in ie:
                print(f"   invariance {label}: ERROR {ie['error'][:200]}")
    warned = sorted({w for e in r["analyzers"].values() for w in e.get("warnings", [])})
    for w in warned:
        print(f"   warning: {w[:300]}")
    for est, b in r.get("bookkeeping", {}).items():
        if "error" in b:
            print(f"   bookkeeping PA[{est}]: ERROR {b['error'][:200]}")
        else:
            print(f"   bookkeeping PA[{est}]: share passed on by kernel layers min "
                  f"{_fmt(b['kernel_share_min'])} / median {_fmt(b['kernel_share_median'])}, by "
                  f"ReLUs min {_fmt(b['relu_share_min'])} / median {_fmt(b['relu_share_median'])}; "
                  f"sum(attribution)/logit {b['total_over_logit']:.3g} (per image median "
                  f"{b['total_over_logit_per_image']['median']:.3g})")
    print(f"   seconds: {r['seconds']}")


def write_outputs(results: dict, args: argparse.Namespace, state: dict, seconds: dict,
                  load_start: tuple, tag: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    clean = {}
    for name, r in results.items():
        r = {k: v for k, v in r.items() if k != "example"}
        if "analyzers" in r:
            r["targets"] = targets(r, default_estimator(args))
        clean[name] = r
    doc = {
        "issue": 13,
        "config": {"nets": list(args.nets), "quick": args.quick, "seed": args.seed,
                   "estimators": args.estimators, "jobs": args.jobs, "epochs": {n: net_epochs(n, args) for n in args.nets},
                   "fit_images": args.n_fit, "eval_images": args.n_eval,
                   "bookkeeping_images": args.n_book, "invariance_images": args.n_inv, "patch": PATCH, "steps": STEPS,
                   "degradation_output": "logit", "border_pixels": BORDER,
                   "uniform_border_share": UNIFORM_BORDER, "shift_m": SHIFT.tolist(),
                   "signal_rankings": "|analysis| summed over channels for " + ", ".join(SIGNALS),
                   "attribution_rankings": "analysis summed over channels"},
        "library": state,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_average_start": load_start,
                    "load_average_end": os.getloadavg()},
        "seconds": seconds,
        "nets": clean,
    }
    path = RESULTS / f"trained_networks{tag}.json"
    path.write_text(json.dumps(doc, indent=1, default=_json_default))
    log(f"wrote {path}")
    figure(results, RESULTS / f"trained_networks{tag}.png")


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


COLORS = {"pattern.attribution[relu]": "tab:blue", "pattern.attribution[relu_eq7]": "tab:cyan",
          "pattern.attribution[linear]": "tab:purple", "pattern.net[relu] (abs)": "tab:red",
          "pattern.net[relu_eq7] (abs)": "tab:orange", "pattern.net[linear] (abs)": "tab:pink",
          "lrp.epsilon": "tab:green", "gradient (abs)": "tab:olive",
          "input_t_gradient": "tab:brown", "integrated_gradients": "tab:gray",
          "guided_backprop (abs)": "gold"}


def _short_label(label: str) -> str:
    return (label.replace("pattern.attribution", "PA").replace("pattern.net", "PN")
            .replace("lrp.epsilon", "LRP-eps").replace(" (abs)", ""))


def figure(results: dict, path: Path) -> None:
    """Per net: degradation curves (left) and one held-out image's heat maps (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = [n for n, r in results.items() if "analyzers" in r]
    if not nets:
        return
    row_h = 2.5
    fig = plt.figure(figsize=(14.5, row_h * len(nets) + 1.3))
    grid = fig.add_gridspec(len(nets), 6, width_ratios=[2.3, 1, 1, 1, 1, 1],
                            hspace=0.7, wspace=0.12)
    handles: dict[str, Any] = {}
    for row, name in enumerate(nets):
        r = results[name]
        metrics = r["analyzers"]
        ax = fig.add_subplot(grid[row, 0])
        for i, (label, e) in enumerate(metrics.items()):
            if "curve" not in e:
                continue
            if label == "random":
                style = dict(color="black", ls="--", lw=1.6)
            else:
                style = dict(color=COLORS.get(label, f"C{i % 10}"),
                             ls="-" if label.startswith("pattern.attribution") else (
                                 (0, (4, 1.5)) if label.startswith("pattern.net") else "-"),
                             lw=2.2 if label.startswith("pattern.") else 1.1)
            (handles[_short_label(label)],) = ax.plot(e["curve"], **style)
        est = (r["patterns"].get("estimators") or ["?"])[0]
        pa, pn = f"pattern.attribution[{est}]", f"pattern.net[{est}] (abs)"
        summary = " | ".join(f"{_short_label(k)} {metrics[k]['aopc']:.2f}"
                             for k in (pa, pn, "lrp.epsilon", "random")
                             if "aopc" in metrics.get(k, {}))
        ax.set_title(f"{name} (val acc {r['train']['val_acc']:.2f})\nAOPC: {summary}",
                     fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
        ax.set_xticks(range(0, STEPS + 1, 5))
        ax.set_ylabel("selected logit", fontsize=7.5)
        ax.set_xlabel(f"{PATCH}x{PATCH} patches replaced by their mean (most relevant first)",
                      fontsize=7)
        columns = [("input", "input"), (pa, _short_label(pa)), (pn, _short_label(pn)),
                   ("lrp.epsilon", "LRP-eps"), ("gradient (abs)", "gradient")]
        for col, (key, title) in enumerate(columns):
            axh = fig.add_subplot(grid[row, col + 1])
            axh.set_xticks([])
            axh.set_yticks([])
            img = r["example"].get(key)
            if img is None:
                axh.text(0.5, 0.5, "error", ha="center", va="center", fontsize=8)
            elif key == "input":
                axh.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=1)
            else:
                heat = img.sum(-1)
                lim = float(np.abs(heat).max()) or 1.0
                axh.imshow(heat, cmap="bwr", vmin=-lim, vmax=lim)
                title += f" (max {np.abs(img).max():.1g})"
            axh.set_title(title, fontsize=8)
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper center",
               ncol=6, fontsize=8.5, frameon=False,
               title="degradation curves (PA solid thick, PN dashed thick); heat maps: "
                     "channel sum, red positive, blue negative, each scaled to its max",
               title_fontsize=8.5)
    top = 1 - 1.05 / (row_h * len(nets) + 1.3)
    fig.subplots_adjust(top=top, bottom=0.45 / (row_h * len(nets) + 1.3), left=0.045,
                        right=0.995)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
