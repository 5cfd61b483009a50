"""``innv-pattern demo``: the paper's result, on a CPU, in minutes.

Trains a small CNN on sklearn's digits, fits its patterns, explains a few
test digits with every analyzer (Fig. 5 of the paper), shows on images with a
known signal that the weights point at the distractor's canceller where the
patterns point at the signal (Section 2), explains crops of scikit-image's
sample photos (a qualitative colour panel), and measures the signal-estimator
quality rho (Fig. 3) and image degradation (Fig. 4a). Writes the figures, a
``results.json`` and a markdown ``report.md`` into one folder.

Example:
    >>> import tempfile
    >>> report = run_demo(tempfile.mkdtemp(), quick=True, verbose=0)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Iterator

import keras
import numpy as np

import innv_pattern as ip
from innv_pattern import datasets, viz
from innv_pattern.analyzer_base import KINDS
from innv_pattern.analyzers import analyzer_classes
from innv_pattern.evaluate import analyze_all, smoothgrad_noise
from innv_pattern.patterns import PatternComputer
from innv_pattern.progress import Progress
from innv_pattern.style import DPI
from innv_pattern.tables import markdown_table

__all__ = ["DemoSettings", "photo_crops", "render_report", "run_demo"]

#: The analyzers of the demo, in the paper's order: function, signal, attribution.
ANALYZERS = tuple(name for kind in KINDS for name, cls in analyzer_classes().items()
                  if cls.in_paper and cls.kind == kind)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """How much work the demo does (the defaults take a few minutes on 2 CPU cores)."""

    digits_size: int = 16
    digits_epochs: int = 15
    shown: int = 6
    ground_truth_samples: int = 3000
    photo_crops: int = 3000
    photo_size: int = 48
    photo_epochs: int = 5
    degradation_samples: int = 100
    analyzers: tuple[str, ...] = ANALYZERS
    seed: int = 0


QUICK = DemoSettings(digits_size=8, digits_epochs=1, shown=3, ground_truth_samples=200,
                     photo_crops=100, photo_size=16, photo_epochs=1, degradation_samples=8,
                     analyzers=("gradient", "pattern.attribution"))


class _Steps:
    """Numbered progress lines with timings ("[2/6] Fitting patterns ... 3.1 s")."""

    def __init__(self, total: int, verbose: int) -> None:
        self.total, self.verbose, self.done, self.seconds = total, verbose, 0, {}

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        self.done += 1
        if self.verbose:
            print(f"[{self.done}/{self.total}] {text}", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[text] = time.perf_counter() - start
        if self.verbose:
            print(f"      done in {self.seconds[text]:.1f} s", flush=True)


class _EpochBar(keras.callbacks.Callback):
    """One progress bar over all epochs (Keras' own draws one per epoch)."""

    def __init__(self, epochs: int, verbose: int) -> None:
        super().__init__()
        self.bar = Progress(epochs, "epoch") if verbose else None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items()))
        if epoch + 1 == self.bar.target:
            self.bar.done()


def _train(model: keras.Model, x: np.ndarray, y: np.ndarray, epochs: int, verbose: int) -> None:
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=True,
              callbacks=[_EpochBar(epochs, verbose)])


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


