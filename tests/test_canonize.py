"""Canonization of real layers: kernel ops, BatchNorm folding, layer kinds.

Every kernel layer's canonical ops must compute what the layer computes, with
the kernel's own shape; the z-rule and the pattern rule through each are
checked against an independent path: tf.GradientTape through Keras layers
(the pattern rule through a clone of the layer whose kernel is the pattern).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import innv_pattern as ip
from innv_pattern import kinds
from innv_pattern import rules as ip_rules
from innv_pattern.canonize import KernelOp, LayerOp, canonize

L = keras.layers

# (name, input shape, layer factory): every kind of kernel layer and data format.
KERNEL_LAYERS = [
    ("dense", (5,), lambda: L.Dense(4)),
    ("dense_3d", (3, 5), lambda: L.Dense(4)),
    ("conv1d", (9, 3), lambda: L.Conv1D(4, 3, strides=2, padding="same")),
    ("conv1d_causal", (9, 3), lambda: L.Conv1D(4, 3, padding="causal", dilation_rate=2)),
    ("conv2d", (7, 7, 3), lambda: L.Conv2D(4, 3, padding="same")),
    ("conv2d_first", (3, 7, 7), lambda: L.Conv2D(4, 3, data_format="channels_first")),
    ("conv2d_groups", (7, 7, 4), lambda: L.Conv2D(6, 3, groups=2)),
    ("conv3d", (5, 5, 5, 2), lambda: L.Conv3D(3, 2, strides=2)),
    ("depthwise1d", (9, 3), lambda: L.DepthwiseConv1D(3, depth_multiplier=2)),
    ("depthwise2d", (7, 7, 3), lambda: L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")),
    ("depthwise2d_first", (3, 7, 7), lambda: L.DepthwiseConv2D(3, data_format="channels_first")),
    ("separable1d", (9, 3), lambda: L.SeparableConv1D(4, 3, depth_multiplier=2)),
    ("separable2d", (7, 7, 3), lambda: L.SeparableConv2D(4, 3, padding="same", strides=2)),
    ("conv1d_transpose", (5, 3), lambda: L.Conv1DTranspose(4, 3, strides=2)),
    ("conv2d_transpose", (4, 4, 3), lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same")),
    ("conv2d_transpose_first", (3, 4, 4),
     lambda: L.Conv2DTranspose(2, 2, strides=2, data_format="channels_first")),
    ("conv3d_transpose", (3, 3, 3, 2), lambda: L.Conv3DTranspose(2, 2, strides=2)),
]
IDS = [name for name, _, _ in KERNEL_LAYERS]


def _single_layer_model(shape, factory, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input(shape)
    layer = factory()
    model = keras.Model(inp, layer(inp))
    rng = np.random.default_rng(seed)
    for weight in layer.weights:  # non-zero biases
        weight.assign(rng.normal(0, 0.5, weight.shape).astype("float32"))
    return model, layer


def _data(shape, n=3, seed=1):
    return np.random.default_rng(seed).normal(size=(n,) + tuple(shape)).astype("float32")


def _clone(layer, weights):
    """A fresh layer of the same config, built, with ``weights``."""
    clone = layer.__class__.from_config(layer.get_config())
    clone.build(layer.input.shape)
    clone.set_weights(weights)
    return clone


def _vjp(fn, x, g):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.gradient(y, x, output_gradients=tf.constant(g, y.dtype)).numpy()


def _kernel_names(layer):
    """The layer's kernels in canonical order: separable = depthwise, pointwise."""
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return ["depthwise_kernel", "pointwise_kernel"]
    return ["kernel"]


