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
from innv_pattern.canonize import LayerOp, canonize

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
    ("conv2d_one_channel_groups", (7, 7, 3), lambda: L.Conv2D(6, 3, groups=3, padding="same")),
    ("conv1d_one_channel_groups_first", (3, 9),
     lambda: L.Conv1D(6, 3, groups=3, data_format="channels_first")),
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
    options = {"normalize": False} if method == "pattern.net" else {}  # the paper's scale
    got = ip.create_analyzer(method, model, neuron_selection_mode="all", patterns=patterns,
                             **options).analyze(x)
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


# --------------------------------------------------------------------------
# Merges, gates, keras.ops calls and normalization: kinds and rules.
# --------------------------------------------------------------------------
def _op_of(model, layer_name):
    return next(op for op in canonize(model).ops if op.name == layer_name)


def test_z_rule_splits_at_add_and_subtract_in_proportion_to_contributions():
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], [L.Add(name="add")([a, b]), L.Subtract(name="sub")([a, b])])
    xa, xb = np.abs(_data((4,))), np.abs(_data((4,), seed=2))
    relevance = _data((4,), seed=3)
    for name, sign in (("add", 1.0), ("sub", -1.0)):
        op = _op_of(model, name)
        assert op.kind == kinds.AFFINE
        ra, rb = _rule_backward(ip_rules.ZRule(op, {}), [xa, xb], relevance)
        z = xa + sign * xb
        np.testing.assert_allclose(ra, xa * relevance / z, rtol=1e-4)
        np.testing.assert_allclose(rb, sign * xb * relevance / z, rtol=1e-4)
        np.testing.assert_allclose(ra + rb, relevance, rtol=1e-4, atol=1e-6)


def _se_block(gate_activation="sigmoid"):
    inp = keras.Input((4, 4, 3))
    h = L.Conv2D(3, 1)(inp)
    gate = L.Dense(3, activation=gate_activation)(L.GlobalAveragePooling2D()(h))
    gate = L.Reshape((1, 1, 3))(gate)
    return keras.Model(inp, L.Multiply(name="excite")([h, gate]))


