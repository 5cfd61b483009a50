"""1x1 convolutions as canonize builds them: a strided selection and a matrix product.

TensorFlow's oneDNN kernels for the gradients of a strided 1x1 convolution
(e.g. input 4x60x60x8, kernel 1x1x8x16, stride 2, float32) corrupt the heap
and take the whole interpreter down (SIGSEGV, "double free or corruption"),
the input gradient (every analyzer) as well as the kernel gradient (pattern
fitting).  ``canonize`` therefore makes every ungrouped 1x1 convolution's
``linear(x, K)`` a selection of ``x`` at the positions ``0, s, 2s, ...`` times
``K`` over the channel axis.  These tests check its forward pass against the
Keras layer, its forward pass, input gradient and kernel gradient
(``sums.kernel_grads``) against independent float64 numpy references
(explicit positions, ``np.einsum``), the whole layer against TensorFlow's
convolution (where it cannot crash: a subprocess with oneDNN off), that no
convolution op is left, and that a fit and the analyzers survive the crashing
shape with oneDNN on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from pattern_reference import patterns_from_samples

from innv_pattern.canonize import canonize
from innv_pattern.patterns.sums import kernel_grads

ROOT = Path(__file__).resolve().parents[1]

#: name -> (layer class, layer arguments, model input shape without the batch axis).
CASES = {
    "conv2d_stride1": ("Conv2D", {"filters": 5, "kernel_size": 1}, (7, 6, 4)),
    "conv2d_stride2_same_odd": ("Conv2D", {"filters": 5, "kernel_size": 1, "strides": 2,
                                           "padding": "same"}, (7, 9, 4)),
    "conv2d_stride3_valid_10": ("Conv2D", {"filters": 5, "kernel_size": 1, "strides": 3},
                                (10, 11, 4)),
    "conv2d_stride3_same_10": ("Conv2D", {"filters": 5, "kernel_size": 1, "strides": 3,
                                          "padding": "same"}, (10, 11, 4)),
    "conv2d_strides_2x3": ("Conv2D", {"filters": 5, "kernel_size": 1, "strides": (2, 3),
                                      "padding": "same"}, (9, 10, 3)),
    "conv2d_dilated": ("Conv2D", {"filters": 5, "kernel_size": 1, "dilation_rate": 2,
                                  "padding": "same"}, (6, 6, 3)),
    # Output 5x4x6: Keras 3.15's ops.add adds a channels-first bias along the last axis when
    # that axis is as long as the channels (output 5x4x5), so the layer's own output would be
    # wrong.
    "conv2d_channels_first": ("Conv2D", {"filters": 5, "kernel_size": 1, "strides": 2,
                                         "data_format": "channels_first"}, (4, 7, 11)),
    "conv1d_stride2": ("Conv1D", {"filters": 6, "kernel_size": 1, "strides": 2}, (11, 3)),
    "conv1d_causal_stride2": ("Conv1D", {"filters": 6, "kernel_size": 1, "strides": 2,
                                         "padding": "causal"}, (11, 3)),
    "conv3d_stride2_same": ("Conv3D", {"filters": 4, "kernel_size": 1, "strides": 2,
                                       "padding": "same"}, (5, 6, 7, 3)),
    "separable_pointwise": ("SeparableConv2D", {"filters": 5, "kernel_size": 3, "strides": 2,
                                                "padding": "same", "depth_multiplier": 2},
                            (9, 9, 3)),
}
BATCH = 3

#: The Keras layers' own convolutions (oneDNN off, subprocess): forward, input and kernel
#: gradients of each case as JSON.
CONV_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf
sys.path.insert(0, "tests")
from test_pointwise_sums import CASES, case_model
data = np.load(sys.argv[1])
found = {}
for name, (cls, kwargs, shape) in CASES.items():
    model, kernel = case_model(name)
    def run(x, g):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
        return [y, *tape.gradient(y, [x, kernel], output_gradients=g)]
    # Without oneDNN, TensorFlow's CPU convolutions are NHWC only: XLA runs channels-first.
    if kwargs.get("data_format") == "channels_first":
        run = tf.function(run, jit_compile=True)
    x, g = tf.constant(data[name + "/x0"], "float32"), tf.constant(data[name + "/g0"], "float32")
    found[name] = [t.numpy().tolist() for t in run(x, g)]
print(json.dumps(found))
"""

