"""Model-parameter randomization check against hand-computed similarities."""

import io

import keras
import numpy as np
import pytest
from scipy import stats

from innv_pattern.evaluate.sanity import plot_randomization, randomization_check, similarity


def test_similarity_matches_scipy_with_ties():
    """Average ranks for ties, as scipy's spearmanr; abs before ranking for spearman_abs."""
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=(3, 20)), 1)          # many ties
    b = rng.normal(size=(3, 20))
    expected = [stats.spearmanr(u, v)[0] for u, v in zip(a, b)]
    np.testing.assert_allclose(similarity(a, b, "spearman"), expected, atol=1e-12)
    expected_abs = [stats.spearmanr(np.abs(u), np.abs(v))[0] for u, v in zip(a, b)]
    np.testing.assert_allclose(similarity(a, b, "spearman_abs"), expected_abs, atol=1e-12)
    np.testing.assert_allclose(similarity(a, b, "pearson"),
                               [stats.pearsonr(u, v)[0] for u, v in zip(a, b)], atol=1e-12)
    with pytest.raises(ValueError, match="Unknown similarity"):
        similarity(a, b, "ssim")


def test_linear_model_gradient_must_change():
    """A linear model's gradient for class c is the weight column W[:, c].

    The layer's initializer is the identity, so after randomization the
    gradient is e_c: the similarity is exactly spearman(|W[:, c]|, e_c), with c
    the class the original model predicts.  The user's model keeps its weights.
    """
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 6)).astype("float32")
    inp = keras.Input((6,))
    dense = keras.layers.Dense(6, kernel_initializer="identity", name="linear")
    model = keras.Model(inp, dense(inp))
    dense.set_weights([w, np.zeros(6, np.float32)])
    x = rng.normal(size=(40, 6)).astype("float32")
    result = randomization_check(model, "gradient", x)
    classes = np.argmax(x @ w, axis=1)
    expected = [stats.spearmanr(np.abs(w[:, c]), np.eye(6)[c])[0] for c in classes]
    assert result["layers"] == ["linear"]
    np.testing.assert_allclose(result["per_sample"]["spearman_abs"][0], 1.0)
    np.testing.assert_allclose(result["per_sample"]["spearman_abs"][1], expected, atol=1e-6)
    expected_pearson = [stats.pearsonr(w[:, c], np.eye(6)[c])[0] for c in classes]
    np.testing.assert_allclose(result["per_sample"]["pearson"][1], expected_pearson, atol=1e-5)
    np.testing.assert_array_equal(dense.get_weights()[0], w)


def test_cascading_and_independent_on_a_relu_network():
    """Randomizing every layer of a ReLU network decorrelates its gradient from the original."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    before = [v.copy() for v in model.get_weights()]
    x = np.random.default_rng(1).normal(size=(64, 12)).astype("float32")
    cascading = randomization_check(model, "gradient", x, seed=3)
    curve = cascading["similarity"]["spearman_abs"]
    assert curve.shape == (4,) and curve[0] == pytest.approx(1.0)
    assert curve[-1] < 0.5 and np.all(curve[1:] < 0.99)
    assert cascading["layers"] == [layer.name for layer in model.layers][::-1]
    independent = randomization_check(model, "gradient", x, mode="independent", seed=3)
    assert independent["similarity"]["pearson"].shape == (4,)
    assert independent["similarity"]["spearman_abs"][1] == pytest.approx(curve[1])  # same first step
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    fig = plot_randomization({"gradient": cascading})
    fig.savefig(io.BytesIO(), format="png")


def test_pattern_attribution_refits_and_errors():
    """pattern.* analyzers refit on each randomized copy; without fit_data that is an error."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(3)])
    x = np.random.default_rng(2).normal(size=(200, 5)).astype("float32")
    with pytest.raises(ValueError, match="needs fit_data"):
        randomization_check(model, "pattern.attribution", x[:10])
    result = randomization_check(model, "pattern.attribution", x[:20], fit_data=x)
    assert np.all(np.isfinite(result["similarity"]["spearman"]))
    with pytest.raises(ValueError, match="mode must be"):
        randomization_check(model, "gradient", x, mode="bottom-up")
