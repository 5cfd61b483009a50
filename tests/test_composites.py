"""The general ``lrp`` analyzer: rules chosen per layer by composites, presets and iNNvestigate's arguments.

Layer-by-layer references are the float64 numpy rules of ``numpy_reference``
chained by hand, so each test checks that the right rule reached the right
layer (a wrong choice changes the numbers).  Also: the baselines ``input`` and
``random``, and Deep Taylor's start from the positive part of the output.
"""

import keras
import numpy as np
import pytest

import innv_pattern as ip
from innv_pattern.canonize import canonize
from innv_pattern.composites import (PRESETS, AlphaBeta, Composite, Epsilon, Flat, Z, ZBox,
                                     conv, dense, first_layer, layer_name)
from innv_pattern.rule_maps import UnsupportedLayerError
from numpy_reference import conv_rule, dense_rule


def _two_dense():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, activation="relu", name="d1")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="d2")(h))
    rng = np.random.default_rng(0)
    for layer in model.layers[1:]:
        w, b = layer.get_weights()
        layer.set_weights([rng.normal(size=w.shape).astype("float32"),
                           rng.normal(0, 0.3, size=b.shape).astype("float32")])
    return model


def _epsilon_dense(x, w, b, r, epsilon):
    """The epsilon rule of a Dense layer in float64, as iNNvestigate writes it."""
    z = x.astype(np.float64) @ w + b
    z = z + epsilon * np.where(z >= 0, 1.0, -1.0)
    return x * (np.divide(r, z, out=np.zeros_like(r), where=z != 0) @ w.T)


def _chain(model, x, first, second, index):
    """Relevance of ``x``: ``second`` at d2 (from the selected output's value), ``first`` at d1."""
    (w1, b1), (w2, b2) = (model.get_layer(n).get_weights() for n in ("d1", "d2"))
    h = np.maximum(x @ w1 + b1, 0)
    out = h @ w2 + b2
    r = np.zeros_like(out)
    r[np.arange(len(x)), index] = out[np.arange(len(x)), index]
    return first(x, w1, b1, second(h, w2, b2, r))


def _x(n=4, seed=1):
    return np.clip(np.random.default_rng(seed).normal(size=(n, 5)), -1, 1).astype("float32")


