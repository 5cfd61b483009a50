"""Explanation accuracy against a signal known by construction.

On :func:`innv_pattern.datasets.ground_truth_images` the pixels that carry the
class signal are known (``signal_mask``), and so is a suppressor block that
carries only the distractor.  Each explanation is scored per image from its
absolute value (summed over channels):

* ``"auroc"``: probability that a signal pixel scores above a non-signal pixel
  (ties count half; the Mann-Whitney statistic);
* ``"precision"``: fraction of the ``k`` top-scoring pixels that are signal
  pixels, ``k`` the size of the mask (ties at the threshold shared in
  proportion, so the value does not depend on how ties are broken);
* ``"mass"``: share of the total absolute explanation inside the mask.

Example:
    >>> import numpy as np
    >>> mask = np.array([[True, False], [False, False]])
    >>> explanation_accuracy(np.array([[[3.0, 1.0], [0.0, -2.0]]]), mask)
    {'auroc': 1.0, 'precision': 1.0, 'mass': 0.5}
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from innv_pattern.evaluate._common import figure_axes

__all__ = ["ACCURACY_METRICS", "explanation_accuracy", "plot_explanation_accuracy"]

ACCURACY_METRICS = ("auroc", "precision", "mass")


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.ravel()]
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _precision(score: np.ndarray, positive: np.ndarray) -> float:
    k = int(positive.sum())
    threshold = np.sort(score)[::-1][k - 1]
    above, tied = score > threshold, score == threshold
    share = (k - above.sum()) / tied.sum()
    return float(((above & positive).sum() + share * (tied & positive).sum()) / k)


def _mass(score: np.ndarray, positive: np.ndarray) -> float:
    total = score.sum()
    return float(score[positive].sum() / total) if total > 0 else float("nan")


_FUNCTIONS = {"auroc": _auroc, "precision": _precision, "mass": _mass}


def explanation_accuracy(analysis: Any, signal_mask: Any,
                         metrics: Sequence[str] = ACCURACY_METRICS,
                         per_sample: bool = False) -> dict[str, Any]:
    """Agreement of explanations with the true signal region.

    Args:
        analysis: ``(n, height, width)`` or ``(n, height, width, channels)``.
        signal_mask: ``(height, width)`` boolean mask of the signal (the same
            for every image) or ``(n, height, width)``.
        metrics: Any of ``"auroc"``, ``"precision"``, ``"mass"``.
        per_sample: Return each image's value instead of the mean.

    Returns:
        ``{metric: mean over images}`` (or arrays with ``per_sample=True``).
    """
    unknown = [m for m in metrics if m not in ACCURACY_METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; accepted: {ACCURACY_METRICS}.")
    a = np.asarray(analysis, np.float64)
    if a.ndim == 4:
        a = a.sum(-1)
    mask = np.asarray(signal_mask, bool)
    if a.ndim != 3 or mask.shape not in (a.shape, a.shape[1:]):
        raise ValueError(f"analysis must be (n, height, width[, channels]) with a signal_mask of "
                         f"its image shape; received {np.shape(analysis)} and "
                         f"{np.shape(signal_mask)}.")
    flat = np.broadcast_to(mask, a.shape).reshape(len(a), -1)
    if not flat.any(1).all() or flat.all(1).any():
        raise ValueError("Each image's signal_mask must have signal and non-signal pixels.")
    score = np.abs(a).reshape(len(a), -1)
    result = {}
    for m in metrics:
        values = np.array([_FUNCTIONS[m](s, p) for s, p in zip(score, flat)])
        result[m] = values if per_sample else float(np.nanmean(values))
    return result


def plot_explanation_accuracy(results: Mapping[str, Mapping[str, float]], ax: Any = None,
                              title: str | None = None) -> Any:
    """Grouped bars: one group per analyzer, one bar per metric.

    Args:
        results: ``{analyzer: explanation_accuracy(...)}``.
        ax: Matplotlib axes (default: a new figure).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    fig, ax = figure_axes(ax, (7.5, 3.8))
    names = list(results)
    metrics = list(next(iter(results.values())))
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, [results[n][m] for n in names], width,
               label=m)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0.0, 1.2)
    ax.set_ylabel("explanation accuracy")
    ax.legend(fontsize="small", loc="upper center", ncol=len(metrics))
    if title:
        ax.set_title(title)
    return fig