def _analyze_all(model: keras.Model, x: np.ndarray, patterns: Any, verbose: int,
                 methods: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every analyzer's analysis of ``x``; SmoothGrad's noise is 15% of the range of ``x``."""
    return analyze_all(model, x, methods, patterns=patterns, batch_size=None,
                       analyzer_kwargs=smoothgrad_noise(x), verbose=verbose)


def _labels(model: keras.Model, x: np.ndarray, y: np.ndarray, names: Any) -> list[str]:
    p = model.predict(x, verbose=0)
    return [f"true {names[t]}\npred {names[k]} ({p[i, k]:.0%})"
            for i, (t, k) in enumerate(zip(y, p.argmax(-1)))]


def _fit_patterns(model: keras.Model, x: np.ndarray, pattern_type: Any, verbose: int) -> Any:
    return PatternComputer(model, pattern_type=pattern_type).compute(
        x, batch_size=128, verbose=verbose)


def _split(n: int, seed: int, test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - test_fraction)))
    return order[:cut], order[cut:]


def _digits(settings: DemoSettings, steps: _Steps, verbose: int) -> dict[str, Any]:
    """Digits, a CNN trained on them, and its linear and two-component patterns."""
    x, y = datasets.load_digits(size=settings.digits_size)
    train, test = _split(len(x), settings.seed)
    with steps.step(f"Training a CNN on sklearn's digits ({len(train)} images, "
                    f"{settings.digits_size}x{settings.digits_size})"):
        keras.utils.set_random_seed(settings.seed)
        model = datasets.digits_cnn(tuple(x.shape[1:]))
        _train(model, x[train], y[train], settings.digits_epochs, verbose)
    with steps.step("Fitting the patterns of every layer (linear S_a and two-component S_a+-)"):
        patterns = _fit_patterns(model, x[train], ("relu", "linear"), verbose)
    return {"model": model, "patterns": patterns, "x_train": x[train], "x_test": x[test],
            "y_test": y[test], "accuracy": _accuracy(model, x[test], y[test])}


def _explain_digits(out: str, digits: dict[str, Any], settings: DemoSettings,
                    verbose: int) -> dict[str, Any]:
    """Analyses of the first test digits (kept for the degradation), a grid of one per class."""
    x, y = (digits[k][:settings.degradation_samples] for k in ("x_test", "y_test"))
    model = digits["model"]
    digits["analyses"] = _analyze_all(model, x, digits["patterns"], verbose, settings.analyzers)
    shown = np.concatenate([np.flatnonzero(y == d)[:1] for d in range(10)])[:settings.shown]
    fig = viz.plot_grid(x[shown], {k: v[shown] for k, v in digits["analyses"].items()},
                        _labels(model, x[shown], y[shown], range(10)))
    fig.savefig(os.path.join(out, "digits_grid.png"), dpi=72)
    return {"figure": "digits_grid.png", "test_accuracy": digits["accuracy"]}


def _least_squares_model(x: np.ndarray, target: np.ndarray) -> keras.Model:
    """A linear model ``y = w^T x + b`` fitted by least squares (Section 2's linear regression)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    solution = np.linalg.lstsq(np.c_[flat, np.ones(len(x))], target, rcond=None)[0]
    model = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Flatten(),
                              keras.layers.Dense(1, name="linear")], name="linear_model")
    model.layers[-1].set_weights([solution[:-1, None].astype(np.float32),
                                  solution[-1:].astype(np.float32)])
    return model


def _ground_truth(out: str, settings: DemoSettings, steps: _Steps, verbose: int) -> dict[str, Any]:
    """A linear model on images with a known signal: weights vs patterns (Section 2)."""
    from innv_pattern.evaluate import explanation_accuracy

    gt = datasets.ground_truth_images(settings.ground_truth_samples, size=16, seed=settings.seed)
    z = 2.0 * gt.labels - 1.0                          # the signal's amplitude, +-1
    with steps.step("Images with a known signal and distractor: a linear model, weights vs "
                    "patterns"):
        model = _least_squares_model(gt.x, z)
        patterns = _fit_patterns(model, gt.x, "linear", verbose)
        x = gt.x[:settings.degradation_samples]
        analyses = _analyze_all(model, x, patterns, verbose, settings.analyzers)
    accuracy = {name: explanation_accuracy(a, gt.signal_mask) for name, a in analyses.items()}
    sign = z[:len(x)]
    shown = np.concatenate([np.flatnonzero(sign == 1)[:2], np.flatnonzero(sign == -1)[:1]])
    grid = {m: analyses[m][shown] for m in ("gradient", "guided_backprop", "pattern.net", "lrp.z",
                                            "pattern.attribution") if m in analyses}
    labels = [f"y = {t:+.0f}\noutput {p:+.2f}"
              for t, p in zip(z[shown], model.predict(x[shown], verbose=0)[:, 0])]
    references = {"true signal": gt.signal[shown], "distractor": gt.distractor[shown]}
    fig = viz.plot_grid(x[shown], grid, labels, references=references)
    fig.savefig(os.path.join(out, "ground_truth.png"), dpi=72)
    correct = np.sign(model.predict(gt.x, verbose=0)[:, 0]) == z
    return {"figure": "ground_truth.png", "accuracy": float(np.mean(correct)),
            "explanation_accuracy": accuracy}


