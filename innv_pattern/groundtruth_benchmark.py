"""Every analyzer against data with a known answer: the XAI-TRIS benchmark, built in.

For each scenario (LIN, MULT, RIGID, XOR) and background (WHITE, CORR) of
:func:`innv_pattern.datasets.xai_tris` (8x8, the published signal-to-noise
levels), three models are trained: the XAI-TRIS authors' linear logistic
regression (LIN only, as published: it cannot solve the others) and MLP
(32-16-8 ReLU units), and a small CNN (two 3x3 convolutions of 8 and 16
filters with 2x2 max-pooling, 16 dense ReLU units).  Their 8x8 CNN (four 2x2
convolutions of 4 filters) stayed at chance on CORR backgrounds within the
epochs affordable here, so it is replaced.  Every analyzer of
:func:`innv_pattern.list_analyzers` (pattern methods with patterns fitted on
the training images, the default estimator) explains the predicted class of
correctly classified test images, next to three model-free baselines: a
random map, a Sobel edge map of the image and the image itself.  Each map is
scored against the ground truth with
:func:`innv_pattern.evaluate.explanation_accuracy` (EMD score, top-k
precision, mass on the signal, AUROC), and each analyzer's input invariance is
measured on the LIN/WHITE models (:func:`innv_pattern.evaluate.input_invariance`).

Example:
    >>> from innv_pattern.groundtruth_benchmark import run_benchmark
    >>> result = run_benchmark(output_dir=None, scenarios=("lin",), backgrounds=("white",),
    ...                        models=("linear",), verbose=0)       # doctest: +SKIP
    >>> sorted(result["cells"][0]["scores"])[:3]                    # doctest: +SKIP
    ['deconvnet', 'gradient', 'guided_backprop']
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from innv_pattern.groundtruth_data import BACKGROUNDS, SCENARIOS, xai_tris

__all__ = ["BASELINES", "MODELS", "SETTINGS", "baseline_map", "build_model", "run_benchmark"]

MODELS = ("linear", "mlp", "cnn")
BASELINES = ("random", "sobel", "input")
METRICS = ("emd", "precision", "mass", "auroc")
# quick: the small version `innv-pattern benchmark` runs (minutes on 2 cores).
SETTINGS = {
    "quick": {"n": 2400, "test": 400, "explain": 40, "epochs": 60, "patience": 8},
    "full": {"n": 6000, "test": 1000, "explain": 200, "epochs": 200, "patience": 15},
}
ANALYZER_OPTIONS = {"smoothgrad": {"noise_scale": 0.1, "augment_by_n": 32},
                    "integrated_gradients": {"steps": 32}}


def build_model(kind: str, size: int = 8, seed: int = 0) -> Any:
    """The benchmark's models, softmax out.

    ``"linear"``: ``Dense(2)`` without bias and ``"mlp"``: ReLU layers of 32, 16
    and 8 units, as in the XAI-TRIS authors' ``training/models_keras.py``;
    ``"cnn"``: ReLU ``Conv2D(8, 3)``, ``MaxPooling2D(2)``, ``Conv2D(16, 3)``,
    ``MaxPooling2D(2)`` ("same" padding) and 16 dense ReLU units.  The output
    layer starts from zeros:
    the two logits of a softmax share a component that training never changes,
    and a random start would leave it in the logit an analyzer explains.
    """
    import keras

    if kind not in MODELS:
        raise ValueError(f"Unknown model {kind!r}; accepted: {MODELS}.")
    keras.utils.set_random_seed(seed)
    layers, he = keras.layers, keras.initializers.HeNormal(seed)
    body: list[Any] = [layers.Flatten()]
    if kind == "mlp":
        body += [layers.Dense(u, activation="relu", kernel_initializer=he) for u in (32, 16, 8)]
    elif kind == "cnn":
        body = [block for i, filters in enumerate((8, 16)) for block in (
            layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=he,
                          name=f"conv{i + 1}"), layers.MaxPooling2D(2))]
        body += [layers.Flatten(), layers.Dense(16, activation="relu", kernel_initializer=he)]
    out = layers.Dense(2, activation="softmax", use_bias=kind != "linear",
                       kernel_initializer="zeros", name="output")
    return keras.Sequential([keras.Input((size, size, 1)), *body, out], name=kind)


def _train(model: Any, x: np.ndarray, y: np.ndarray, settings: dict) -> float:
    """Adam (0.01, halved when the validation loss stalls), cross-entropy, early stopping
    on a held-out tenth after the first half of the epochs (on CORR backgrounds the
    MLP sits at chance for tens of epochs before it learns); returns the best
    validation accuracy."""
    import keras

    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=settings["patience"],
                                               restore_best_weights=True,
                                               start_from_epoch=settings["epochs"] // 2),
                 keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5,
                                                   patience=settings["patience"] // 2)]
    history = model.fit(x, y, batch_size=128, epochs=settings["epochs"], validation_split=0.1,
                        callbacks=callbacks, verbose=0)
    return float(max(history.history["val_accuracy"]))


def baseline_map(name: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A model-free map of ``x`` ``(n, h, w, 1)``: ``"random"`` (Gaussian), ``"sobel"``
    (the Sobel gradient magnitude, mirrored borders) or ``"input"`` (``x``)."""
    if name == "random":
        return np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    if name == "sobel":
        from scipy.ndimage import sobel

        images = x[..., 0].astype(np.float64)   # per image: sobel smooths along every other axis
        return np.stack([np.hypot(sobel(i, axis=0), sobel(i, axis=1)) for i in images])[..., None]
    if name == "input":
        return x
    raise ValueError(f"Unknown baseline {name!r}; accepted: {BASELINES}.")


