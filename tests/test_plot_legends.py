"""The evaluation figures outside evaluate/plots.py (explanation accuracy, randomization)
follow the shared style: the analyzer's colour, and a legend right of the axes that never
lies on a bar or a curve (checked by rendering with Agg, on as many analyzers as the paper
compares)."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba

from innv_pattern import style, viz
from innv_pattern.evaluate import plot_explanation_accuracy, plot_randomization

ANALYZERS = list(style.ANALYZER_COLORS)           # the paper's ten
LAYERS = ["dense2", "dense1", "conv3", "conv2", "conv1"]


def _accuracy(names, metrics=("auroc", "precision", "mass", "emd")):
    rng = np.random.default_rng(0)
    return {n: {m: float(v) for m, v in zip(metrics, rng.uniform(0.9, 1.0, len(metrics)))}
            for n in names}


def _randomization(names):
    steps = np.arange(len(LAYERS) + 1)
    return {n: {"layers": LAYERS, "mode": "cascading",
                "similarity": {"spearman_abs": 1.0 - steps * i / (2.0 * len(names) * 5)}}
            for i, n in enumerate(names)}


def _figure(kind, names):
    if kind == "accuracy":
        return plot_explanation_accuracy(_accuracy(names), title="Explanation accuracy")
    return plot_randomization(_randomization(names), title="Cascading randomization")


@pytest.mark.parametrize("kind", ["accuracy", "randomization"])
@pytest.mark.parametrize("names", [ANALYZERS, [viz.DISPLAY_NAMES[n] for n in ANALYZERS[:3]]])
def test_the_legend_lies_beside_the_data_and_inside_the_figure(kind, names):
    """Accuracies near 1 put the bars where the legend used to sit (upper centre, inside)."""
    fig = _figure(kind, names)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    data = ax.get_window_extent(renderer)
    assert not legend.overlaps(data), f"the legend {legend} lies on the data area {data}"
    assert legend.x0 >= data.x1, "the legend is not right of the axes"
    inside = fig.bbox
    assert legend.x1 <= inside.x1 and legend.y0 >= 0 and legend.y1 <= inside.y1, \
        "the legend leaves the figure"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == names
    for tick in ax.get_xticklabels():
        box = tick.get_window_extent(renderer)
        assert box.y0 >= 0 and box.x0 >= 0 and box.x1 <= inside.x1, tick.get_text()


@pytest.mark.parametrize("kind", ["accuracy", "randomization"])
def test_each_analyzer_has_its_colour_from_the_shared_style(kind):
    names = ["gradient", "PatternAttribution", "my own"]
    ax = _figure(kind, names).axes[0]
    if kind == "accuracy":
        drawn = {c.get_label(): c.patches[0].get_facecolor() for c in ax.containers}
    else:
        drawn = {line.get_label(): to_rgba(line.get_color()) for line in ax.get_lines()
                 if not line.get_label().startswith("_")}
    assert drawn["gradient"] == to_rgba(style.ANALYZER_COLORS["gradient"])
    assert drawn["PatternAttribution"] == to_rgba(style.ANALYZER_COLORS["pattern.attribution"])
    assert drawn["my own"] == to_rgba(style.colors_for(names)["my own"])


def test_accuracy_groups_are_the_metrics_with_readable_names():
    ax = plot_explanation_accuracy(_accuracy(["gradient", "pattern.net"])).axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["AUROC", "precision\n(top k = mask size)", "mass in mask",
                     "EMD score\n(1 - EMD / diagonal)"]
    assert ax.get_ylim()[1] >= 1.0
