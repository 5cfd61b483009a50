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
* ``"mass"``: share of the total absolute explanation inside the mask;
* ``"emd"``: XAI-TRIS's earth mover's score (Clark et al., 2024),
  ``1 - EMD / d_max``: the exact earth mover's distance between the
  explanation's absolute value and the mask, each normalised to unit mass,
  with the Euclidean distance between pixel centres as the ground cost,
  divided by the image's diagonal ``d_max`` (1: all mass on the mask).  Not
  among the default metrics: it solves one transport problem per image (see
  :func:`earth_movers_distance`).

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
from innv_pattern.style import LEGEND_OUTSIDE, colors_for

__all__ = ["ACCURACY_METRICS", "DEFAULT_METRICS", "earth_movers_distance",
           "explanation_accuracy", "plot_explanation_accuracy"]

ACCURACY_METRICS = ("auroc", "precision", "mass", "emd")
DEFAULT_METRICS = ("auroc", "precision", "mass")
EMD_BACKENDS = ("auto", "pot", "scipy")
#: Axis labels of the metrics in :func:`plot_explanation_accuracy`.
METRIC_LABELS = {"auroc": "AUROC", "precision": "precision\n(top k = mask size)",
                 "mass": "mass in mask", "emd": "EMD score\n(1 - EMD / diagonal)"}


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


def _emd_score(score: np.ndarray, positive: np.ndarray, shape: tuple[int, int]) -> float:
    if score.sum() <= 0:
        return float("nan")
    d_max = np.hypot(shape[0] - 1, shape[1] - 1)
    return 1.0 - earth_movers_distance(score.reshape(shape), positive.reshape(shape)) / d_max


def _emd_pot(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    import ot

    return float(ot.emd2(a, b, cost, numItermax=1_000_000))


def _emd_scipy(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    """The transport problem as a linear program (HiGHS): ``min <C, T>``, ``T 1 = a``,
    ``T^T 1 = b``, ``T >= 0``."""
    from scipy import sparse
    from scipy.optimize import linprog

    m, n = cost.shape
    rows = sparse.kron(sparse.eye(m), np.ones((1, n)))
    cols = sparse.kron(np.ones((1, m)), sparse.eye(n))
    result = linprog(cost.ravel(), A_eq=sparse.vstack([rows, cols]).tocsr(),
                     b_eq=np.concatenate([a, b]), bounds=(0, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"The transport linear program failed: {result.message}")
    return float(result.fun)


def earth_movers_distance(a: Any, b: Any, backend: str = "auto") -> float:
    """Exact earth mover's distance between two non-negative images of one shape.

    Each image is normalised to unit mass; moving mass from one pixel to
    another costs their Euclidean distance (pixel centres one unit apart).
    Only the pixels with mass enter the transport problem, so an explanation
    against a small mask stays small.

    Args:
        a: Non-negative image ``(height, width)`` with positive total.
        b: The other, same shape (a boolean mask is uniform mass on it).
        backend: ``"pot"``: POT's network simplex (``pip install POT``, the
            ``groundtruth`` extra; fast, used by XAI-TRIS); ``"scipy"``:
            the same linear program solved by HiGHS (no extra dependency,
            fine for the supports of 8x8 images); ``"auto"``: POT if it is
            installed, else scipy.  Both are exact.

    Returns:
        The distance, in pixels.

    Example:
        >>> mask = np.array([[True, True], [False, False]])
        >>> spot = np.array([[0.0, 0.0], [5.0, 0.0]])          # all mass below the mask's left
        >>> round(earth_movers_distance(spot, mask, backend="scipy"), 4)   # (1 + sqrt(2)) / 2
        1.2071
    """
    if backend not in EMD_BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; accepted: {EMD_BACKENDS}.")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape or (a < 0).any() or (b < 0).any() or \
            not (a.sum() > 0 and b.sum() > 0):
        raise ValueError(f"earth_movers_distance needs two non-negative images of one shape "
                         f"(height, width) with positive mass; received shapes {a.shape} and "
                         f"{b.shape}, totals {a.sum()} and {b.sum()}.")
    grid = np.indices(a.shape).reshape(2, -1).T.astype(np.float64)
    ia, ib = np.flatnonzero(a), np.flatnonzero(b)
    cost = np.linalg.norm(grid[ia][:, None] - grid[ib][None], axis=-1)
    mass_a, mass_b = a.ravel()[ia] / a.sum(), b.ravel()[ib] / b.sum()
    if backend == "auto":
        try:
            import ot  # noqa: F401
            backend = "pot"
        except ImportError:
            backend = "scipy"
    return (_emd_pot if backend == "pot" else _emd_scipy)(mass_a, mass_b, cost)


_FUNCTIONS = {"auroc": _auroc, "precision": _precision, "mass": _mass}


def explanation_accuracy(analysis: Any, signal_mask: Any,
                         metrics: Sequence[str] = DEFAULT_METRICS,
                         per_sample: bool = False) -> dict[str, Any]:
    """Agreement of explanations with the true signal region.

    Args:
        analysis: ``(n, height, width)`` or ``(n, height, width, channels)``.
        signal_mask: ``(height, width)`` boolean mask of the signal (the same
            for every image) or ``(n, height, width)``.
        metrics: Any of ``"auroc"``, ``"precision"``, ``"mass"``, ``"emd"``.
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
    functions = {**_FUNCTIONS, "emd": lambda s, p: _emd_score(s, p, a.shape[1:])}
    for m in metrics:
        values = np.array([functions[m](s, p) for s, p in zip(score, flat)])
        result[m] = values if per_sample else float(np.nanmean(values))
    return result


def plot_explanation_accuracy(results: Mapping[str, Mapping[str, float]], ax: Any = None,
                              title: str | None = None) -> Any:
    """Grouped bars: one group per metric, one bar per analyzer in the analyzer's colour.

    Args:
        results: ``{analyzer: explanation_accuracy(...)}``; analyzer names or
            display names get the colours of :mod:`innv_pattern.style`.
        ax: Matplotlib axes (default: a new figure).
        title: Figure title.

    Returns:
        The matplotlib figure; the legend lies right of the axes.

    Example:
        >>> fig = plot_explanation_accuracy({"gradient": {"auroc": 0.5, "mass": 0.3},
        ...                                  "pattern.net": {"auroc": 1.0, "mass": 0.9}})
        >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
        ['AUROC', 'mass in mask']
    """
    fig, ax = figure_axes(ax, (7.5, 3.8))
    names = list(results)
    metrics = list(next(iter(results.values())))
    colors = colors_for(names)
    x = np.arange(len(metrics))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [results[name][m] for m in metrics],
               width, label=name, color=colors[name])
    ax.set_xticks(x, [METRIC_LABELS.get(m, m) for m in metrics])
    ax.set_ylim(0.0, 1.05)
    ax.axhline(1.0, color="grey", linewidth=0.5, linestyle=":")
    ax.set_ylabel("explanation accuracy")
    ax.legend(title="analyzer", fontsize="small", **LEGEND_OUTSIDE)
    if title:
        ax.set_title(title)
    return fig
