"""The paper's measurements on models that train on a CPU, recorded as measured.

* ``digits``: a small CNN trained on sklearn's digits (seconds): rho per layer
  for the four estimators in both readings (Fig. 3), degradation curves of
  the paper's ten analyzers (:data:`ANALYZERS`) with the random baseline
  (Fig. 4a), the cascading randomization check of each of them.
* ``vgg``: ``keras.applications.VGG16(weights=None, input_shape=(32, 32, 3))``,
  briefly trained on digits upscaled to 32x32 (``--vgg-epochs``): rho on 2,048
  samples (1,024 to fit the patterns, 512 for the read-out, 512 to evaluate),
  timed per stage; degradation curves (8x8 patches: a 4x4 patch of an image
  upscaled from 8x8 is nearly constant, so replacing it by its mean removes
  almost nothing).
* ``groundtruth``: explanation accuracy of each of the ten on images with a
  known signal and a suppressor (:func:`innv_pattern.datasets.ground_truth_images`),
  for a linear model and for a nonlinear CNN on the XOR variant.

    python benchmarks/quality.py                        # all parts
    python benchmarks/quality.py --parts digits groundtruth

Writes ``benchmarks/results/quality.json`` (numbers, timings, machine) and
PNG figures next to it; ``quality.md`` there discusses them.
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
from innv_pattern import datasets  # noqa: E402
from innv_pattern import evaluate as ev  # noqa: E402
from innv_pattern.patterns import PatternComputer  # noqa: E402

RESULTS = Path(__file__).parent / "results"
#: The paper's ten analyzers, the set these results have recorded since 2026-11-22 (and
#: the ten with a declared colour in ``innv_pattern.style``). Not ``ip.list_analyzers()``:
#: that has 27 since the LRP family, Deep Taylor, input and random were registered, and
#: 29 curves overflow every figure's legend.
ANALYZERS = ["gradient", "input_t_gradient", "deconvnet", "guided_backprop", "lrp.z",
             "lrp.epsilon", "smoothgrad", "integrated_gradients", "pattern.net",
             "pattern.attribution"]
LINEAR_PA = "pattern.attribution[linear]"     # PatternAttribution with S_a, the paper's Fig. 4a


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def analyses(model: keras.Model, x: np.ndarray, fit_data: np.ndarray) -> dict[str, np.ndarray]:
    """Every analyzer's analysis of ``x`` (patterns fitted once on ``fit_data``)."""
    spread = float(x.max() - x.min())
    kwargs = {"smoothgrad": {"noise_scale": 0.1 * spread, "augment_by_n": 16},
              "integrated_gradients": {"steps": 16}}
    patterns = PatternComputer(model, ("relu", "linear")).compute(fit_data, batch_size=64,
                                                                  verbose=0)
    result = ev.analyze_all(model, x, ANALYZERS, patterns=patterns, analyzer_kwargs=kwargs)
    linear = ip.create_analyzer("pattern.attribution", model, pattern_type="linear",
                                patterns=patterns)
    result[LINEAR_PA] = np.asarray(linear.analyze(x))
    return result


def quality_both(model: keras.Model, splits: tuple, **kwargs) -> dict:
    """rho in both readings, timed; patterns fitted once on the first split."""
    t0, c0 = time.perf_counter(), time.process_time()
    patterns = PatternComputer(model, ("linear", "relu")).compute(splits[0], batch_size=64,
                                                                  verbose=0)
    out = {"fit_seconds": time.perf_counter() - t0, "fit_cpu_seconds": time.process_time() - c0}
    for target in ("rectified", "linear"):
        t0, c0 = time.perf_counter(), time.process_time()
        rho, info = ev.signal_quality(model, None, splits[1], splits[2], patterns=patterns,
                                      target=target, return_info=True, **kwargs)
        out[target] = {"rho": rho, "seconds": time.perf_counter() - t0,
                       "cpu_seconds": time.process_time() - c0,
                       "stages": info.pop("_seconds"), "layers": info}
        log(f"rho ({target}) in {out[target]['seconds']:.1f} s: " + "; ".join(
            f"{k} " + " ".join(f"{v:.2f}" for v in r.values()) for k, r in rho.items()))
    return out


