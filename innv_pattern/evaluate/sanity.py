"""Model-parameter randomization sanity check (Adebayo et al., 2018).

An explanation that is meant to explain *the model* must change when the
model's parameters are destroyed.  :func:`randomization_check` re-initialises
the kernel layers of a copy of the model, from the top (output) layer down
(``"cascading"``) or one at a time (``"independent"``), explains the same
inputs and the same output neuron (the class the original model predicts)
after each step, and measures how similar the explanation stays.  The user's
model is never modified.

Re-initialisation draws each layer's kernel (and bias, depthwise and
pointwise kernels) afresh from the layer's own initializer with a new seed;
BatchNormalization statistics are kept.  ``pattern.net`` and
``pattern.attribution`` refit their patterns on the randomized model
(``fit_data``), since patterns are a function of the weights.

Similarities (per image, then averaged): ``spearman_abs`` (rank correlation
of absolute values, Adebayo's main measure), ``spearman`` (signed) and
``pearson``.  Ties get average ranks.

Example:
    >>> import keras, numpy as np
    >>> inp = keras.Input((5,))
    >>> model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(4)(inp)))
    >>> x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    >>> result = randomization_check(model, "gradient", x)
    >>> len(result["layers"]), float(result["similarity"]["spearman_abs"][0])
    (2, 1.0)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
import numpy as np

from innv_pattern.canonize import canonize
from innv_pattern.evaluate._common import figure_axes, needs_patterns
from innv_pattern.style import LEGEND_OUTSIDE, colors_for

__all__ = ["METRICS", "plot_randomization", "randomization_check", "similarity"]

METRICS = ("spearman_abs", "spearman", "pearson")
_INITIALIZERS = {"kernel": "kernel_initializer", "bias": "bias_initializer",
                 "depthwise_kernel": "depthwise_initializer",
                 "pointwise_kernel": "pointwise_initializer"}


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0
    return average[inverse.ravel()]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else float("nan")


def similarity(a: np.ndarray, b: np.ndarray, metric: str = "spearman_abs") -> np.ndarray:
    """Per-sample similarity of two batches of explanations.

    Example:
        >>> a = np.array([[1.0, -2.0, 3.0]])
        >>> similarity(a, -a, "spearman_abs"), similarity(a, -a, "spearman")
        (array([1.]), array([-1.]))
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown similarity metric {metric!r}; accepted: {METRICS}.")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if metric == "spearman_abs":
        a, b = np.abs(a), np.abs(b)
    if metric != "pearson":
        a = np.stack([_ranks(row) for row in a])
        b = np.stack([_ranks(row) for row in b])
    return np.array([_pearson(u, v) for u, v in zip(a, b)])


def _randomize(layer: Any, seed: int) -> None:
    """Re-draws the layer's kernels and bias from its own initializers."""
    for variable in layer.weights:
        attr = _INITIALIZERS.get(variable.path.split("/")[-1])
        init = getattr(layer, attr, None) if attr else None
        if init is None:
            continue
        config = init.get_config()
        if "seed" in config:
            init = init.__class__.from_config({**config, "seed": seed})
        variable.assign(init(variable.shape, dtype=variable.dtype))


def _kernel_layers(model: keras.Model) -> list[Any]:
    """The model's kernel layers, output first (each layer once)."""
    layers: list[Any] = []
    for op in reversed(canonize(model).kernel_ops):
        if op.layer not in layers:
            layers.append(op.layer)
    return layers


def _explain(model: keras.Model, name: str, x: np.ndarray, selected: np.ndarray,
             fit_data: Any, kwargs: Mapping[str, Any], batch_size: int) -> np.ndarray:
    import innv_pattern as ip

    analyzer = ip.create_analyzer(name, model, neuron_selection_mode="index", **kwargs)
    if needs_patterns(name) and "patterns" not in kwargs:
        analyzer.fit(fit_data, verbose=0)
    return np.asarray(analyzer.analyze(x, neuron_selection=selected, batch_size=batch_size))