def photo_crops(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random square crops of scikit-image's sample photos, labelled by photo.

    The photos (:data:`PHOTOS`, shipped with scikit-image) are scaled so that
    their short side is ``4 * size``; crops are flipped left-right at random.

    Returns:
        ``(x, y)``: ``x`` of shape ``(n, size, size, 3)`` in [0, 1], ``y`` the photo index.

    Example:
        >>> x, y = photo_crops(4, size=8)
        >>> x.shape, set(y.tolist()) <= {0, 1, 2, 3}
        ((4, 8, 8, 3), True)
    """
    from skimage import data, transform

    photos = []
    for name in PHOTOS:
        image = getattr(data, name)()[..., :3] / 255.0
        photos.append(transform.rescale(image, 4 * size / min(image.shape[:2]), channel_axis=-1,
                                        anti_aliasing=True))
    rng = np.random.default_rng(seed)
    y = rng.integers(len(photos), size=n)
    x = np.empty((n, size, size, 3), np.float32)
    for i, k in enumerate(y):
        rows, cols = np.array(photos[k].shape[:2]) - size
        r, c = rng.integers(rows + 1), rng.integers(cols + 1)
        crop = photos[k][r:r + size, c:c + size]
        x[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return x, y.astype(np.int64)


def _photo_model(x: np.ndarray, classes: int) -> keras.Model:
    """A small CNN whose first layer centres the colour channels (as VGG's preprocessing)."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input(x.shape[1:]),
        layers.Normalization(mean=x.mean(axis=(0, 1, 2)), variance=np.ones(x.shape[-1]),
                             name="centre"),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool2"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        layers.MaxPooling2D(name="pool3"),
        layers.Flatten(name="flatten"),
        layers.Dense(64, activation="relu", name="dense1"),
        layers.Dense(classes, activation="softmax", name="dense2"),
    ], name="photo_cnn")