def degradation(model: keras.Model, x: np.ndarray, fit: np.ndarray, patch: int, steps: int,
                name: str) -> dict:
    curves = {n: ev.perturbation_curve(model, a, x, patch_size=patch, steps=steps)
              for n, a in analyses(model, x, fit).items()}
    curves["random"] = ev.perturbation_curve(model, "random", x, patch_size=patch, steps=steps)
    fig = ev.plot_perturbation_curves(curves, title=f"Image degradation, {name} "
                                      f"({len(x)} images, {patch}x{patch} patches)")
    fig.savefig(RESULTS / f"quality_degradation_{name}.png", dpi=120)
    log("AOPC " + ", ".join(f"{k} {c['aopc']:.3f}" for k, c in curves.items()))
    return {k: {"aopc": c["aopc"], "curve": c["curve"].tolist()} for k, c in curves.items()}


def plot_quality(result: dict, name: str, slug: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), layout="constrained")
    for ax, target in zip(fig.subplots(1, 2), ("rectified", "linear")):
        ev.plot_signal_quality(result[target]["rho"], ax=ax,
                               title=f"rho per layer, {name}, target: {target}")
    fig.savefig(RESULTS / f"quality_rho_{slug}.png", dpi=120)


def part_digits() -> dict:
    x, y = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    t0 = time.perf_counter()
    model = datasets.train_digits_cnn(x[:1200], y[:1200])
    accuracy = float(np.mean(np.argmax(model.predict(x[1200:], verbose=0), 1) == y[1200:]))
    log(f"digits CNN trained in {time.perf_counter() - t0:.1f} s, test accuracy {accuracy:.3f}")
    out = {"train_seconds": time.perf_counter() - t0, "test_accuracy": accuracy}
    splits = (x[:600], x[600:1200], x[1200:])
    out["quality"] = quality_both(model, splits, max_neurons=None)
    plot_quality(out["quality"], "digits CNN", "digits")
    out["in_sample"] = {t: ev.signal_quality(model, x[:1200], x[:1200], x[:1200], target=t,
                                             max_neurons=None) for t in ("rectified", "linear")}
    out["ridge_sensitivity"] = {
        str(r): ev.signal_quality(model, *splits, max_neurons=None, ridge=r)
        for r in (1e-6, 1e-4, 1e-2)}
    out["degradation"] = degradation(model, x[1200:1456], x[:1200], 2, 16, "digits")
    out["randomization"] = randomization(model, x[1200:1264], x[:600])
    return out


def randomization(model: keras.Model, x: np.ndarray, fit: np.ndarray) -> dict:
    kwargs = {"smoothgrad": {"noise_scale": 0.1, "augment_by_n": 16},
              "integrated_gradients": {"steps": 16}}
    results = {n: ev.randomization_check(model, n, x, fit_data=fit,
                                         analyzer_kwargs=kwargs.get(n)) for n in ANALYZERS}
    fig = ev.plot_randomization(results, title="Cascading randomization, digits CNN")
    fig.savefig(RESULTS / "quality_randomization_digits.png", dpi=120)
    log("randomized all layers, spearman_abs: " + ", ".join(
        f"{k} {r['similarity']['spearman_abs'][-1]:.2f}" for k, r in results.items()))
    return {n: {"layers": r["layers"], **{m: v.tolist() for m, v in r["similarity"].items()}}
            for n, r in results.items()}


