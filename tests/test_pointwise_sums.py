"""Kernel gradients of 1x1 convolutions as matrix products (``sums.kernel_grads``).

TensorFlow's oneDNN kernels for the gradients of a strided 1x1 convolution
(e.g. input 4x60x60x8, kernel 1x1x8x16, stride 2, float32) corrupt the heap
and take the whole interpreter down (SIGSEGV, "double free or corruption").
``kernel_grads`` therefore computes a 1x1 convolution's kernel gradient as
``x_strided^T g``.  These tests check that path against an independent float64
numpy reference (explicit positions ``0, s, 2s, ...``, ``np.einsum``), against
the GradientTape path it replaces (run where it cannot crash: in a subprocess
with oneDNN off), and that a fit of the crashing shape survives with oneDNN on.
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
from innv_pattern.patterns.sums import kernel_grads, pointwise_strides

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
    "conv2d_channels_first": ("Conv2D", {"filters": 5, "kernel_size": 1, "strides": 2,
                                         "data_format": "channels_first"}, (4, 7, 9)),
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

#: The old path, with the op built as in the tests; prints the gradients as JSON.
TAPE_SCRIPT = """
import json, sys
import keras, numpy as np, tensorflow as tf
from innv_pattern.canonize import canonize
cases, data = json.loads(sys.argv[1]), np.load(sys.argv[2])
found = {}
for name, (cls, kwargs, shape) in cases.items():
    inp = keras.Input(tuple(shape))
    op = canonize(keras.Model(inp, getattr(keras.layers, cls)(**kwargs)(inp))).kernel_ops[-1]
    def grad(x, kernel, g):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            out = op.linear(x, kernel)
        return tape.gradient(out, kernel, output_gradients=g)
    # Without oneDNN, TensorFlow's CPU convolutions are NHWC only: XLA runs channels-first.
    run = tf.function(grad, jit_compile=True) if op.channel_axis != -1 else grad
    for dtype in ("float32", "float64"):
        found[name + "/" + dtype] = run(tf.constant(data[name + "/x"], dtype),
                                        tf.zeros(op.kernel_shape, dtype),
                                        tf.constant(data[name + "/g"], dtype)).numpy().tolist()
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


def strided(x: np.ndarray, strides: tuple[int, ...], out: tuple[int, ...],
            channels_first: bool) -> np.ndarray:
    """``x`` at the positions ``0, s, 2s, ...`` (``out`` of them) of each spatial axis."""
    first = 2 if channels_first else 1
    for axis, (s, n) in enumerate(zip(strides, out), start=first):
        positions = s * np.arange(n)
        assert positions[-1] < x.shape[axis], "more outputs than strided positions"
        x = np.take(x, positions, axis=axis)
    return x


def reference_grad(x: np.ndarray, g: np.ndarray, strides: tuple[int, ...],
                   channels_first: bool) -> np.ndarray:
    """Float64 ``sum over batch and positions of x[position * s] g[position]``, kernel-shaped."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    if channels_first:
        x, g = np.moveaxis(x, 1, -1), np.moveaxis(g, 1, -1)
    xs = strided(x, strides, g.shape[1:-1], channels_first=False)
    grad = np.einsum("bpc,bpo->co", xs.reshape(len(xs), -1, xs.shape[-1]),
                     g.reshape(len(g), -1, g.shape[-1]))
    return grad.reshape((1,) * len(strides) + grad.shape)


def relative_error(found: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference relative to the largest reference entry."""
    return float(np.abs(np.asarray(found, np.float64) - expected).max() / np.abs(expected).max())


def output_shape(op, x_shape: tuple) -> tuple:
    """The shape of ``op.linear``'s output, from a trace (nothing runs: NCHW needs no kernel)."""
    fn = tf.function(op.linear).get_concrete_function(tf.TensorSpec(x_shape),
                                                      tf.TensorSpec(op.kernel_shape))
    return tuple(fn.structured_outputs.shape)


def case_op(name: str) -> tuple:
    """The case's kernel op (the last: a separable conv's pointwise half) and its input shape."""
    cls, kwargs, shape = CASES[name]
    inp = keras.Input(shape)
    graph = canonize(keras.Model(inp, getattr(keras.layers, cls)(**kwargs)(inp)))
    op = graph.kernel_ops[-1]
    return op, tuple(graph.shapes[op.inputs[0]][1:])


@pytest.fixture(scope="module")
def case_data(tmp_path_factory) -> tuple[dict[str, np.ndarray], Path]:
    """Per case: an input batch ``x`` and an output gradient ``g`` (float64), and their npz file."""
    rng = np.random.default_rng(0)
    data = {}
    for name in CASES:
        op, shape = case_op(name)
        x = rng.normal(size=(BATCH,) + shape)
        data[name + "/x"], data[name + "/g"] = x, rng.normal(size=output_shape(op, x.shape))
    path = tmp_path_factory.mktemp("pointwise") / "cases.npz"
    np.savez(path, **data)
    return data, path


