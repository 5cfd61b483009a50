"""Figures of the paper's measurements: rho per layer (Fig. 3), degradation curves (Fig. 4a).

Colours come from :mod:`innv_pattern.style` (one per estimator and per
analyzer, in every figure); legends sit outside the axes, so they never
cover a bar or a curve. No pyplot state is touched.

Example:
    >>> import numpy as np
    >>> rho = {"random": {"conv": 0.1, "dense": 0.0}, "linear": {"conv": 0.7, "dense": 0.5}}
    >>> fig = plot_signal_quality(rho)
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['random', '$S_a$']
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from innv_pattern.evaluate._common import figure_axes
from innv_pattern.style import ESTIMATOR_LABELS, LEGEND_OUTSIDE, RANDOM_COLOR, colors_for

__all__ = ["plot_perturbation_curves", "plot_signal_quality"]


def plot_signal_quality(rho: Mapping[str, Mapping[str, Any]], ax: Any = None,
                        title: str | None = None) -> Any:
    """Draws rho per layer for each estimator, as the paper's Fig. 3.

    Args:
        rho: :func:`~innv_pattern.evaluate.signal_quality`'s result (means, or
            per-neuron arrays, which are averaged).
        ax: Matplotlib axes to draw into (default: a new figure).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    fig, ax = figure_axes(ax, (7.5, 3.8))
    layers = list(next(iter(rho.values())))
    x = np.arange(len(layers))
    width = 0.8 / max(len(rho), 1)
    colors = colors_for(list(rho))
    top = 1.0
    for i, (kind, by_layer) in enumerate(rho.items()):
        values = [float(np.nanmean(by_layer[name])) for name in layers]
        top = max([top, *[v for v in values if np.isfinite(v)]])
        ax.bar(x + (i - (len(rho) - 1) / 2) * width, values, width,
               label=ESTIMATOR_LABELS.get(kind, kind),
               color=colors[kind])
    ax.set_xticks(x, layers, rotation=45, ha="right")
    ax.set_ylabel(r"$\rho(S)$", fontsize="large")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05 * top)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.axhline(1.0, color="grey", linewidth=0.5, linestyle=":")
    ax.legend(title="estimator", fontsize="large", **LEGEND_OUTSIDE)
    if title:
        ax.set_title(title)
    return fig


def plot_perturbation_curves(results: Mapping[str, Mapping[str, Any]], ax: Any = None,
                             title: str | None = None) -> Any:
    """Draws degradation curves as the paper's Fig. 4a, AOPC in the legend.

    Args:
        results: ``{label: perturbation_curve(...)}``; a ``"random"`` entry is
            drawn dashed in grey as the baseline. Labels that are analyzer
            names or display names get the analyzer's colour.
        ax: Matplotlib axes (default: a new figure).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    fig, ax = figure_axes(ax, (8.0, 4.0))
    colors = colors_for(list(results))
    for label, result in results.items():
        style = (dict(color=RANDOM_COLOR, linestyle="--") if label == "random"
                 else dict(color=colors[label]))
        ax.plot(result["steps"], result["curve"], label=f"{label} ({result['aopc']:.3f})",
                linewidth=1.8, **style)
    ax.set_xlabel("perturbation steps (patches replaced by their mean)")
    ax.set_ylabel("probability of the selected class")
    ax.legend(title="method (AOPC)", fontsize="small", **LEGEND_OUTSIDE)
    if title:
        ax.set_title(title)
    return fig