@pytest.mark.parametrize("name, shape, factory", KERNEL_LAYERS, ids=IDS)
def test_kernel_ops_compute_the_layer(name, shape, factory):
    model, layer = _single_layer_model(shape, factory)
    graph = canonize(model)
    ops = graph.kernel_ops
    assert len(ops) == len(graph.ops) == len(_kernel_names(layer))
    x = _data(shape)
    np.testing.assert_allclose(graph.run([tf.constant(x)])[0], model(x), rtol=1e-5, atol=1e-5)
    y_shape = model.output.shape
    for op, attr in zip(ops, _kernel_names(layer)):
        assert op.kernel_shape == tuple(getattr(layer, attr).shape)
        assert op.layer is layer
    # the neurons of the last op are the layer's output channels
    neurons = ops[-1].kernel_shape[-2] if "transpose" in name else (
        ops[-1].kernel_shape[-1] * (ops[-1].kernel_shape[-2] if "depthwise" in name else 1))
    assert y_shape[ops[-1].channel_axis] == neurons


@pytest.mark.parametrize("name, shape, factory", KERNEL_LAYERS, ids=IDS)
def test_z_rule_through_each_kernel_layer_equals_tape(name, shape, factory):
    """LRP-epsilon's relevance R_x = x * J^T (R / (z + eps sign z)), op by op."""
    model, layer = _single_layer_model(shape, factory)
    x, eps = _data(shape), 0.5
    got = ip.create_analyzer("lrp.epsilon", model, neuron_selection_mode="all",
                             epsilon=eps).analyze(x)

    def z_rule(fn, inp, relevance):
        z = fn(tf.constant(inp)).numpy()
        return inp * _vjp(fn, inp, relevance / (z + eps * np.where(z >= 0, 1, -1)))

    y = model(x).numpy()
    if len(_kernel_names(layer)) == 2:  # separable: a depthwise op, then a pointwise op
        depthwise = L.DepthwiseConv1D if "1d" in name else L.DepthwiseConv2D
        conf = {k: layer.get_config()[k] for k in ("kernel_size", "strides", "padding",
                                                    "depth_multiplier", "dilation_rate")}
        first = depthwise(use_bias=False, **conf)
        first.build(x.shape)
        first.set_weights([layer.depthwise_kernel.numpy()])
        mid = first(x).numpy()
        want = z_rule(first, x, z_rule(lambda t: _pointwise(layer, t), mid, y))
    else:
        want = z_rule(layer, x, y)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _pointwise(layer, t):
    """The separable layer's pointwise half with its bias, in Keras ops."""
    y = keras.ops.conv(t, layer.pointwise_kernel, data_format=layer.data_format)
    return y + layer.bias


@pytest.mark.parametrize("method", ["pattern.net", "pattern.attribution"])
@pytest.mark.parametrize("name, shape, factory", KERNEL_LAYERS, ids=IDS)
def test_pattern_rule_through_each_kernel_layer_equals_tape(name, shape, factory, method):
    """The backward pass equals the tape gradient of a clone whose kernels are swapped."""
    model, layer = _single_layer_model(shape, factory)
    rng = np.random.default_rng(2)
    ops = canonize(model).kernel_ops
    patterns = {op.pattern_key: rng.normal(size=op.kernel_shape).astype("float32") for op in ops}
    x = _data(shape)
    got = ip.create_analyzer(method, model, neuron_selection_mode="all",
                             patterns=patterns).analyze(x)
    swapped = []
    for op, attr in zip(ops, _kernel_names(layer)):
        kernel = getattr(layer, attr).numpy()
        swapped.append(kernel * patterns[op.pattern_key] if method == "pattern.attribution"
                       else patterns[op.pattern_key])
    clone = _clone(layer, swapped + [layer.bias.numpy()])
    want = _vjp(clone, x, model(x).numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------
# BatchNormalization folding.
# --------------------------------------------------------------------------
def _randomize_batchnorm(model, seed=3):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            for var in (layer.gamma, layer.beta, layer.moving_mean):
                if var is not None:
                    var.assign(rng.normal(0, 1, var.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3, layer.moving_variance.shape)
                                         .astype("float32"))
    return model


def _kernel_bn_model(shape, factory, bn_kwargs=None):
    keras.utils.set_random_seed(4)
    inp = keras.Input(shape)
    layer = factory()
    h = layer(inp)
    axis = 1 if getattr(layer, "data_format", None) == "channels_first" else -1
    h = L.BatchNormalization(axis=axis, **(bn_kwargs or {}))(h)
    out = L.Dense(3)(L.Flatten()(L.ReLU()(h)))
    return _randomize_batchnorm(keras.Model(inp, out))


@pytest.mark.parametrize("name, shape, factory", KERNEL_LAYERS, ids=IDS)
def test_batchnorm_folds_without_changing_outputs(name, shape, factory):
    model = _kernel_bn_model(shape, factory)
    graph = canonize(model)
    assert not any(isinstance(op.layer, L.BatchNormalization) for op in graph.ops), name
    x = _data(shape, n=4)
    np.testing.assert_allclose(graph.run([tf.constant(x)])[0], model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bn_kwargs", [{"scale": False}, {"center": False},
                                       {"scale": False, "center": False}])