def _maps(model: Any, x: np.ndarray, fit: np.ndarray, names: Sequence[str],
          seed: int) -> dict[str, np.ndarray]:
    from innv_pattern.evaluate import analyze_all

    maps = analyze_all(model, x, names, fit_data=fit, analyzer_kwargs=ANALYZER_OPTIONS)
    maps.update({b: baseline_map(b, x, seed) for b in BASELINES})
    return maps


def _cell(scenario: str, background: str, kinds: Sequence[str], settings: dict,
          names: Sequence[str], seed: int, log: Any) -> tuple[list[dict], dict]:
    """Trains each model on one data set and scores every map; examples for the figure."""
    from innv_pattern.evaluate import explanation_accuracy

    data = xai_tris(settings["n"], scenario, background, seed=seed)
    train, test = slice(0, settings["n"] - settings["test"]), slice(-settings["test"], None)
    rows, examples = [], {}
    for kind in kinds:
        t0 = time.perf_counter()
        model = build_model(kind, seed=seed)
        val = _train(model, data.x[train], data.labels[train], settings)
        predicted = np.argmax(model.predict(data.x[test], verbose=0), 1)
        correct = np.flatnonzero(predicted == data.labels[test])[:settings["explain"]]
        x, masks = data.x[test][correct], data.masks[test][correct]
        t1 = time.perf_counter()
        maps = _maps(model, x, data.x[train], names, seed)
        scores = {m: explanation_accuracy(a, masks, metrics=METRICS) for m, a in maps.items()}
        rows.append({"scenario": scenario, "background": background, "model": kind,
                     "test_accuracy": float(np.mean(predicted == data.labels[test])),
                     "val_accuracy": val, "explained": int(len(correct)),
                     "train_seconds": t1 - t0, "score_seconds": time.perf_counter() - t1,
                     "scores": scores})
        examples[kind] = {"x": x[0, ..., 0], "mask": masks[0],
                          "maps": {m: a[0, ..., 0] for m, a in maps.items()}}
        log(f"{scenario}/{background}/{kind}: accuracy {rows[-1]['test_accuracy']:.3f}, EMD "
            + " ".join(f"{m} {s['emd']:.2f}" for m, s in scores.items()))
    return rows, examples