#: The crashing shape fitted with oneDNN on; saves the gradient, the patterns and the weights.
CRASH_SCRIPT = """
import sys
import keras, numpy as np, tensorflow as tf
from innv_pattern.canonize import canonize
from innv_pattern.patterns import PatternComputer
from innv_pattern.patterns.sums import kernel_grads
padding, data_path, out_path = sys.argv[1:]
data = np.load(data_path)
keras.utils.set_random_seed(0)
inp = keras.Input((60, 60, 8))
h = keras.layers.Conv2D(16, 1, strides=2, padding=padding, activation="relu", name="pw")(inp)
model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
layer = model.get_layer("pw")
layer.bias.assign(np.random.default_rng(1).normal(0, 0.5, 16).astype("float32"))
op = canonize(model).kernel_ops[0]
grads = tf.function(lambda x, g: kernel_grads(op, x, op.get_kernel(), [g]))(
    tf.constant(data["x"]), tf.constant(data["g"]))
patterns = PatternComputer(model, pattern_type="relu").compute(data["x"], batch_size=4,
                                                               verbose=0)
np.savez(out_path, grad=grads[0].numpy(), kernel=layer.kernel.numpy(),
         bias=layer.bias.numpy(), **{t: patterns.for_type(t)["pw"] for t in patterns.types})
"""

#: Every analyzer kind on a model with the crashing layer, oneDNN on; saves analyses and weights.
ANALYZE_SCRIPT = """
import sys
import keras, numpy as np, tensorflow as tf
import innv_pattern
from innv_pattern.canonize import canonize
x_path, out_path = sys.argv[1:]
x = np.load(x_path)
keras.utils.set_random_seed(0)
inp = keras.Input((60, 60, 8))
h = keras.layers.ReLU()(keras.layers.Conv2D(16, 1, strides=2, name="pw")(inp))
model = keras.Model(inp, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(h)))
model.get_layer("pw").bias.assign(np.random.default_rng(1).normal(0, 0.5, 16).astype("float32"))
op = canonize(model).kernel_ops[0]
with tf.GradientTape() as tape:  # eagerly: the input gradient that crashed as a conv backprop
    xt = tf.constant(x)
    tape.watch(xt)
    y = op.linear(xt, op.get_kernel())
eager = tape.gradient(y, xt)
patterns = innv_pattern.PatternComputer(model).compute(x, verbose=0)
found = {"eager_input_grad": eager.numpy()}
for name in ("gradient", "lrp.epsilon", "guided_backprop", "pattern.net", "pattern.attribution"):
    kwargs = {"patterns": patterns} if name.startswith("pattern.") else {}
    found[name] = innv_pattern.create_analyzer(name, model, **kwargs).analyze(x)
weights = {w.path.replace("/", "_"): w.numpy() for w in model.weights}
np.savez(out_path, **found, **weights)
"""


def strided(x: np.ndarray, strides: tuple[int, ...], out: tuple[int, ...],
            channels_first: bool) -> np.ndarray:
    """``x`` at the positions ``0, s, 2s, ...`` (``out`` of them) of each spatial axis."""
    first = 2 if channels_first else 1
    for axis, (s, n) in enumerate(zip(strides, out), start=first):
        positions = s * np.arange(n)
        assert positions[-1] < x.shape[axis], "more outputs than strided positions"
        x = np.take(x, positions, axis=axis)
    return x


def channels_last(*arrays: np.ndarray, channels_first: bool) -> list[np.ndarray]:
    """Float64 copies, channels moved last if they are first."""
    return [np.moveaxis(np.asarray(a, np.float64), 1, -1) if channels_first
            else np.asarray(a, np.float64) for a in arrays]


def reference_forward(x: np.ndarray, kernel: np.ndarray, strides: tuple[int, ...],
                      out: tuple[int, ...], channels_first: bool) -> np.ndarray:
    """Float64 ``y[position] = x[position * s] K`` (``out``: the output's spatial shape)."""
    x, = channels_last(x, channels_first=channels_first)
    y = np.einsum("b...c,co->b...o", strided(x, strides, out, False),
                  np.asarray(kernel, np.float64).reshape(kernel.shape[-2:]))
    return np.moveaxis(y, -1, 1) if channels_first else y