def test_batchnorm_without_scale_or_center_folds(bn_kwargs):
    model = _kernel_bn_model((7, 7, 3), lambda: L.Conv2D(4, 3, use_bias=False), bn_kwargs)
    graph = canonize(model)
    assert not any(isinstance(op.layer, L.BatchNormalization) for op in graph.ops)
    x = _data((7, 7, 3))
    np.testing.assert_allclose(graph.run([tf.constant(x)])[0], model(x), rtol=1e-4, atol=1e-4)


def test_folding_leaves_the_model_untouched():
    model = _kernel_bn_model((7, 7, 3), lambda: L.Conv2D(4, 3))
    before = [w.copy() for w in model.get_weights()]
    x = _data((7, 7, 3))
    out = model(x).numpy()
    for name in ("lrp.z", "guided_backprop", "gradient"):
        ip.create_analyzer(name, model).analyze(x)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out, model(x).numpy())


def test_folded_kernel_follows_later_weight_changes():
    model = _kernel_bn_model((5,), lambda: L.Dense(4))
    graph = canonize(model)
    bn = next(layer for layer in model.layers if isinstance(layer, L.BatchNormalization))
    bn.moving_mean.assign(bn.moving_mean.numpy() + 1.0)
    x = _data((5,))
    np.testing.assert_allclose(graph.run([tf.constant(x)])[0], model(x), rtol=1e-4, atol=1e-4)


def _rule_backward(rule, xs, relevance):
    """The reverse signals a bound rule gives its inputs for output signal ``relevance``."""
    xs = [tf.constant(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        z = rule(*xs)[0]
    return [g.numpy() for g in tape.gradient(z, xs, output_gradients=tf.constant(relevance))]


@pytest.mark.parametrize("where", ["after_relu", "kernel_output_shared", "after_concat"])
def test_unfoldable_batchnorm_is_diagonal(where):
    keras.utils.set_random_seed(5)
    inp = keras.Input((6,))
    h = L.Dense(5, activation="relu" if where == "after_relu" else None)(inp)
    if where == "after_concat":
        h = L.Concatenate()([h, inp])
    bn = L.BatchNormalization()
    z = bn(h)
    if where == "kernel_output_shared":
        z = L.Add()([z, h])
    model = keras.Model(inp, L.Dense(3)(z))
    op = next(op for op in canonize(model).ops if op.layer is bn)
    assert isinstance(op, LayerOp) and op.kind == kinds.DIAGONAL


def test_z_rule_on_unfolded_batchnorm_is_the_affine_z_rule():
    """R_x = x * s * R / (s x + b) for y = s x + b (the bias absorbs its share)."""
    inp = keras.Input((6,))
    bn = L.BatchNormalization()
    model = _randomize_batchnorm(keras.Model(inp, bn(L.ReLU()(inp))))
    op = next(op for op in canonize(model).ops if op.layer is bn)
    x, relevance = np.abs(_data((6,), n=4)), _data((6,), n=4, seed=9)
    got = _rule_backward(ip_rules.ZRule(op, {}), [x], relevance)[0]
    s = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    z = s * (x - bn.moving_mean.numpy()) + bn.beta.numpy()
    np.testing.assert_allclose(got, x * s * relevance / z, rtol=1e-4, atol=1e-5)