def _invariance(names: Sequence[str], kinds: Sequence[str], seed: int,
                settings: dict) -> dict[str, dict[str, float]]:
    """Each analyzer's relative change under a shift of -1 on LIN/WHITE models (2017 paper)."""
    from innv_pattern.evaluate import input_invariance

    data = xai_tris(2000, "lin", "white", seed=seed + 1)
    out = {}
    for kind in kinds:
        model = build_model(kind, seed=seed)
        _train(model, data.x, data.labels, {**settings, "epochs": min(settings["epochs"], 15)})
        plain = [n for n in names if n not in ANALYZER_OPTIONS]
        errors = input_invariance(model, plain, data.x[:32], -1.0, fit_data=data.x)
        for name in set(names) & set(ANALYZER_OPTIONS):
            errors.update(input_invariance(model, [name], data.x[:32], -1.0,
                                           **ANALYZER_OPTIONS[name]))
        out[kind] = {n: errors[n] for n in names}
    return out


def run_benchmark(output_dir: str | os.PathLike | None = "groundtruth_results",
                  quick: bool = True, scenarios: Sequence[str] = SCENARIOS,
                  backgrounds: Sequence[str] = BACKGROUNDS, models: Sequence[str] = MODELS,
                  analyzers: Sequence[str] | None = None, invariance: bool = True,
                  seed: int = 0, verbose: int = 1, prefix: str = "groundtruth"
                  ) -> dict[str, Any]:
    """Runs the ground-truth benchmark; writes JSON, a markdown table and figures.

    Args:
        output_dir: Folder for ``<prefix>.json``, ``<prefix>.md``,
            ``<prefix>_scores.png`` and ``<prefix>_examples.png`` (created);
            ``None`` writes nothing.
        quick: The small version (2,400 images per data set, 40 explained per
            model, at most 60 epochs; about 5 minutes on 2 CPU cores) instead of
            the full one (6,000 images, 200 explained, up to 200 epochs).
        scenarios: Subset of ``("lin", "mult", "rigid", "xor")``.
        backgrounds: Subset of ``("white", "corr")``.
        models: Subset of ``("linear", "mlp", "cnn")``; the linear model runs
            on LIN only.
        analyzers: Analyzer names (default: all of :func:`innv_pattern.list_analyzers`).
        invariance: Also measure input invariance on the LIN/WHITE models.
        seed: Seed of the data, the models and the random baseline.
        verbose: 1 prints a line per model, 0 is silent.
        prefix: Start of the written files' names.

    Returns:
        ``{"settings", "cells": [{scenario, background, model, test_accuracy,
        ..., "scores": {method: {metric: mean}}}], "invariance", "machine"}``.
    """
    import innv_pattern as ip

    names = list(ip.list_analyzers() if analyzers is None else analyzers)
    bad = [s for s in scenarios if s not in SCENARIOS] + [
        b for b in backgrounds if b not in BACKGROUNDS] + [m for m in models if m not in MODELS]
    if bad or not (scenarios and backgrounds and models):
        raise ValueError(f"run_benchmark needs scenarios from {SCENARIOS}, backgrounds from "
                         f"{BACKGROUNDS} and models from {MODELS}; received scenarios="
                         f"{list(scenarios)}, backgrounds={list(backgrounds)}, "
                         f"models={list(models)}.")
    settings = dict(SETTINGS["quick" if quick else "full"])
    log = (lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)) if verbose \
        else (lambda m: None)
    t0, c0 = time.perf_counter(), time.process_time()
    record: dict[str, Any] = {"settings": {**settings, "quick": quick, "seed": seed,
                                           "analyzers": names, "size": 8}, "cells": []}
    examples = {}
    for scenario in scenarios:
        for background in backgrounds:
            kinds = [k for k in models if k != "linear" or scenario == "lin"]
            rows, examples[(scenario, background)] = _cell(scenario, background, kinds,
                                                           settings, names, seed, log)
            record["cells"] += rows
    kinds = [k for k in models if k != "linear" or "lin" in scenarios]
    record["invariance"] = _invariance(names, kinds, seed, settings) if invariance else {}
    record["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "seconds": time.perf_counter() - t0,
                         "cpu_seconds": time.process_time() - c0}
    log(f"done in {record['machine']['seconds']:.0f} s")
    if output_dir is not None:
        from innv_pattern.groundtruth_report import write_report

        write_report(record, examples, Path(output_dir), prefix)
    return record
