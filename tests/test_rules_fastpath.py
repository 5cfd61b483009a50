"""The LRP fast path (a z-rule op and its ReLU as one RectifiedZRule) changes nothing.

Fusion divides by the rectified output ``a`` instead of ``z``; that is exact
only where the relevance reaching ``a`` is zero wherever ``a`` is.  These tests
check that the fused analysis equals the rule-by-rule one (and the float64
numpy reference) on models with biases, exact zeros and residual sums, and that
models where the condition fails are not fused.
"""

import warnings

import keras
import numpy as np
import pytest
import innv_pattern as ip
from conftest import randomize_biases
from innv_pattern.rule_maps import FallbackWarning
from innv_pattern.rules import IdentityRule, RectifiedZRule
from numpy_reference import from_keras


def _fused_count(analyzer):
    return sum(isinstance(r, RectifiedZRule) for r in analyzer._rules.values())


def _compare(model, x, method, mode="max_activation"):
    fused = ip.create_analyzer(method, model, neuron_selection_mode=mode)
    got = fused.analyze(x)
    unfused = ip.create_analyzer(method, model, neuron_selection_mode=mode, fast_path=False)
    assert _fused_count(unfused) == 0
    want = unfused.analyze(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    return fused


def _residual():
    inp = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    b = keras.layers.Conv2D(4, 3, padding="same")(h)
    h = keras.layers.ReLU()(keras.layers.Add()([h, b]))
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))


def _relu_output():
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, activation="relu")(inp)
    return keras.Model(inp, keras.layers.Dense(4, activation="relu")(h))


@pytest.mark.parametrize("method", ["lrp.z", "lrp.epsilon"])
@pytest.mark.parametrize("build", [_residual, _relu_output])
@pytest.mark.parametrize("mode", ["max_activation", "all"])
def test_fused_equals_rule_by_rule(method, build, mode):
    keras.utils.set_random_seed(3)
    model = randomize_biases(build())
    x = np.random.default_rng(0).normal(size=(4,) + model.input_shape[1:]).astype("float32")
    analyzer = _compare(model, x, method, mode)
    relus = sum(isinstance(r, IdentityRule) for r in analyzer._rules.values())
    assert _fused_count(analyzer) == relus >= 2


@pytest.mark.parametrize("method", ["lrp.z", "lrp.epsilon"])
def test_fused_with_exact_zeros_matches_numpy(method, conv_model):
    """Zero inputs and zero biases give z == 0 exactly: divide_no_nan's zeros agree."""
    for layer in conv_model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
    x = np.random.default_rng(1).normal(size=(4,) + conv_model.input_shape[1:]).astype("float32")
    x[:, :4] = 0.0
    x[1] = 0.0
    analyzer = _compare(conv_model, x, method)
    assert _fused_count(analyzer) >= 2
    net = from_keras(conv_model)
    out = net.forward(x)[-1]
    eps = 1e-7 if method == "lrp.epsilon" else 0.0
    want = net.reverse(x, method, out.argmax(axis=1), epsilon=eps)
    np.testing.assert_allclose(analyzer.analyze(x), want, rtol=1e-4, atol=1e-5)


def _relu_then_sigmoid():
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, activation="relu")(inp)
    h = keras.layers.Activation("sigmoid")(h)
    return keras.Model(inp, keras.layers.Dense(3)(h))


def _two_readers():
    inp = keras.Input((5,))
    z = keras.layers.Dense(6)(inp)
    h = keras.layers.Concatenate()([keras.layers.ReLU()(z), z])
    return keras.Model(inp, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("build", [_relu_then_sigmoid, _two_readers])
def test_not_fused_where_inexact(build):
    """Relevance through a sigmoid is not zero where the ReLU's output is; a shared z stays."""
    keras.utils.set_random_seed(4)
    model = randomize_biases(build())
    x = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # the sigmoid passes relevance
        analyzer = _compare(model, x, "lrp.z")
    assert _fused_count(analyzer) == 0


@pytest.mark.parametrize("method", ["lrp.sequential_preset_a", "lrp.sequential_preset_b_flat"])
def test_presets_fuse_their_epsilon_layers_exactly(method):
    """The presets' epsilon dense layers fuse with their ReLUs, exactly; the convolution's
    alpha-beta rule is not a z-rule and stays as it is."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, activation="relu")(inp)
    h = keras.layers.Dense(5, activation="relu")(keras.layers.Flatten()(h))
    h = keras.layers.Dense(4, activation="relu")(h)
    model = randomize_biases(keras.Model(inp, keras.layers.Dense(3)(h)))
    x = np.random.default_rng(6).normal(size=(4, 6, 6, 2)).astype("float32")
    analyzer = _compare(model, x, method)
    assert _fused_count(analyzer) == 2