def randomization_check(model: keras.Model, analyzer_name: str, x: Any, *,
                        mode: str = "cascading", fit_data: Any = None,
                        analyzer_kwargs: Mapping[str, Any] | None = None,
                        metrics: Sequence[str] = METRICS, batch_size: int = 64,
                        seed: int = 0) -> dict[str, Any]:
    """How much an analyzer's explanations change as the model is randomized.

    Args:
        model: A Keras model (not modified: a copy is randomized).
        analyzer_name: One of :func:`innv_pattern.list_analyzers`.
        x: Inputs to explain.
        mode: ``"cascading"`` (layers randomized cumulatively from the top)
            or ``"independent"`` (one layer at a time).
        fit_data: Data to (re)fit the patterns of ``pattern.*`` analyzers.
        analyzer_kwargs: Options for the analyzer (for example
            ``patterns=...`` to keep fixed patterns instead of refitting).
        metrics: Any of ``"spearman_abs"``, ``"spearman"``, ``"pearson"``.
        batch_size: Analysis batch size.
        seed: Seed of the re-initialisation.

    Returns:
        ``{"layers": [...], "similarity": {metric: (L + 1,)}, "per_sample":
        {metric: (L + 1, n)}}``: entry 0 is the unmodified model (1 by
        definition), entry ``i`` after randomizing ``layers[:i]``
        (cascading) or ``layers[i - 1]`` alone (independent).
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent'; received {mode!r}.")
    kwargs = dict(analyzer_kwargs or {})
    if needs_patterns(analyzer_name) and fit_data is None and "patterns" not in kwargs:
        raise ValueError(f"'{analyzer_name}' needs fit_data to refit its patterns on each "
                         "randomized model (or analyzer_kwargs={'patterns': ...} to keep them).")
    x = np.asarray(x, np.float32)
    selected = np.argmax(np.reshape(model.predict(x, verbose=0), (len(x), -1)), axis=1)
    original = _explain(model, analyzer_name, x, selected, fit_data, kwargs, batch_size)
    names = [layer.name for layer in _kernel_layers(model)]
    per_sample = {m: [similarity(original, original, m)] for m in metrics}
    clone = _copy(model)
    for i, name in enumerate(names):
        if mode == "independent":
            clone = _copy(model)
        target = next(layer for layer in _kernel_layers(clone) if layer.name == name)
        _randomize(target, seed + i)
        explanation = _explain(clone, analyzer_name, x, selected, fit_data, kwargs, batch_size)
        for m in metrics:
            per_sample[m].append(similarity(original, explanation, m))
    stacked = {m: np.stack(v) for m, v in per_sample.items()}
    return {"layers": names, "mode": mode, "per_sample": stacked,
            "similarity": {m: np.nanmean(v, axis=1) for m, v in stacked.items()}}


def _copy(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def plot_randomization(results: Mapping[str, Mapping[str, Any]], metric: str = "spearman_abs",
                       ax: Any = None, title: str | None = None) -> Any:
    """Draws similarity against the randomized layers, one line per analyzer.

    Args:
        results: ``{analyzer name: randomization_check(...)}``; analyzer names
            or display names get the colours of :mod:`innv_pattern.style`.
        metric: Which similarity to draw.
        ax: Matplotlib axes (default: a new figure).
        title: Figure title.

    Returns:
        The matplotlib figure; the legend lies right of the axes.
    """
    fig, ax = figure_axes(ax, (7.5, 4.0))
    colors = colors_for(list(results))
    for label, result in results.items():
        values = result["similarity"][metric]
        ax.plot(np.arange(len(values)), values, marker="o", label=label, color=colors[label])
    first = next(iter(results.values()))
    ax.set_xticks(np.arange(len(first["layers"]) + 1), ["original"] + first["layers"],
                  rotation=45, ha="right")
    ax.set_ylabel(f"similarity to original\n({metric})")
    ax.set_xlabel("randomized " + ("up to layer (from the top)" if first["mode"] == "cascading"
                                   else "layer"))
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.legend(title="analyzer", fontsize="small", **LEGEND_OUTSIDE)
    if title:
        ax.set_title(title)
    return fig