def test_squeeze_excite_multiply_is_a_gate_whose_signal_gets_all_relevance():
    model = _se_block()
    op = _op_of(model, "excite")
    assert op.kind == kinds.GATE and op.gates == (1,)
    h, gate = _data((4, 4, 3)), 1 / (1 + np.exp(-_data((1, 1, 3), seed=4)))
    relevance = _data((4, 4, 3), seed=5)
    r_signal, r_gate = _rule_backward(ip_rules.ZRule(op, {}), [h, gate], relevance)
    np.testing.assert_allclose(r_signal, relevance, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(r_gate, 0.0)
    g_signal, g_gate = _rule_backward(ip_rules.LinearizedRule(op, {}), [h, gate], relevance)
    np.testing.assert_allclose(g_signal, relevance * gate, rtol=1e-5)
    np.testing.assert_array_equal(g_gate, 0.0)


@pytest.mark.parametrize("build", [
    lambda h: L.Multiply(name="excite")([h, h]),
    lambda h: L.Multiply(name="excite")([h, L.Activation("relu")(h)]),
], ids=["square", "relu_product"])
def test_products_of_signals_are_not_gates(build):
    inp = keras.Input((3,))
    op = _op_of(keras.Model(inp, build(inp)), "excite")
    assert op.kind == kinds.OTHER
    with pytest.raises(ValueError, match="'excite' \\(Multiply\\)"):
        ip.create_analyzer("lrp.z", keras.Model(inp, build(inp)))


@pytest.mark.parametrize("build, kind", [
    (lambda x: x * 2.0, kinds.DIAGONAL),
    (lambda x: 1.0 - x / 3.0, kinds.DIAGONAL),
    (lambda x: -x, kinds.DIAGONAL),
    (lambda x: x * np.ones((2, 1, 6), "float32"), kinds.AFFINE),
    (lambda x: x + x * 2.0, kinds.AFFINE),
    (lambda x: keras.ops.mean(x, axis=1), kinds.AFFINE),
    (lambda x: keras.ops.reshape(x, (-1, 3, 2)), kinds.ROUTING),
    (lambda x: keras.ops.transpose(x), kinds.ROUTING),
    (lambda x: keras.ops.max(x, axis=1), kinds.MAX),
    (lambda x: x * x, kinds.OTHER),
    (lambda x: 2.0 / x, kinds.OTHER),
    (lambda x: x / x, kinds.OTHER),
    (lambda x: keras.ops.exp(x), kinds.OTHER),
], ids=["times", "rsub_div", "neg", "broadcast", "add", "mean", "reshape", "transpose", "max",
        "square", "reciprocal", "ratio", "exp"])
def test_keras_ops_calls_get_kinds(build, kind):
    inp = keras.Input((6,))
    graph = canonize(keras.Model(inp, build(inp)))
    assert [op.kind for op in graph.ops if isinstance(op, LayerOp)][-1] == kind


@pytest.mark.parametrize("layer, name", [
    (L.ReLU(), "relu"), (L.ReLU(max_value=6.0), "relu6"), (L.ReLU(negative_slope=0.1), "relu_custom"),
    (L.LeakyReLU(0.2), "leaky_relu"), (L.ELU(), "elu"), (L.PReLU(), "prelu"),
    (L.Activation("swish"), "silu"), (L.Activation("gelu"), "gelu"),
    (L.Activation("hard_sigmoid"), "hard_sigmoid"), (L.Activation(keras.ops.tanh), "tanh"),
])
def test_activation_layers_get_canonical_names(layer, name):
    inp = keras.Input((4,))
    (op,) = canonize(keras.Model(inp, L.Dense(2)(layer(inp)))).ops[:1]
    assert op.activation == name and name in kinds.ELEMENTWISE


@pytest.mark.parametrize("call, name", [(keras.ops.relu, "relu"), (keras.ops.relu6, "relu6"),
                                        (keras.ops.silu, "silu"), (keras.ops.leaky_relu, "leaky_relu"),
                                        (keras.ops.sigmoid, "sigmoid"), (keras.ops.tanh, "tanh")])
def test_keras_ops_activations_are_activation_ops(call, name):
    inp = keras.Input((4,))
    (op,) = canonize(keras.Model(inp, call(inp))).ops
    assert op.activation == name


def test_layer_norm_z_rule_holds_the_standard_deviation_constant():
    """R_x = x * J^T (R / z) with J = gamma / sigma (I - 1/n), by hand."""
    inp = keras.Input((5,))
    norm = L.LayerNormalization(name="norm")
    model = keras.Model(inp, norm(inp))
    rng = np.random.default_rng(6)
    norm.gamma.assign(rng.uniform(0.5, 2, 5).astype("float32"))
    norm.beta.assign(rng.normal(0, 1, 5).astype("float32"))
    op = _op_of(model, "norm")
    assert op.kind == kinds.LAYER_NORM
    x, relevance = _data((5,)), _data((5,), seed=7)
    got = _rule_backward(ip_rules.ZRule(op, {}), [x], relevance)[0]
    x64 = x.astype(np.float64)
    sigma = np.sqrt(x64.var(axis=1, keepdims=True) + norm.epsilon)
    z = (x64 - x64.mean(axis=1, keepdims=True)) / sigma * norm.gamma.numpy() + norm.beta.numpy()
    v = relevance / z * norm.gamma.numpy() / sigma
    np.testing.assert_allclose(got, x64 * (v - v.mean(axis=1, keepdims=True)), rtol=1e-3, atol=1e-5)


def test_convnext_layer_scale_is_diagonal():
    from keras.src.applications.convnext import LayerScale

    inp = keras.Input((4, 4, 3))
    (op,) = canonize(keras.Model(inp, LayerScale(0.5, 3, name="scale")(inp))).ops
    assert op.kind == kinds.DIAGONAL


@pytest.mark.parametrize("name, shape, factory", KERNEL_LAYERS, ids=IDS)
def test_every_canonical_tensor_has_its_static_shape(name, shape, factory):
    graph = canonize(_kernel_bn_model(shape, factory))
    _, values = graph.run([tf.constant(_data(shape, n=2))], keep=True)
    for key, value in values.items():
        assert graph.shapes[key][1:] == tuple(value.shape)[1:], (name, key)