@pytest.fixture(scope="module")
def tape_grads(case_data) -> dict[str, np.ndarray]:
    """The GradientTape path's gradients of every case, from a subprocess with oneDNN off."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", TAPE_SCRIPT, json.dumps(CASES),
                          str(case_data[1])], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return {k: np.array(v) for k, v in json.loads(run.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("name", CASES)
def test_one_by_one_kernels_take_the_matmul_path(name):
    """Every case is recognized as a 1x1 convolution, with the strides its op reads.

    Fails if ``pointwise_strides`` misses a layer kind (it would take the
    crashing conv backprop) or reads the wrong strides (a separable conv's
    strides belong to its depthwise half; its pointwise half has stride 1).
    """
    op, _ = case_op(name)
    cls, kwargs, _ = CASES[name]
    expected = kwargs.get("strides", 1) if cls != "SeparableConv2D" else 1
    rank = len(op.kernel_shape) - 2
    assert pointwise_strides(op) == tuple(np.broadcast_to(expected, (rank,)).tolist())


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("size,stride", [(10, 3), (9, 2), (8, 2), (6, 1)])
def test_tensorflow_one_by_one_conv_reads_the_strided_positions(size, stride, padding):
    """TensorFlow's 1x1 convolution reads ``x`` at ``0, s, 2s, ...`` for 'valid' and 'same'.

    The matmul path and the reference below assume it; this checks it on
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
def test_matmul_path_matches_float64_reference(name, case_data):
    """``kernel_grads`` of each 1x1 case equals the float64 einsum over explicit positions.

    Runs in float32 inside a ``tf.function`` that knows only the channel
    counts (as a fit of a model with variable-size images runs it) and in
    float64 eagerly (as ``finish`` runs it).  Fails on a wrong stride, wrong
    positions, a channels-first mix-up, or a reshape that scrambles channels.
    """
    data, _ = case_data
    op, _ = case_op(name)
    x, g = data[name + "/x"], data[name + "/g"]
    expected = reference_grad(x, g, pointwise_strides(op), op.channel_axis != -1)
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


def test_matmul_path_with_a_one_neuron_kernel():
    """``finish`` sums ``x`` with a one-neuron ("compact") kernel: the gradient takes its shape.

    Fails if the matmul path used ``op.kernel_shape`` instead of the shape of
    the kernel it is given.
    """
    op, shape = case_op("conv2d_stride3_same_10")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1,) + shape)
    g = np.ones((1, 4, 4, 1))
    found = kernel_grads(op, tf.constant(x), tf.zeros((1, 1, shape[-1], 1), tf.float64),
                         [tf.constant(g)])[0]
    np.testing.assert_allclose(found, reference_grad(x, g, (3, 3), False), rtol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_matmul_path_matches_tape_path(name, case_data, tape_grads):
    """The matmul path equals the GradientTape path it replaces (oneDNN off, subprocess).

    This ties the path to TensorFlow's own convolution semantics (padding,
    strides, data format, the canonical op's ``linear``), independently of
    this file's reference.  Fails if the two disagree for any 1x1 case.
    """
    data, _ = case_data
    op, _ = case_op(name)
    x, g = data[name + "/x"], data[name + "/g"]
    for dtype, rtol in (("float32", 1e-5), ("float64", 1e-12)):
        found = kernel_grads(op, tf.constant(x, dtype), tf.zeros(op.kernel_shape, dtype),
                             [tf.constant(g, dtype)])[0]
        assert relative_error(found, tape_grads[name + "/" + dtype]) < rtol, dtype


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_crashing_shape_fits_with_onednn(padding, tmp_path):
    """The shape that crashes oneDNN's conv backprop fits in a subprocess with oneDNN on.

    Before the matmul path the subprocess died (SIGSEGV or "double free or
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


def test_other_kernel_ops_keep_their_gradient_ops():
    """Only 1x1 convolutions leave the tape path, and none of them runs a conv backprop.

    Traces ``kernel_grads`` and lists the graph's op types: a 1x1 conv (and a
    separable conv's pointwise half) has no convolution op at all, a Dense
    layer (also on a rank-3 input) has none either, and a 3x3 conv still
    takes ``Conv2DBackpropFilter``.  Fails if the dispatch is too wide or
    too narrow.
    """
    def op_types(layer: keras.layers.Layer, shape: tuple, which: int = 0) -> set[str]:
        inp = keras.Input(shape)
        graph = canonize(keras.Model(inp, layer(inp)))
        op = graph.kernel_ops[which]
        x_shape = (2,) + tuple(graph.shapes[op.inputs[0]][1:])
        fn = tf.function(lambda x, g: kernel_grads(op, x, tf.zeros(op.kernel_shape), [g]))
        concrete = fn.get_concrete_function(tf.TensorSpec(x_shape),
                                            tf.TensorSpec(output_shape(op, x_shape)))
        return {node.op for node in concrete.graph.as_graph_def().node}

    def has_conv(types: set[str]) -> bool:
        return any("Conv" in t for t in types)

    assert not has_conv(op_types(keras.layers.Conv2D(4, 1, strides=2), (8, 8, 3)))
    assert not has_conv(op_types(keras.layers.SeparableConv2D(4, 3), (8, 8, 3), which=1))
    assert not has_conv(op_types(keras.layers.Dense(4), (5,)))
    assert not has_conv(op_types(keras.layers.Dense(4), (6, 5)))
    assert "Conv2DBackpropFilter" in op_types(keras.layers.Conv2D(4, 3, strides=2), (8, 8, 3))
    assert pointwise_strides(canonize(keras.Sequential([
        keras.Input((8, 8, 4)), keras.layers.Conv2D(4, 1, groups=2)])).kernel_ops[0]) is None
