"""innv_pattern.viz: the paper's normalization, heat maps, the Fig. 5 grid, the toy plot."""

import io

import matplotlib.image
import numpy as np
import pytest

from innv_pattern import viz


def test_project_is_the_papers_normalization():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6, 3))
    expected = x / (2 * np.abs(x).max()) + 0.5
    np.testing.assert_allclose(viz.project(x), expected)
    out = viz.project(x)
    assert out.min() >= 0 and out.max() <= 1
    assert np.isclose(out.max(), 1.0) or np.isclose(out.min(), 0.0)   # contrast maximized


def test_project_keeps_channels_drops_a_single_one_and_handles_zero():
    assert viz.project(np.ones((4, 4, 3))).shape == (4, 4, 3)
    assert viz.project(np.ones((4, 4, 1))).shape == (4, 4)
    assert viz.project(np.ones(7)).shape == (1, 7)
    np.testing.assert_array_equal(viz.project(np.zeros((3, 3))), np.full((3, 3), 0.5))


def test_heatmap_sums_channels_and_is_diverging():
    a = np.zeros((2, 2, 3))
    a[0, 0] = [1.0, 1.0, 1.0]      # positive contribution
    a[1, 1] = [-3.0, 0.0, 0.0]     # larger negative contribution
    rgb = viz.heatmap(a)
    assert rgb.shape == (2, 2, 3)
    red, blue, zero = rgb[0, 0], rgb[1, 1], rgb[0, 1]
    assert red[0] > red[2] and blue[2] > blue[0]          # red positive, blue negative
    np.testing.assert_allclose(zero, [1.0, 1.0, 1.0], atol=0.01)   # zero is white (seismic)
    assert np.abs(blue - zero).sum() > np.abs(red - zero).sum()   # scaled by max |a|


def test_heatmap_of_zero_is_the_centre_colour():
    np.testing.assert_allclose(viz.heatmap(np.zeros((3, 3))), viz.heatmap(np.zeros((3, 3)))[0:1, 0:1]
                               .repeat(3, 0).repeat(3, 1))


def test_draw_follows_the_kind_of_each_analyzer():
    x = np.random.default_rng(1).normal(size=(4, 4, 3))
    for name, kind in viz.KINDS.items():
        expected = viz.heatmap(x) if kind == "attribution" else viz.project(x)
        np.testing.assert_array_equal(viz.draw(x, name), expected)
    assert viz.kind_of("pattern.net") == "signal"
    assert viz.kind_of("gradient") == "function"
    with pytest.raises(ValueError, match="Unknown analyzer 'nope'"):
        viz.draw(x, "nope")


def test_every_registered_analyzer_has_a_kind_and_a_name():
    import innv_pattern as ip

    assert set(ip.list_analyzers()) <= set(viz.KINDS)
    assert set(viz.KINDS) == set(viz.DISPLAY_NAMES)


def test_input_image_is_min_max_scaled():
    x = np.array([[-2.0, 0.0], [2.0, 6.0]])
    np.testing.assert_allclose(viz.input_image(x), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(viz.input_image(np.ones((2, 2))), np.zeros((2, 2)))


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"received shape \(1, 2, 3, 4\)"):
        viz.project(np.zeros((1, 2, 3, 4)))
    x = np.zeros((2, 4, 4, 1))
    with pytest.raises(ValueError, match="inputs' shape"):
        viz.plot_grid(x, {"gradient": np.zeros((3, 4, 4, 1))})
    with pytest.raises(ValueError, match="Expected 2 row labels"):
        viz.plot_grid(x, {"gradient": x}, row_labels=["only one"])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.plot_toy(np.zeros((5, 3)), np.zeros(5), {})


def _png(fig) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    buffer.seek(0)
    return matplotlib.image.imread(buffer)


def test_grid_groups_columns_like_fig5_and_renders():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 8, 8, 3))
    analyses = {"pattern.attribution": x, "gradient": x, "pattern.net": x, "lrp.z": x}
    fig = viz.plot_grid(x, analyses, row_labels=["a", "b", "c"],
                        references={"true signal": x})
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["input", "true signal", "Gradient", "PatternNet", "PatternAttribution",
                      "LRP-z"]                         # grouped; given order kept within a group
    headers = [t.get_text() for t in fig.texts]
    assert headers == ["function", "signal", "attribution"]
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["a", "b", "c"]
    image = _png(fig)
    assert image.ndim == 3 and image.shape[0] > 50


def test_grid_shows_heatmaps_and_projections_as_drawn():
    x = np.random.default_rng(3).normal(size=(1, 5, 5, 1))
    fig = viz.plot_grid(x, {"lrp.z": x, "pattern.net": -x})
    shown = {ax.get_title(): ax.images[0].get_array() for ax in fig.axes if ax.images}
    np.testing.assert_allclose(shown["LRP-z"], viz.heatmap(x[0]))
    np.testing.assert_allclose(shown["PatternNet"], viz.project(-x[0]))
    np.testing.assert_allclose(shown["input"], viz.input_image(x[0]))


def test_grid_accepts_one_dimensional_inputs():
    x = np.random.default_rng(4).normal(size=(2, 10))
    fig = viz.plot_grid(x, {"gradient": x}, row_labels=["first", "second"])
    assert _png(fig).shape[1] > 0
    label = fig.axes[0].yaxis.label
    assert label.get_text() == "first" and label.get_rotation() == 0   # flat rows: written across
    assert fig.get_figheight() < 2 * 1.5


def test_toy_plot_draws_data_and_one_arrow_per_direction():
    from innv_pattern.datasets import toy_data

    toy = toy_data(300, seed=0)
    fig = viz.plot_toy(toy.x, toy.y, {"filter w": toy.w, "signal a_s": toy.a_s,
                                      "distractor a_d": toy.a_d})
    ax = fig.axes[0]
    assert len(ax.collections) == 1 and len(ax.texts) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["filter w", "signal a_s",
                                                                   "distractor a_d"]
    assert _png(fig).size > 0


def test_viz_touches_no_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    viz.plot_grid(np.zeros((1, 4, 4)), {"gradient": np.zeros((1, 4, 4))})
    assert plt.get_fignums() == before
