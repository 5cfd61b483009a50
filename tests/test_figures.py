"""Figures as a reader sees them, checked by rendering (Agg): labels that show, colour
scales, one colour per estimator and analyzer, legends off the data, readable mathtext."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from innv_pattern import style, viz
from innv_pattern.evaluate import plot_perturbation_curves, plot_signal_quality

RHO = {k: {"conv1": v, "conv2": v + 0.3, "dense": 1.2 * v}
       for k, v in zip(("random", "filter", "linear", "two_component"), (0.05, 0.1, 0.6, 0.8))}


def _rendered(fig):
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _curves(labels, n=9):
    steps = np.arange(n)
    return {label: {"steps": steps, "curve": 0.9 * np.exp(-steps / (2 + i)) + 0.05,
                    "aopc": 0.1 * i} for i, label in enumerate(labels)}


@pytest.mark.parametrize("labels, per_row", [
    (["true 0\npred 0 (99%)", "true 1\npred 7 (51%)", "true 2\npred 2 (80%)"], 1),
    ([f"output {k} (pre-softmax {k * 1.23:.3g})" for k in range(5)], 3),
])
def test_row_labels_are_left_of_the_images_and_inside_the_figure(labels, per_row):
    """Two-line y-labels with va='center' were drawn half under the input image
    (matplotlib 3.11); the explain grid writes one label left of each block."""
    x = np.random.default_rng(0).normal(size=(len(labels), 16, 16, 1))
    fig = viz.plot_grid(x, {"gradient": x, "pattern.attribution": x}, row_labels=labels,
                        per_row=per_row, cell_size=2.0 if per_row > 1 else 1.5)
    renderer = _rendered(fig)
    figure_box = fig.bbox
    images = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    shown = [ax.yaxis.label for ax in fig.axes if ax.get_ylabel()]
    assert [t.get_text() for t in shown] == labels
    for label in shown:
        box = label.get_window_extent(renderer)
        covering = [image for image in images if box.overlaps(image)]
        assert not covering, f"row label {label.get_text()!r} at {box} lies under an image"
        assert (box.x0 >= 0 and box.y0 >= 0 and box.x1 <= figure_box.x1
                and box.y1 <= figure_box.y1), f"row label {label.get_text()!r} leaves the figure"


def test_heatmaps_have_a_colour_scale_and_projections_none():
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3))
    fig = viz.plot_grid(x, {"gradient": x, "lrp.z": x})
    bars = [ax for ax in fig.axes if ax.get_label() == "colour scale"]
    assert len(bars) == 1, "one colour scale for the heat maps"
    ticks = [t.get_text() for t in bars[0].get_yticklabels()]
    assert ticks == ["-max|a|", "0", "+max|a|"]
    renderer = _rendered(fig)
    heat = [ax for ax in fig.axes if ax.get_title() == "LRP-z"][0]
    assert bars[0].get_window_extent(renderer).x0 >= heat.get_window_extent(renderer).x1
    assert not [ax for ax in viz.plot_grid(x, {"gradient": x}).axes
                if ax.get_label() == "colour scale"], "a colour scale without any heat map"
    flat = np.random.default_rng(1).normal(size=(3, 10))              # short rows: bar still fits
    fig = viz.plot_grid(flat, {"lrp.z": flat}, row_labels=["a", "b", "c"], per_row=2)
    renderer = _rendered(fig)
    bar = [ax for ax in fig.axes if ax.get_label() == "colour scale"][0]
    box = bar.get_tightbbox(renderer)
    assert box.y0 >= 0 and box.x1 <= fig.bbox.x1, f"the colour scale {box} leaves the figure"


def test_any_column_title_is_accepted():
    """plot_grid once raised 'Unknown analyzer' for a title such as 'PA (S_a)'."""
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 1))
    fig = viz.plot_grid(x, {"PatternAttribution": x, "PA (S_a)": -x, "my map": x},
                        kinds={"PA (S_a)": "attribution"})
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["input", "my map", "PatternAttribution", "PA (S_a)"]
    shown = {ax.get_title(): ax.images[0].get_array() for ax in fig.axes if ax.get_title()}
    np.testing.assert_allclose(shown["PA (S_a)"], viz.heatmap(-x[0]))
    np.testing.assert_allclose(shown["PatternAttribution"], viz.heatmap(x[0]))
    np.testing.assert_allclose(shown["my map"], viz.project(x[0]))   # no kind: like a reference
    assert [t.get_text() for t in fig.texts] == ["attribution"]
    with pytest.raises(ValueError, match="kinds must be one of"):
        viz.plot_grid(x, {"mine": x}, kinds={"mine": "heat"})


def test_many_inputs_make_a_grid_not_a_column():
    """explain drew 16 inputs as one column of 16 rows (a 2 x 33 inch strip)."""
    x = np.random.default_rng(3).normal(size=(16, 8, 8, 1))
    fig = viz.plot_grid(x, {"pattern.attribution": x}, per_row=4,
                        row_labels=[f"output {i}" for i in range(16)])
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes if ax.images}
    assert len(rows) == 4
    assert 0.5 < fig.get_figwidth() / fig.get_figheight() < 3
    assert len([ax for ax in fig.axes if ax.images]) == 32      # input and analysis each


def test_one_colour_per_analyzer_and_estimator_in_every_figure():
    first = plot_perturbation_curves(_curves(["random", "gradient", "pattern.attribution"]))
    second = plot_perturbation_curves(_curves(["random", "PatternAttribution", "LRP-z",
                                               "Gradient"]))
    colours = [{line.get_label().split(" (")[0]: line.get_color()
                for line in fig.axes[0].get_lines()} for fig in (first, second)]
    assert colours[0]["gradient"] == colours[1]["Gradient"] == style.ANALYZER_COLORS["gradient"]
    assert colours[0]["pattern.attribution"] == colours[1]["PatternAttribution"]
    assert colours[0]["random"] == colours[1]["random"] == style.RANDOM_COLOR
    assert len(set(colours[1].values())) == 4
    bars = plot_signal_quality(RHO).axes[0]
    by_label = {c.get_label(): c.patches[0].get_facecolor() for c in bars.containers}
    from matplotlib.colors import to_rgba

    for kind, label in style.ESTIMATOR_LABELS.items():
        assert by_label[label] == to_rgba(style.ESTIMATOR_COLORS[kind]), kind
    assert to_rgba(style.RANDOM_COLOR) == by_label["random"]     # random as in the curves


def test_spare_colours_never_repeat_a_declared_one():
    colours = style.colors_for(["lrp.z", "own 1", "own 2", "linear"])
    declared = set(style.ANALYZER_COLORS.values()) | set(style.ESTIMATOR_COLORS.values())
    assert colours["own 1"] not in declared and colours["own 2"] not in declared
    assert colours["own 1"] != colours["own 2"]


@pytest.mark.parametrize("plot", ["curves", "rho"])
def test_legends_do_not_cover_the_data(plot):
    """The legend sat over the curves (degradation) and the tallest bars (rho)."""
    fig = (plot_perturbation_curves(_curves(["random", *viz.KINDS][:11])) if plot == "curves"
           else plot_signal_quality(RHO, title="rho"))
    renderer = _rendered(fig)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer)), "the legend lies on the data"
    assert legend.x1 <= fig.bbox.x1 and legend.y0 >= 0, "the legend leaves the figure"


def test_estimator_subscripts_are_readable_at_the_default_dpi():
    """$S_a$ in a 'small' legend at 80 dpi had a subscript about 6 pixels high."""
    fig = plot_signal_quality(RHO)
    fig.set_dpi(style.DPI)
    renderer = _rendered(fig)
    texts = {t.get_text(): t for t in fig.axes[0].get_legend().get_texts()}
    for label in ("$S_w$", "$S_a$", r"$S_{a\pm}$"):
        height = texts[label].get_window_extent(renderer).height
        subscript = 0.7 * texts[label].get_fontsize() * style.DPI / 72   # mathtext's shrink
        assert subscript >= 8, f"{label}: subscript {subscript:.1f} px"
        assert height >= 16, f"{label} is {height:.1f} px high"
