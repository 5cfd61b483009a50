"""Each LRP / Deep Taylor rule beyond the z-rule against a float64 numpy reference, one layer.

The reference (``numpy_reference.rule_backward``) works from each connection's
contribution ``c_kd`` (input k to output d): a group's denominator is the sum
of its contributions (plus the bias where the rule counts it) and input k gets
``sum_d c_kd / z_d * R_d``; convolutions use explicit patches, so padding
contributes nothing.  The library instead splits inputs and weights by sign and
back-propagates whole tensors.  Edge cases, Zennit-style: zero denominators
(zero inputs, a dead kernel column), all-negative inputs for z+, inputs at the
bounds for z-box (including a neuron whose every input sits at the bound that
makes its denominator exactly zero).  The reverse pass starts from every
output's value (``neuron_selection_mode="all"``), so each output's relevance is
checked.
"""

import keras
import numpy as np
import pytest

import innv_pattern as ip
from innv_pattern.composites import AlphaBeta, Flat, WSquare, ZBox, ZPlus, ZPlusFast
from numpy_reference import conv_rule, dense_rule

RULES = {  # name in the reference: (configured rule, the reference's settings)
    "alpha_2_beta_1": (AlphaBeta(2, 1), {"alpha": 2.0, "beta": 1.0}),
    "alpha_2_beta_1_IB": (AlphaBeta(2, 1, bias=False), {"alpha": 2.0, "beta": 1.0, "bias": False}),
    "alpha_1_beta_0": (AlphaBeta(1, 0), {"alpha": 1.0, "beta": 0.0}),
    "z_plus": (ZPlus(), {"alpha": 1.0, "beta": 0.0, "bias": False}),
    "z_plus_fast": (ZPlusFast(), {}),
    "w_square": (WSquare(), {}),
    "flat": (Flat(), {}),
    "z_box": (ZBox(-1.0, 2.0), {"low": -1.0, "high": 2.0}),
}


def _kind(name):
    return "alpha_beta" if name.startswith(("alpha", "z_plus")) and name != "z_plus_fast" \
        else name


def _dense(seed=0):
    keras.utils.set_random_seed(seed)
    layer = keras.layers.Dense(5)
    model = keras.Sequential([keras.Input((6,)), layer])
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=(6, 5)).astype("float32"),
                       rng.normal(0, 0.5, size=5).astype("float32")])
    return model, layer


def _conv(seed=0):
    keras.utils.set_random_seed(seed)
    layer = keras.layers.Conv2D(3, 3, strides=2, padding="same")
    model = keras.Sequential([keras.Input((7, 7, 2)), layer])
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=(3, 3, 2, 3)).astype("float32"),
                       rng.normal(0, 0.5, size=3).astype("float32")])
    return model, layer


def _analyze(model, rule, x):
    return ip.create_analyzer("lrp", model, neuron_selection_mode="all", rule=rule).analyze(x)


def _check(got, want):
    assert np.all(np.isfinite(got))
    scale = max(np.abs(want).max(), 1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def _inputs(shape, seed=1):
    x = np.random.default_rng(seed).normal(size=(4,) + shape).astype("float32")
    x[1] = 0.0                      # a zero sample: alpha-beta and z+ denominators are zero
    x[2] = -np.abs(x[2])            # all negative: z+ takes x- w-, z+ fast x w+
    x[3] = np.clip(x[3], -1.0, 2.0)  # within the z-box bounds
    return x


@pytest.mark.parametrize("name", list(RULES))
def test_dense_rule_matches_numpy(name):
    model, layer = _dense()
    w, b = layer.get_weights()
    w[:, 0] = 0.0  # a dead output: every rule's denominator of output 0 is zero (w-square too)
    layer.set_weights([w, b])
    x = _inputs((6,))
    if name == "z_box":
        x = np.clip(x, -1.0, 2.0)
    rule, settings = RULES[name]
    r = model.predict(x, verbose=0)
    want = dense_rule(_kind(name), x, w, b, r, **settings)
    _check(_analyze(model, rule, x), want)


@pytest.mark.parametrize("name", list(RULES))
def test_conv_rule_matches_numpy(name):
    """Strided, zero-padded: at the border, flat and w-square count only the weights inside."""
    model, layer = _conv()
    w, b = layer.get_weights()
    x = _inputs((7, 7, 2))
    if name == "z_box":
        x = np.clip(x, -1.0, 2.0)
    rule, settings = RULES[name]
    r = model.predict(x, verbose=0)
    want = conv_rule(_kind(name), x, w, b, r, 2, "same", **settings)
    _check(_analyze(model, rule, x), want)


def test_z_plus_on_negative_inputs_uses_negative_weights():
    """z+ (alpha 1, beta 0) is not z+ fast when inputs are negative: x- w- contributes."""
    model, layer = _dense()
    w, b = layer.get_weights()
    x = -np.abs(np.random.default_rng(3).normal(size=(3, 6))).astype("float32")
    r = model.predict(x, verbose=0)
    plus, fast = _analyze(model, ZPlus(), x), _analyze(model, ZPlusFast(), x)
    _check(plus, dense_rule("alpha_beta", x, w, b, r, alpha=1.0, beta=0.0, bias=False))
    _check(fast, dense_rule("z_plus_fast", x, w, b, r))
    assert not np.allclose(plus, fast, atol=1e-3)


def test_z_box_at_the_bounds():
    """Inputs at low or high; sample 0's inputs all at the bounds that zero output 0's denominator.

    Output 0's denominator ``sum (x - low) w+ + (x - high) w-`` is exactly zero
    when x is ``low`` where its weight is positive and ``high`` where negative:
    it passes nothing (the reference's contributions are exact zeros there).
    """
    model, layer = _dense(seed=4)
    w, b = layer.get_weights()
    rng = np.random.default_rng(5)
    low = rng.uniform(-1.7, -0.3, 6).astype("float32")   # values whose float32 sums round
    high = rng.uniform(0.3, 2.9, 6).astype("float32")
    x = np.where(rng.random((4, 6)) < 0.5, low, high).astype("float32")
    x[0] = np.where(w[:, 0] > 0, low, high)
    x[1], x[2] = low, high
    r = np.zeros((4, 5))
    r[:, 0] = model.predict(x, verbose=0)[:, 0]
    want = dense_rule("z_box", x, w, b, r, low=low, high=high)
    analyzer = ip.create_analyzer("lrp", model, neuron_selection_mode="index",
                                  rule=ZBox(low, high))
    got = analyzer.analyze(x, neuron_selection=0)
    _check(got, want)
    assert np.all(want[0] == 0) and np.all(got[0] == 0)


def test_flat_w_square_and_z_plus_conserve_without_bias():
    """With no bias and no zero denominator, each rule passes on exactly the relevance it got."""
    model, layer = _dense(seed=6)
    w, b = layer.get_weights()
    w[0] = np.abs(w[0])  # every output has a positive weight: z+ denominators are non-zero
    layer.set_weights([w, np.zeros_like(b)])
    x = np.abs(np.random.default_rng(7).normal(size=(3, 6))).astype("float32") + 0.1
    total = model.predict(x, verbose=0).sum(axis=1)
    for rule in (AlphaBeta(1, 0), Flat(), WSquare(), ZPlusFast()):
        relevance = _analyze(model, rule, x).sum(axis=1)
        np.testing.assert_allclose(relevance, total, rtol=1e-4, err_msg=repr(rule))