def reference_input_grad(x_shape: tuple, kernel: np.ndarray, g: np.ndarray,
                         strides: tuple[int, ...], channels_first: bool) -> np.ndarray:
    """Float64 ``dx[position * s] = g[position] K^T``, zero at the positions no output reads."""
    g, = channels_last(g, channels_first=channels_first)
    shape = tuple(np.moveaxis(np.zeros(x_shape), 1, -1).shape) if channels_first else x_shape
    dx = np.zeros(shape)
    index = (slice(None),) + tuple(slice(0, s * n, s) for s, n in zip(strides, g.shape[1:-1]))
    dx[index] = np.einsum("b...o,co->b...c", g,
                          np.asarray(kernel, np.float64).reshape(kernel.shape[-2:]))
    return np.moveaxis(dx, -1, 1) if channels_first else dx


def reference_grad(x: np.ndarray, g: np.ndarray, strides: tuple[int, ...],
                   channels_first: bool) -> np.ndarray:
    """Float64 ``sum over batch and positions of x[position * s] g[position]``, kernel-shaped."""
    x, g = channels_last(x, g, channels_first=channels_first)
    xs = strided(x, strides, g.shape[1:-1], channels_first=False)
    grad = np.einsum("bpc,bpo->co", xs.reshape(len(xs), -1, xs.shape[-1]),
                     g.reshape(len(g), -1, g.shape[-1]))
    return grad.reshape((1,) * len(strides) + grad.shape)