def test_composite_by_position_and_type_matches_numpy():
    """z-box on the first layer, epsilon on the (other) dense layer."""
    model, x = _two_dense(), _x()
    composite = Composite([(first_layer, ZBox(-1.0, 1.0)), (dense, Epsilon(0.25))])
    got = ip.create_analyzer("lrp", model, composite=composite).analyze(x)
    out = model.predict(x, verbose=0)
    want = _chain(model, x, lambda *a: dense_rule("z_box", *a, low=-1.0, high=1.0),
                  lambda *a: _epsilon_dense(*a, 0.25), out.argmax(1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_rules_by_layer_name_and_innvestigate_arguments():
    """``layer_name`` picks d2; iNNvestigate's ``rule=``/``input_layer_rule=`` say the same."""
    model, x = _two_dense(), _x()
    by_name = Composite([(layer_name("d2"), Flat()), (layer_name("d*"), AlphaBeta(2, 1))])
    got = ip.create_analyzer("lrp", model, neuron_selection_mode="index",
                             composite=by_name).analyze(x, neuron_selection=2)
    want = _chain(model, x, lambda *a: dense_rule("alpha_beta", *a, alpha=2.0, beta=1.0),
                  lambda *a: dense_rule("flat", *a), np.full(len(x), 2))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    same = ip.create_analyzer("lrp", model, rule=[(layer_name("d2"), "Flat")],
                              input_layer_rule="Alpha2Beta1", neuron_selection_mode="index")
    np.testing.assert_allclose(same.analyze(x, neuron_selection=2), got, rtol=1e-6, atol=1e-7)


def test_presets_are_the_innvestigate_analyzers():
    """A preset by name (with its settings) is the iNNvestigate analyzer built on it."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    x = np.random.default_rng(3).normal(size=(3, 6, 6, 2)).astype("float32")
    for name in ("sequential_preset_a", "sequential_preset_b_flat"):
        via_lrp = ip.create_analyzer("lrp", model, composite=name, epsilon=0.3).analyze(x)
        direct = ip.create_analyzer("lrp." + name, model, epsilon=0.3).analyze(x)
        np.testing.assert_array_equal(via_lrp, direct)
    assert {"epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1_zbox"} <= set(PRESETS)


def test_issue_example_composite_on_a_cnn_matches_numpy():
    """z-box on the input conv, alpha 2 beta 1 on the other conv, epsilon on the dense layer."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((6, 6, 1))
    c1 = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="c1")
    c2 = keras.layers.Conv2D(3, 3, padding="valid", activation="relu", name="c2")
    d = keras.layers.Dense(2, name="d")
    model = keras.Model(inp, d(keras.layers.Flatten()(c2(c1(inp)))))
    for layer in (c1, c2, d):
        w, b = layer.get_weights()
        layer.set_weights([w, np.random.default_rng(6).normal(0, 0.2, b.shape).astype("float32")])
    x = np.random.default_rng(5).uniform(-1, 1, size=(2, 6, 6, 1)).astype("float32")
    composite = PRESETS["epsilon_alpha2_beta1_zbox"](epsilon=0.1, low=-1.0, high=1.0)
    got = ip.create_analyzer("lrp", model, composite=composite).analyze(x)
    a1 = c1(x).numpy().astype(np.float64)
    a2 = c2(a1).numpy().astype(np.float64)
    (w1, b1), (w2, b2), (wd, bd) = (layer.get_weights() for layer in (c1, c2, d))
    out = a2.reshape(2, -1) @ wd + bd
    r = np.zeros_like(out)
    r[np.arange(2), out.argmax(1)] = out.max(1)
    r2 = _epsilon_dense(a2.reshape(2, -1), wd, bd, r, 0.1).reshape(a2.shape)
    r1 = conv_rule("alpha_beta", a1, w2, b2, r2, 1, "valid", alpha=2.0, beta=1.0)
    want = conv_rule("z_box", x, w1, b1, r1, 1, "same", low=-1.0, high=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    graph = canonize(model)
    c1_op, c2_op = (next(op for op in graph.ops if op.name == n) for n in ("c1", "c2"))
    assert conv(c2_op) and not dense(c2_op)
    assert first_layer(c1_op, graph) and not first_layer(c2_op, graph)


def test_mistakes_are_clear_errors():
    model = _two_dense()
    with pytest.raises(UnsupportedLayerError, match="'d2'"):
        ip.create_analyzer("lrp", model, composite=Composite([(first_layer, Z())]))
    with pytest.raises(ValueError, match="one of rule="):
        ip.create_analyzer("lrp", model, rule="Z", composite="epsilon_plus")
    with pytest.raises(ValueError, match="Unknown preset 'nope'"):
        ip.create_analyzer("lrp", model, composite="nope")
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(3, 1)
    with pytest.raises(ValueError, match="received 'Gamma'"):
        ip.create_analyzer("lrp", model, rule="Gamma")
    with pytest.raises(TypeError, match="no setting"):
        Z().rule.configured(gamma=0.25)


def test_input_and_random_baselines():
    model, x = _two_dense(), _x()
    np.testing.assert_array_equal(ip.create_analyzer("input", model).analyze(x), x)
    noisy = ip.create_analyzer("random", model, stddev=0.5, seed=3).analyze(np.zeros((400, 5)))
    assert abs(noisy.std() - 0.5) < 0.03 and abs(noisy.mean()) < 0.03
    again = ip.create_analyzer("random", model, stddev=0.5, seed=3).analyze(np.zeros((400, 5)))
    np.testing.assert_array_equal(noisy, again)


def test_deep_taylor_starts_from_the_positive_part():
    """An output that is negative gives nothing to explain (iNNvestigate adds a ReLU)."""
    model, x = _two_dense(), _x(n=8)
    out = model.predict(x, verbose=0)
    analyzer = ip.create_analyzer("deep_taylor", model, neuron_selection_mode="index")
    got = analyzer.analyze(x, neuron_selection=0)
    negative = out[:, 0] <= 0
    assert negative.any() and (~negative).any()
    assert np.all(got[negative] == 0) and np.all(np.abs(got[~negative]).sum(axis=1) > 0)
