"""What the ground-truth literature reports about each method, on its own data.

* Suppressor variables (Wilming et al., 2022, 2023): the Bayes-optimal linear
  model weighs a feature that carries no signal; the pattern does not.
* Input invariance (Kindermans et al., 2017): a constant shift of the input,
  compensated by the first layer's bias, leaves Gradient, PatternNet and
  PatternAttribution unchanged and moves Input x Gradient, LRP-z and
  Integrated Gradients with a zero reference.
"""

import keras
import numpy as np
import pytest

import innv_pattern as ip
from innv_pattern.datasets import suppressor_data, xai_tris
from innv_pattern.evaluate import input_invariance
from innv_pattern.patterns import PatternComputer


def _suppressor_share(analysis: np.ndarray) -> float:
    """Mean |attribution| of the suppressor feature over that of the signal feature."""
    magnitude = np.abs(analysis).mean(0)
    return float(magnitude[1] / magnitude[0])


def test_pattern_methods_give_the_suppressor_no_weight_gradient_does():
    """A Dense(1) holding the Bayes-optimal filter w = Sigma^-1 a = (1, -0.8).

    Closed forms (float64, from the data's definition): the gradient is w, so the
    suppressor gets |w_1| / |w_0| = 0.8 of the signal feature's share; the linear
    pattern is Cov(x) w / (w^T Cov(x) w), proportional to a = (1, 0), so PatternNet
    (a y) and PatternAttribution (w * a y) give it nothing, up to the estimation error
    of Cov(x, y) from 4000 samples (about 1/sqrt(4000) = 0.016 of the signal's).
    The default ("relu") estimator is used: an ungated output layer has one regime.
    """
    data = suppressor_data(4000, correlation=0.8, seed=1)
    inp = keras.Input((2,))
    dense = keras.layers.Dense(1, name="w")
    model = keras.Model(inp, dense(inp))
    dense.set_weights([data.w[:, None].astype(np.float32), np.zeros(1, np.float32)])
    patterns = PatternComputer(model).compute(data.x, verbose=0)
    cov = np.cov(data.x.astype(np.float64), rowvar=False)
    expected = cov @ data.w / (data.w @ cov @ data.w)
    np.testing.assert_allclose(patterns["w"].ravel(), expected, atol=1e-4)
    assert abs(expected[1]) < 0.04 * abs(expected[0])            # the data: pattern ~ a
    x = data.x[:500]
    share = {name: _suppressor_share(ip.create_analyzer(name, model, patterns=patterns)
                                     .analyze(x) if name.startswith("pattern") else
                                     ip.create_analyzer(name, model).analyze(x))
             for name in ("gradient", "pattern.net", "pattern.attribution")}
    assert share["gradient"] == pytest.approx(0.8, abs=1e-5)
    assert share["pattern.net"] < 0.04 and share["pattern.attribution"] < 0.04


@pytest.fixture(scope="module")
def tetris_mlp():
    """A small ReLU MLP trained briefly on 8x8 XAI-TRIS LIN images (seeded, ~2 s)."""
    data = xai_tris(2000, "lin", "white", seed=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x, data.labels, batch_size=64, epochs=5, verbose=0)
    return model, data.x


def test_input_invariance_as_the_2017_paper_reports(tetris_mlp):
    """Shift every pixel by -1 (the 2017 paper's MNIST shift), compensate the bias.

    Invariant (relative change < 1e-3; float32 round-off is ~1e-6): Gradient, and
    PatternNet and PatternAttribution with the default "relu" patterns refitted on the
    shifted data.  Not invariant (> 0.1): Input x Gradient and LRP-z (they multiply by
    the input) and Integrated Gradients from the zero reference.
    """
    model, x = tetris_mlp
    names = ["gradient", "pattern.net", "pattern.attribution", "input_t_gradient", "lrp.z"]
    errors = input_invariance(model, names, x[:64], -1.0, fit_data=x)
    errors.update(input_invariance(model, ["integrated_gradients"], x[:64], -1.0, steps=16))
    assert all(errors[n] < 1e-3 for n in names[:3]), errors
    assert all(errors[n] > 0.1 for n in names[3:] + ["integrated_gradients"]), errors