def relative_error(found: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference relative to the largest reference entry."""
    found, expected = np.asarray(found, np.float64), np.asarray(expected, np.float64)
    assert found.shape == expected.shape, (found.shape, expected.shape)
    return float(np.abs(found - expected).max() / np.abs(expected).max())


def output_shape(op, x_shape: tuple) -> tuple:
    """The shape of ``op.linear``'s output, from a trace."""
    fn = tf.function(op.linear).get_concrete_function(tf.TensorSpec(x_shape),
                                                      tf.TensorSpec(op.kernel_shape))
    return tuple(fn.structured_outputs.shape)


def case_model(name: str) -> tuple[keras.Model, keras.Variable]:
    """The case's one-layer model with seeded weights (the same in every process), and its
    1x1 kernel (a separable conv's pointwise kernel)."""
    cls, kwargs, shape = CASES[name]
    inp = keras.Input(shape)
    layer = getattr(keras.layers, cls)(**kwargs)
    model = keras.Model(inp, layer(inp))
    rng = np.random.default_rng(list(CASES).index(name))
    for w in layer.weights:
        w.assign(rng.normal(size=w.shape).astype(w.dtype))
    return model, layer.pointwise_kernel if cls.startswith("Separable") else layer.kernel


def case_strides(name: str) -> tuple[int, ...]:
    """The strides the case's 1x1 op reads (a separable conv's pointwise half has 1)."""
    cls, kwargs, shape = CASES[name]
    rank = len(shape) - 1
    stride = kwargs.get("strides", 1) if not cls.startswith("Separable") else 1
    return tuple(np.broadcast_to(stride, (rank,)).tolist())


def case_op(name: str) -> tuple:
    """The case's 1x1 kernel op (the last: a separable conv's pointwise half) and input shape."""
    graph = canonize(case_model(name)[0])
    op = graph.kernel_ops[-1]
    return op, tuple(graph.shapes[op.inputs[0]][1:])


@pytest.fixture(scope="module")
def case_data(tmp_path_factory) -> tuple[dict[str, np.ndarray], Path]:
    """Per case (float64): the op's input ``x`` and output gradient ``g``, the model's input
    ``x0`` and output gradient ``g0``; and their npz file."""
    rng = np.random.default_rng(0)
    data = {}
    for name, (_, _, shape) in CASES.items():
        op, op_shape = case_op(name)
        x = rng.normal(size=(BATCH,) + op_shape)
        data[name + "/x"], data[name + "/g"] = x, rng.normal(size=output_shape(op, x.shape))
        data[name + "/x0"] = rng.normal(size=(BATCH,) + shape)
        data[name + "/g0"] = rng.normal(size=(BATCH,) + tuple(op.layer.compute_output_shape(
            (None,) + shape)[1:]))
    path = tmp_path_factory.mktemp("pointwise") / "cases.npz"
    np.savez(path, **data)
    return data, path


@pytest.fixture(scope="module")
def conv_results(case_data) -> dict[str, list[np.ndarray]]:
    """Each case's Keras layer (TensorFlow's convolution) in a subprocess with oneDNN off:
    ``[output, input gradient, 1x1 kernel gradient]``."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", CONV_SCRIPT, str(case_data[1])],
                         capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.splitlines()[-1])
    return {k: [np.array(a) for a in v] for k, v in found.items()}


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("size,stride", [(10, 3), (9, 2), (8, 2), (6, 1)])
def test_tensorflow_one_by_one_conv_reads_the_strided_positions(size, stride, padding):
    """TensorFlow's 1x1 convolution reads ``x`` at ``0, s, 2s, ...`` for 'valid' and 'same'.

    The canonical op and the references below assume it; this checks it on
    TensorFlow's forward convolution (no gradient op runs).  Fails if 'same'
    padded a 1x1 kernel (shifting the positions read) or if the output size
    differed from ``ceil(size / stride)``.
    """
    rng = np.random.default_rng(size + stride)
    x, k = rng.normal(size=(2, size, size + 1, 3)), rng.normal(size=(1, 1, 3, 4))
    y = keras.ops.conv(tf.constant(x), tf.constant(k), strides=stride, padding=padding).numpy()
    out = (-(-size // stride), -(-(size + 1) // stride))
    expected = np.einsum("bhwc,co->bhwo", strided(x, (stride, stride), out, False), k[0, 0])
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_forward_equals_the_layer_and_the_reference(name, case_data):
    """The canonical graph's output equals the Keras layer's own (1e-5), and ``op.linear``
    the float64 einsum over explicit positions (float64: 1e-12, float32: 1e-5).

    Fails if a stride, 'same'/'causal' padding, a channels-first layout or a
    separable conv's halves were read wrongly.
    """
    data, _ = case_data
    model, _ = case_model(name)
    graph = canonize(model)
    x0 = data[name + "/x0"].astype("float32")
    assert relative_error(graph.run([tf.constant(x0)])[0], model(x0).numpy()) < 1e-5
    op = graph.kernel_ops[-1]
    x, kernel, first = data[name + "/x"], op.get_kernel().numpy(), op.channel_axis != -1
    out = channels_last(data[name + "/g"], channels_first=first)[0].shape[1:-1]
    expected = reference_forward(x, kernel, case_strides(name), out, first)
    found64 = op.linear(tf.constant(x), tf.constant(kernel, tf.float64))
    found32 = op.linear(tf.constant(x, tf.float32), tf.constant(kernel))
    assert found64.dtype == tf.float64 and relative_error(found64, expected) < 1e-12
    assert relative_error(found32, expected) < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_input_gradient_matches_float64_reference(name, case_data):
    """The input gradient of ``op.linear`` is ``g K^T`` at the strided positions, 0 elsewhere.

    Runs in float32 in a ``tf.function`` that knows only the channel count
    (variable-size images) and in float64 eagerly.  Fails on a wrong
    position, a selection whose gradient leaks into unread positions, or a
    transposed kernel.
    """
    data, _ = case_data
    op, _ = case_op(name)
    x, g, kernel = data[name + "/x"], data[name + "/g"], op.get_kernel().numpy()
    expected = reference_input_grad(x.shape, kernel, g, case_strides(name),
                                    op.channel_axis != -1)

    def input_grad(x: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = op.linear(x, tf.cast(kernel, x.dtype))
        return tape.gradient(y, x, output_gradients=g)

    channel = op.channel_axis % x.ndim
    spec = [tf.TensorSpec(tuple(d if i == channel else None for i, d in enumerate(a.shape)))
            for a in (x, g)]
    found32 = tf.function(input_grad, input_signature=spec)(tf.constant(x, tf.float32),
                                                            tf.constant(g, tf.float32))
    assert relative_error(input_grad(tf.constant(x), tf.constant(g)), expected) < 1e-12
    assert relative_error(found32, expected) < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_kernel_grads_match_float64_reference(name, case_data):
    """``kernel_grads`` of each 1x1 case equals the float64 einsum over explicit positions.

    Runs in float32 inside a ``tf.function`` that knows only the channel
    counts (as a fit of a model with variable-size images runs it) and in
    float64 eagerly (as ``finish`` runs it).  Fails on a wrong stride, wrong
    positions, a channels-first mix-up, or a reshape that scrambles channels.
    """
    data, _ = case_data
    op, _ = case_op(name)
    x, g = data[name + "/x"], data[name + "/g"]
    expected = reference_grad(x, g, case_strides(name), op.channel_axis != -1)
    channel = op.channel_axis % x.ndim
    spec = [tf.TensorSpec(tuple(d if i == channel else None for i, d in enumerate(a.shape)))
            for a in (x, g)]
    traced = tf.function(lambda x, g: kernel_grads(op, x, tf.zeros(op.kernel_shape), [g, 2 * g]),
                         input_signature=spec)
    found32 = traced(tf.constant(x, tf.float32), tf.constant(g, tf.float32))
    found64 = kernel_grads(op, tf.constant(x), tf.zeros(op.kernel_shape, tf.float64),
                           [tf.constant(g)])
    assert found64[0].dtype == tf.float64 and found64[0].shape == op.kernel_shape
    assert relative_error(found64[0], expected) < 1e-12
    assert relative_error(found32[0], expected) < 1e-5
    assert relative_error(found32[1], 2 * expected) < 1e-5


def test_kernel_grads_with_a_one_neuron_kernel():
    """``finish`` sums ``x`` with a one-neuron ("compact") kernel: the gradient takes its shape.

    Fails if the op's ``linear`` assumed ``op.kernel_shape`` instead of the
    shape of the kernel it is given.
    """
    op, shape = case_op("conv2d_stride3_same_10")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1,) + shape)
    g = np.ones((1, 4, 4, 1))
    found = kernel_grads(op, tf.constant(x), tf.zeros((1, 1, shape[-1], 1), tf.float64),
                         [tf.constant(g)])[0]
    np.testing.assert_allclose(found, reference_grad(x, g, (3, 3), False), rtol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_matches_the_keras_layer_without_onednn(name, case_data, conv_results):
    """The canonical graph equals the Keras layer's own convolution (oneDNN off, subprocess):
    output, input gradient and 1x1 kernel gradient (of the variable, through ``get_kernel``).

    This ties the canonical op to TensorFlow's convolution semantics (padding,
    strides, data format, a separable conv's halves) independently of this
    file's references.  Fails if the two disagree for any 1x1 case.
    """
    data, _ = case_data
    model, kernel = case_model(name)
    graph = canonize(model)
    x, g = tf.constant(data[name + "/x0"], "float32"), tf.constant(data[name + "/g0"], "float32")
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = graph.run([x])[0]
    found = [y, *tape.gradient(y, [x, kernel], output_gradients=g)]
    for what, a, b in zip(("output", "input gradient", "kernel gradient"), found,
                          conv_results[name]):
        assert relative_error(a, b) < 1e-5, what


def _op_types(layer: keras.layers.Layer, shape: tuple, which: int = -1) -> set[str]:
    """The op types of a canonical kernel op's forward pass, input and kernel gradients."""
    inp = keras.Input(shape)
    graph = canonize(keras.Model(inp, layer(inp)))
    op = graph.kernel_ops[which]
    x_shape = (2,) + tuple(graph.shapes[op.inputs[0]][1:])

    def passes(x: tf.Tensor, kernel: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, kernel])
            y = op.linear(x, kernel)
        return [y, tape.gradient(y, x, output_gradients=g), *kernel_grads(op, x, kernel, [g])]

    concrete = tf.function(passes).get_concrete_function(
        tf.TensorSpec(x_shape), tf.TensorSpec(op.kernel_shape),
        tf.TensorSpec(output_shape(op, x_shape)))
    graph_def = concrete.graph.as_graph_def()  # with the functions it calls (XLA-compiled ops)
    return {node.op for nodes in [graph_def.node, *(f.node_def for f in graph_def.library.function)]
            for node in nodes}


