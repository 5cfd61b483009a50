"""Every analyzer against the independent float64 numpy reference.

The reference (tests/numpy_reference.py) implements each rule by hand with
explicit patches and pooling windows; models have non-zero biases so that bias
handling (the z-rule's bias absorbing relevance, gradients ignoring it) is
checked, and both neuron-selection by maximum and by index are covered.
"""

import numpy as np
import pytest
import tensorflow as tf

import innv_pattern as ip
from innv_pattern.canonize import canonize
from numpy_reference import from_keras

METHODS = ["gradient", "input_t_gradient", "deconvnet", "guided_backprop", "lrp.z", "lrp.epsilon"]


def _data(model, n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n,) + model.input_shape[1:]).astype("float32")


def _reference(model, x, method, index, patterns=None):
    net = from_keras(model)
    eps = 1e-7 if method == "lrp.epsilon" else 0.0
    return net.reverse(x, method, index, patterns=patterns, epsilon=eps)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fixture", ["dense_model", "conv_model"])
def test_analyzer_matches_numpy(method, fixture, request):
    model = request.getfixturevalue(fixture)
    x = _data(model)
    out = from_keras(model).forward(x)[-1]
    got = ip.create_analyzer(method, model).analyze(x)
    want = _reference(model, x, method, out.argmax(axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_index_selection_matches_numpy(method, conv_model):
    x = _data(conv_model, n=3)
    index = np.array([2, 0, 1])
    got = ip.create_analyzer(method, conv_model, neuron_selection_mode="index").analyze(
        x, neuron_selection=index)
    np.testing.assert_allclose(got, _reference(conv_model, x, method, index), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["pattern.net", "pattern.attribution"])
@pytest.mark.parametrize("fixture", ["dense_model", "conv_model"])
def test_pattern_analyzers_match_numpy(method, fixture, request):
    """The reverse pass with kernels swapped for (random) patterns, by hand."""
    model = request.getfixturevalue(fixture)
    rng = np.random.default_rng(3)
    ops = canonize(model).kernel_ops
    patterns = {op.name: rng.normal(size=op.kernel_shape).astype("float32") for op in ops}
    net = from_keras(model)
    aligned = [None] * len(net.layers)
    kernel_layers = [i for i, l in enumerate(net.layers) if "W" in l]
    for i, op in zip(kernel_layers, ops):
        aligned[i] = patterns[op.name].astype(np.float64)
    x = _data(model)
    out = net.forward(x)[-1]
    options = {"normalize": False} if method == "pattern.net" else {}  # the paper's scale
    got = ip.create_analyzer(method, model, patterns=patterns, **options).analyze(x)
    want = net.reverse(x, method, out.argmax(axis=1), patterns=aligned)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gradient_equals_gradient_tape(conv_model):
    """`gradient` is the tape gradient of the selected pre-softmax output."""
    x = tf.constant(_data(conv_model))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = conv_model(x)
        picked = tf.reduce_max(y, axis=1)
    want = tape.gradient(picked, x).numpy()
    got = ip.create_analyzer("gradient", conv_model).analyze(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_all_mode_sums_every_output(dense_model):
    """'all' explains the sum of the outputs: the sum of per-index analyses."""
    x = _data(dense_model)
    all_ = ip.create_analyzer("lrp.z", dense_model, neuron_selection_mode="all").analyze(x)
    by_index = ip.create_analyzer("lrp.z", dense_model, neuron_selection_mode="index")
    total = sum(by_index.analyze(x, neuron_selection=i) for i in range(4))
    np.testing.assert_allclose(all_, total, rtol=1e-4, atol=1e-5)


def test_lrp_z_is_gradient_times_input_without_bias(conv_model):
    """On bias-free ReLU networks LRP-z equals input x gradient and conserves relevance."""
    for layer in conv_model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
    x = _data(conv_model)
    lrp = ip.create_analyzer("lrp.z", conv_model).analyze(x)
    ixg = ip.create_analyzer("input_t_gradient", conv_model).analyze(x)
    np.testing.assert_allclose(lrp, ixg, rtol=1e-4, atol=1e-5)
    out = conv_model.predict(x, verbose=0).max(axis=1)
    np.testing.assert_allclose(lrp.reshape(len(x), -1).sum(axis=1), out, rtol=1e-4, atol=1e-5)
