"""Image degradation: curves and AOPC against hand-computed cases."""

import io
import warnings

import keras
import numpy as np
import pytest

from innv_pattern.evaluate import perturbation_curve, plot_perturbation_curves
from innv_pattern.evaluate.perturbation import _patch_means, degrading_patch_size, patch_grid


def _one_patch_model(pattern: np.ndarray) -> keras.Model:
    """Two classes on 6x6 images: logit_1 = <w, x>, w = ``pattern`` in the top-left 3x3 patch."""
    w = np.zeros((6, 6), np.float32)
    w[:3, :3] = pattern
    inp = keras.Input((6, 6, 1))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    kernel = np.zeros((36, 2), np.float32)
    kernel[:, 1] = w.ravel()
    dense.set_weights([kernel, np.zeros(2, np.float32)])
    return model


def test_one_informative_patch():
    """Only the top-left patch matters; its zero-mean pattern vanishes when it is averaged.

    With x's top-left patch = s * p (p zero-mean, |p|^2 = 6), logit_1 = 6 s and
    logit_0 = 0, so f(x^0) = sigmoid(6 s).  Ranking that patch first drops the
    probability to 1/2 at step 1 and it stays there: curve = [f0, .5, .5, .5, .5],
    AOPC = 4/5 (f0 - 1/2).  Ranking it last keeps f0 until the last step: AOPC =
    1/5 (f0 - 1/2).  A random order removes it by step k with probability k/4:
    expected AOPC = 1/5 (0 + 1/4 + 1/2 + 3/4 + 1)(f0 - 1/2) = (f0 - 1/2) / 2.
    """
    p = np.array([[1, -1, 0], [0, 1, -1], [-1, 0, 1]], np.float32)   # zero mean, |p|^2 = 6
    model = _one_patch_model(p)
    rng = np.random.default_rng(0)
    n, s = 600, 0.25
    x = rng.uniform(0, 1, (n, 6, 6, 1)).astype(np.float32)
    x[:, :3, :3, 0] = s * p + 0.3                                    # mean 0.3, pattern s p
    f0 = 1 / (1 + np.exp(-6 * s))
    heat = np.zeros_like(x)
    heat[:, :3, :3] = 1.0                                            # the informative patch first
    good = perturbation_curve(model, heat, x, patch_size=3, neuron_selection=1)
    np.testing.assert_allclose(good["curve"], [f0, 0.5, 0.5, 0.5, 0.5], atol=1e-5)
    assert good["aopc"] == pytest.approx(0.8 * (f0 - 0.5), abs=1e-5)
    bad = perturbation_curve(model, -heat, x, patch_size=3, neuron_selection=1)
    np.testing.assert_allclose(bad["curve"], [f0, f0, f0, f0, 0.5], atol=1e-5)
    assert bad["aopc"] == pytest.approx(0.2 * (f0 - 0.5), abs=1e-5)
    rand = perturbation_curve(model, "random", x, patch_size=3, neuron_selection=1, seed=1)
    np.testing.assert_allclose(rand["curve"], f0 - (f0 - 0.5) * np.arange(5) / 4, atol=0.02)
    assert rand["aopc"] == pytest.approx(0.5 * (f0 - 0.5), abs=0.005)
    assert good["per_sample"].shape == (n, 5) and (good["selected"] == 1).all()
    fig = plot_perturbation_curves({"heat": good, "random": rand}, title="one patch")
    fig.savefig(io.BytesIO(), format="png")


def test_max_activation_selection_and_steps():
    """Without neuron_selection the class with the largest output on x^0 is followed."""
    p = np.array([[1, -1, 0], [0, 1, -1], [-1, 0, 1]], np.float32)
    model = _one_patch_model(p)
    x = np.zeros((2, 6, 6, 1), np.float32)
    x[0, :3, :3, 0], x[1, :3, :3, 0] = p, -p                          # logit_1 = +6 and -6
    result = perturbation_curve(model, np.ones_like(x), x, patch_size=3, steps=2)
    np.testing.assert_array_equal(result["selected"], [1, 0])
    assert result["curve"].shape == (3,)
    np.testing.assert_allclose(result["per_sample"][:, 0], 1 / (1 + np.exp(-6)), rtol=1e-5)
    logits = perturbation_curve(model, np.ones_like(x), x, patch_size=3, output="logit")
    np.testing.assert_allclose(logits["per_sample"][0, 0], 6.0, rtol=1e-5)


def test_edge_patches_are_replaced_by_their_channel_means():
    """A 5x4 image in 2x2 patches: edge patches are 1x2; every patch gets its own mean."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 4, 2)).astype(np.float32)
    grid = patch_grid(5, 4, 2)
    blurred = _patch_means(x, grid, int(grid.max()) + 1)
    np.testing.assert_allclose(blurred[0, 4, 2:, 1], x[0, 4, 2:, 1].mean(), rtol=1e-5)
    np.testing.assert_allclose(blurred[0, :2, :2, 0], x[0, :2, :2, 0].mean(), rtol=1e-5)


def test_errors_are_keras_style():
    model = _one_patch_model(np.eye(3, dtype=np.float32))
    x = np.zeros((2, 6, 6, 1), np.float32)
    with pytest.raises(ValueError, match="channels last"):
        perturbation_curve(model, x[..., 0], x[..., 0])
    with pytest.raises(ValueError, match="shape of x"):
        perturbation_curve(model, np.zeros((2, 5, 5)), x, patch_size=3)
    with pytest.raises(ValueError, match="'random'"):
        perturbation_curve(model, "shuffled", x, patch_size=3)
    with pytest.raises(ValueError, match="steps must be between 0 and the 4 patches"):
        perturbation_curve(model, x, x, patch_size=3, steps=9)
    with pytest.raises(ValueError, match="neuron_selection"):
        perturbation_curve(model, x, x, patch_size=3, neuron_selection=5)


def test_a_curve_that_cannot_move_is_warned_about():
    """One-pixel patches are their own mean: every curve is flat and AOPC 0, which once
    passed silently. A random order that does not move (here: a model that ignores the
    patches' content) is warned about too; a moving one is not."""
    p = np.array([[1, -1, 0], [0, 1, -1], [-1, 0, 1]], np.float32)
    model = _one_patch_model(p)
    x = np.random.default_rng(0).uniform(0, 1, (20, 6, 6, 1)).astype(np.float32)
    with pytest.warns(UserWarning, match="one pixel .* pass patch_size=2 or more"):
        flat = perturbation_curve(model, x, x, patch_size=1, neuron_selection=1)
    assert flat["aopc"] == 0.0
    ignoring = _one_patch_model(np.zeros((3, 3), np.float32))
    with pytest.warns(UserWarning, match="does not move .* ignores"):
        perturbation_curve(ignoring, "random", x, patch_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        moving = perturbation_curve(model, "random", x, patch_size=3, neuron_selection=1)
    assert moving["aopc"] > 0


def test_the_degrading_default_patch_size():
    """The paper's 9 at 224; side/8 in between; never 1 (8x8 digits get 2x2 patches)."""
    assert [degrading_patch_size(s) for s in (224, 72, 32, 16, 8, 3)] == [9, 9, 4, 2, 2, 2]