@pytest.mark.parametrize("name", CASES)
def test_one_by_one_kernel_ops_run_no_convolution(name):
    """Forward pass, input gradient and kernel gradient of every 1x1 case contain no
    convolution op (so none of oneDNN's crashing kernels can run).

    Fails if canonize misses a 1x1 layer kind or layout.
    """
    cls, kwargs, shape = CASES[name]
    types = _op_types(getattr(keras.layers, cls)(**kwargs), shape)
    assert "MatMul" in types or "BatchMatMulV2" in types, sorted(types)
    assert not any("Conv" in t for t in types), sorted(types)


def test_other_kernel_ops_keep_their_convolutions():
    """Only ungrouped 1x1 convolutions become matrix products: a 3x3 convolution keeps
    ``Conv2D`` and both its backprops, a grouped 1x1 convolution and a separable
    convolution's depthwise half keep theirs.  Fails if the rewrite is too wide.
    """
    types = _op_types(keras.layers.Conv2D(4, 3, strides=2), (8, 8, 3))
    assert {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"} <= types
    assert any("Conv" in t for t in _op_types(keras.layers.Conv2D(4, 1, groups=2), (8, 8, 4)))
    assert any("Conv" in t for t in _op_types(keras.layers.SeparableConv2D(4, 3), (8, 8, 3),
                                              which=0))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_crashing_shape_fits_with_onednn(padding, tmp_path):
    """The shape that crashes oneDNN's conv backprop fits in a subprocess with oneDNN on.

    With a convolution op the subprocess died (SIGSEGV or "double free or
    corruption"), so this fails on a non-zero exit; it also fails if the
    kernel gradient differs from the float64 einsum reference, or the fitted
    relu patterns from the float64 two-component estimator applied to the
    explicitly strided samples.
    """
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 60, 60, 8)).astype("float32") + 0.5
    g = rng.normal(size=(8, 30, 30, 16)).astype("float32")
    np.savez(tmp_path / "data.npz", x=x, g=g)
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    run = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, padding, str(tmp_path / "data.npz"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True,
                         env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=ROOT, timeout=600)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-3000:]}"
    out = np.load(tmp_path / "out.npz")
    assert relative_error(out["grad"], reference_grad(x, g, (2, 2), False)) < 1e-4
    samples = strided(x.astype(np.float64), (2, 2), (30, 30), False).reshape(-1, 8)
    expected = patterns_from_samples(samples, out["kernel"][0, 0].astype(np.float64),
                                     out["bias"].astype(np.float64))
    for kind in ("relu.positive", "relu.negative"):
        assert relative_error(out[kind][0, 0], expected[kind]) < 1e-4, kind