def _structured(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per class, the sample with the most detail (largest mean absolute pixel difference)."""
    detail = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3)) + np.abs(np.diff(x, axis=2)).mean(
        axis=(1, 2, 3))
    return np.array([np.flatnonzero(y == k)[np.argmax(detail[y == k])] for k in np.unique(y)])


def _photos(out: str, settings: DemoSettings, steps: _Steps, verbose: int) -> dict[str, Any]:
    """Which photo is this crop from? Explained with every analyzer, in colour."""
    x, y = photo_crops(settings.photo_crops, settings.photo_size, settings.seed)
    with steps.step(f"Photos: a CNN telling crops of {len(PHOTOS)} scikit-image photos apart, "
                    "explained with every analyzer"):
        keras.utils.set_random_seed(settings.seed)
        model = _photo_model(x, len(PHOTOS))
        _train(model, x, y, settings.photo_epochs, verbose)
        patterns = _fit_patterns(model, x, "relu", verbose)
        x_new, y_new = photo_crops(len(PHOTOS) * 16, settings.photo_size, settings.seed + 1)
        shown = _structured(x_new, y_new)
        analyses = _analyze_all(model, x_new[shown], patterns, verbose, settings.analyzers)
    labels = _labels(model, x_new[shown], y_new[shown], PHOTOS)
    viz.plot_grid(x_new[shown], analyses, labels).savefig(os.path.join(out, "photos_grid.png"),
                                                          dpi=72)
    return {"figure": "photos_grid.png", "accuracy": _accuracy(model, x_new, y_new)}


def _signal_quality(out: str, digits: dict[str, Any], steps: _Steps) -> dict[str, Any]:
    """rho per layer for the four estimators (Fig. 3): patterns fitted on the training
    digits' first half, the read-out on its second half, rho measured on the test digits."""
    from innv_pattern.evaluate import plot_signal_quality, signal_quality

    half = len(digits["x_train"]) // 2
    with steps.step("Signal-estimator quality rho per layer (random, S_w, S_a, S_a+-)"):
        rho = signal_quality(digits["model"], None, digits["x_train"][half:], digits["x_test"],
                             patterns=digits["patterns"])
    fig = plot_signal_quality(rho, title="Signal-estimator quality per layer (digits CNN)")
    fig.savefig(os.path.join(out, "signal_quality.png"), dpi=DPI)
    return {"figure": "signal_quality.png", "rho": rho}


def _degradation(out: str, digits: dict[str, Any], settings: DemoSettings, steps: _Steps,
                 verbose: int) -> dict[str, Any]:
    from innv_pattern.evaluate import degradation_curves, plot_perturbation_curves

    x = digits["x_test"][:settings.degradation_samples]
    with steps.step(f"Image degradation of {len(x)} test digits, every analyzer and random order"):
        curves = degradation_curves(digits["model"], x, digits["analyses"], patch_size=4 if
                             settings.digits_size >= 16 else None, verbose=verbose)
    titled = {k if k == "random" else viz.DISPLAY_NAMES.get(k, k): v for k, v in curves.items()}
    fig = plot_perturbation_curves(titled, title="Image degradation (digits CNN)")
    fig.savefig(os.path.join(out, "degradation.png"), dpi=DPI)
    return {"figure": "degradation.png", "patch_size": curves["random"]["patch_size"],
            "aopc": {k: v["aopc"] for k, v in curves.items()},
            "curves": {k: v["curve"].tolist() for k, v in curves.items()}}


def _save_for_cli(out: str, digits: dict[str, Any]) -> dict[str, str]:
    """The digits model, test inputs and patterns as files, to try the other commands on."""
    files = {"model": "digits_cnn.keras", "data": "digits_test.npy",
             "patterns": "digits_cnn.patterns.h5"}
    digits["model"].save(os.path.join(out, files["model"]))
    np.save(os.path.join(out, files["data"]), digits["x_test"])
    digits["patterns"].save(os.path.join(out, files["patterns"]))
    return files


def run_demo(out: str = "demo_output", quick: bool = False, verbose: int = 1,
             settings: DemoSettings | None = None) -> str:
    """Runs the demo, writes figures, ``results.json`` and ``report.md`` into ``out``.

    Args:
        out: Output folder (made if missing).
        quick: Use :data:`QUICK` (a smoke test in seconds) instead of the defaults.
        verbose: 1 prints numbered steps and progress bars, 0 is silent.
        settings: Overrides ``quick``.

    Returns:
        The path of ``report.md``.
    """
    settings = settings or (QUICK if quick else DemoSettings())
    os.makedirs(out, exist_ok=True)
    steps = _Steps(7, verbose)
    results: dict[str, Any] = {"settings": dataclasses.asdict(settings)}
    digits = _digits(settings, steps, verbose)
    with steps.step(f"Explaining {settings.degradation_samples} test digits with every analyzer"):
        results["digits"] = _explain_digits(out, digits, settings, verbose)
    results["ground_truth"] = _ground_truth(out, settings, steps, verbose)
    results["photos"] = _photos(out, settings, steps, verbose)
    results["signal_quality"] = _signal_quality(out, digits, steps)
    results["degradation"] = _degradation(out, digits, settings, steps, verbose)
    results["files"] = _save_for_cli(out, digits)
    results["seconds"] = steps.seconds
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    report = os.path.join(out, "report.md")
    with open(report, "w") as f:
        f.write(render_report(results, out))
    return report


def _rho_section(rho: dict[str, dict[str, float]]) -> str:
    layers = list(next(iter(rho.values())))
    rows = [[kind] + [float(rho[kind][name]) for name in layers] for kind in rho]
    return (
        "## Signal-estimator quality per layer (Fig. 3)\n\n"
        "rho(S) = 1 - max_v corr(y, v^T (x - S(x))): how little of a neuron's output a linear "
        "read-out still finds in what the estimator calls distractor (higher is better). "
        "Patterns fitted on half of the training digits, v on the other half, rho measured on "
        "the test digits. The paper: random lowest, the filter S_w barely above it, the learned "
        "S_a and S_a+- far higher.\n\n"
        + markdown_table(["estimator"] + layers, rows) + "\n\n![rho per layer](signal_quality.png)\n")


def _accuracy_section(accuracy: dict[str, dict[str, float]]) -> str:
    rows = sorted(([viz.DISPLAY_NAMES.get(k, k)] + list(v.values()) for k, v in accuracy.items()),
                  key=lambda row: -row[-1])
    return (
        "Explanation accuracy against the known signal block, from |analysis| per image "
        "(auroc: a signal pixel scores above a non-signal one; precision: share of the top "
        "pixels that are signal; mass: share of the explanation inside the signal block):\n\n"
        + markdown_table(["analyzer", *next(iter(accuracy.values()))], rows) + "\n")


def _degradation_section(result: dict[str, Any]) -> str:
    rows = sorted(([viz.DISPLAY_NAMES.get(k, k), v] for k, v in result["aopc"].items()),
                  key=lambda row: -row[1])
    return (
        "## Image degradation (Fig. 4a)\n\n"
        f"Patches of {result['patch_size']}x{result['patch_size']} pixels, ranked by summed "
        "analysis, are replaced one after the other by their mean; the curve is the softmax "
        "probability of the initially predicted class. AOPC, the area over that curve, is "
        "higher for a steeper decay (better). Analyses that are signed directions rather than "
        "attributions (gradient, signals) rank patches by a sum that has no meaning of "
        "contribution, so compare within the attribution group.\n\n"
        + markdown_table(["analyzer", "AOPC"], rows) + "\n\n![degradation](degradation.png)\n")


def render_report(results: dict[str, Any], out: str) -> str:
    """The markdown report of :func:`run_demo`'s ``results``."""
    import tensorflow as tf

    files = {k: os.path.join(out, v) for k, v in results["files"].items()}
    total = sum(results["seconds"].values())
    return "\n".join([
        "# innv_pattern demo\n",
        f"Made by `innv-pattern demo` in {total:.0f} s (innv_pattern {ip.__version__}, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}). Signals and functions are "
        "drawn as in the paper, x / (2 max|x|) + 1/2 (grey = 0); attributions as heat maps "
        "(red positive, blue negative).\n",
        "## Weights vs patterns, where the signal is known (Section 2)\n",
        "Images x = signal + distractor + noise: the signal (the class, +-1) is a block at the "
        "top left; the distractor covers that block *and* one at the bottom right that carries "
        "no class information. A linear model fitted by least squares "
        f"(sign accuracy {results['ground_truth']['accuracy']:.1%}) must use the bottom-right "
        "block to cancel the distractor, so its weights (Gradient, and Guided BackProp, which "
        "is the gradient for a linear model) light up where there is no signal. PatternNet "
        "recovers the signal; PatternAttribution attributes to it alone, where LRP also "
        "attributes to the distractor's canceller.\n",
        "![ground truth](ground_truth.png)\n",
        _accuracy_section(results["ground_truth"]["explanation_accuracy"]),
        "## A CNN on digits, explained by every analyzer (Fig. 5)\n",
        f"A small CNN trained on sklearn's digits (test accuracy "
        f"{results['digits']['test_accuracy']:.1%}); patterns fitted on its training digits.\n",
        "![digits](digits_grid.png)\n",
        _rho_section(results["signal_quality"]["rho"]),
        _degradation_section(results["degradation"]),
        "## Photos (qualitative)\n",
        f"A CNN telling 48x48 crops of scikit-image's sample photos apart (accuracy "
        f"{results['photos']['accuracy']:.1%} on new crops); one crop per photo.\n",
        "![photos](photos_grid.png)\n",
        "## Timings\n",
        markdown_table(["step", "seconds"],
                       [[k, f"{v:.1f}"] for k, v in results["seconds"].items()]) + "\n",
        "## Next: the other commands, on the files this demo wrote\n",
        "```bash",
        f"innv-pattern fit --model {files['model']} --data {files['data']} --out my.patterns.h5",
        f"innv-pattern explain --model {files['model']} --patterns {files['patterns']} "
        f"--method pattern.attribution --input {files['data']} --out {out}/explained",
        f"innv-pattern evaluate --model {files['model']} --patterns {files['patterns']} "
        f"--data {files['data']} --out {out}/evaluation",
        "```\n",
    ])