def digits_32(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digits at 32x32x3: the 1,797 originals, then copies shifted by up to 3 pixels."""
    x, y = datasets.load_digits(size=32, channels=3)
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, len(x), max(n - len(x), 0))
    shifts = rng.integers(-3, 4, (len(extra), 2))
    moved = np.stack([np.roll(x[i], tuple(s), axis=(0, 1)) for i, s in zip(extra, shifts)]) \
        if len(extra) else x[:0]
    order = rng.permutation(len(x) + len(extra))
    return np.concatenate([x, moved])[order][:n], np.concatenate([y, y[extra]])[order][:n]


def part_vgg(epochs: int, max_neurons: int, max_positions: int | None) -> dict:
    x, y = digits_32(2048 + 512)
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10)
    t0 = time.perf_counter()
    if epochs:
        model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(x[:2048], y[:2048], batch_size=32, epochs=epochs, verbose=0)
    accuracy = float(np.mean(np.argmax(model.predict(x[2048:], verbose=0), 1) == y[2048:]))
    log(f"VGG16-shaped trained {epochs} epochs in {time.perf_counter() - t0:.0f} s, "
        f"held-out accuracy {accuracy:.3f}")
    out = {"epochs": epochs, "train_seconds": time.perf_counter() - t0,
           "test_accuracy": accuracy, "max_neurons": max_neurons, "max_positions": max_positions}
    out["quality"] = quality_both(model, (x[:1024], x[1024:1536], x[1536:2048]),
                                  max_neurons=max_neurons, max_positions=max_positions)
    plot_quality(out["quality"], "VGG16-shaped 32x32", "vgg16")
    out["degradation"] = degradation(model, x[2048:2112], x[:1024], 8, 16, "vgg16")
    return out


def part_groundtruth() -> dict:
    out = {}
    for kind, build in (("linear", linear_model), ("xor", small_cnn)):
        gt = datasets.ground_truth_images(4000, size=16, kind=kind, seed=0)
        keras.utils.set_random_seed(0)
        model = build()
        model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(gt.x[:3000], gt.labels[:3000], batch_size=64, epochs=20, verbose=0)
        accuracy = float(np.mean(np.argmax(model.predict(gt.x[3000:], verbose=0), 1)
                                 == gt.labels[3000:]))
        results = {n: ev.explanation_accuracy(a, gt.signal_mask)
                   for n, a in analyses(model, gt.x[3000:3300], gt.x[:3000]).items()}
        fig = ev.plot_explanation_accuracy(
            results, title=f"Explanation accuracy, {kind} data, {model.name} "
                           f"(accuracy {accuracy:.2f})")
        fig.savefig(RESULTS / f"quality_groundtruth_{kind}.png", dpi=120)
        log(f"ground truth ({kind}, accuracy {accuracy:.3f}) mass: " + ", ".join(
            f"{k} {r['mass']:.2f}" for k, r in results.items()))
        out[kind] = {"model": model.name, "test_accuracy": accuracy, "accuracy": results}
    return out


def linear_model() -> keras.Model:
    """Logistic regression.  The final layers here start from zero: the two logits of
    a softmax share a component that training never changes (the gradients of the
    logits sum to zero), so a random start would stay in each logit, and the
    analyzers explain one logit."""
    inp = keras.Input((16, 16, 1))
    out = keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros")(
        keras.layers.Flatten()(inp))
    return keras.Model(inp, out, name="linear")


def small_cnn() -> keras.Model:
    layers = keras.layers
    return keras.Sequential([
        keras.Input((16, 16, 1)), layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2), layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(32, activation="relu"),
        layers.Dense(2, activation="softmax", kernel_initializer="zeros")], name="cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["digits", "groundtruth", "vgg"],
                        choices=["digits", "groundtruth", "vgg"])
    parser.add_argument("--vgg-epochs", type=int, default=4)
    parser.add_argument("--vgg-max-neurons", type=int, default=128)
    parser.add_argument("--vgg-max-positions", type=int, default=64)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "quality.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    for part in args.parts:
        t0 = time.perf_counter()
        record[part] = (part_digits() if part == "digits" else part_groundtruth()
                        if part == "groundtruth" else part_vgg(
                            args.vgg_epochs, args.vgg_max_neurons, args.vgg_max_positions))
        record[part]["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                                   "load_average": os.getloadavg(), "tensorflow": tf.__version__,
                                   "keras": keras.__version__,
                                   "part_seconds": time.perf_counter() - t0}
        path.write_text(json.dumps(record, indent=1, default=float))
        log(f"part {part} done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