def test_analyzers_survive_the_crashing_layer_with_onednn(tmp_path):
    """gradient, lrp.epsilon, guided_backprop, pattern.net and pattern.attribution (patterns
    fitted) on input 60x60x8 -> Conv2D(16, 1, strides=2) -> ReLU -> Flatten -> Dense(3),
    in a subprocess with oneDNN on.

    Fails on a non-zero exit (the eager input gradient of that convolution
    crashed the process as a conv backprop), on a non-finite or misshapen
    analysis, or if the gradient analyzer (and the op's eager input gradient)
    differ from a float64 numpy reference: the 1x1 convolution an einsum over
    the strided positions, the ReLU's mask, the selected output's weights.
    """
    x = np.random.default_rng(5).normal(size=(4, 60, 60, 8)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    run = subprocess.run([sys.executable, "-c", ANALYZE_SCRIPT, str(tmp_path / "x.npy"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True,
                         env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=ROOT, timeout=600)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-3000:]}"
    out = dict(np.load(tmp_path / "out.npz"))
    for name in ("gradient", "lrp.epsilon", "guided_backprop", "pattern.net",
                 "pattern.attribution"):
        assert out[name].shape == x.shape and np.isfinite(out[name]).all(), name
        assert np.abs(out[name]).max() > 0, name
    kernel, bias = out["pw_kernel"].astype(np.float64), out["pw_bias"].astype(np.float64)
    dense, dense_bias = out["out_kernel"].astype(np.float64), out["out_bias"].astype(np.float64)
    pre = reference_forward(x, kernel, (2, 2), (30, 30), False) + bias
    logits = np.maximum(pre, 0).reshape(len(x), -1) @ dense + dense_bias
    selected = dense[:, logits.argmax(axis=1)].T.reshape(pre.shape)  # max_activation, from 1
    expected = reference_input_grad(x.shape, kernel, selected * (pre > 0), (2, 2), False)
    assert relative_error(out["gradient"], expected) < 1e-4
    ones = reference_input_grad(x.shape, kernel, np.ones(pre.shape), (2, 2), False)
    assert relative_error(out["eager_input_grad"], ones) < 1e-5
