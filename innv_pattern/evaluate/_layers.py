"""The kernel layers :func:`~innv_pattern.evaluate.signal_quality` evaluates.

For each kernel op: which neurons are evaluated, whether a ReLU rectifies its
output (the ``"rectified"`` target), and, per batch, its input samples (a
Dense input, or one convolution patch per output position) with the
per-neuron extras ``e = (y+, y-, m)``.

Example:
    >>> import keras
    >>> from innv_pattern.canonize import canonize
    >>> inp = keras.Input((4,))
    >>> model = keras.Model(inp, keras.layers.Dense(2, activation="relu", name="h")(inp))
    >>> [(layer.op.name, layer.dim, layer.rectified)
    ...  for layer in select_layers(canonize(model), None, None, "rectified", 0)]
    [('h', 4, True)]
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from innv_pattern.canonize import ActivationOp, CanonicalGraph, KernelOp
from innv_pattern.patterns.computer import regime_sources

__all__ = ["EvaluatedLayer", "followed_by_relu", "select_layers"]

_SUPPORTED = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_UNSUPPORTED = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
                keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
                keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                keras.layers.Conv3DTranspose)
_SIGN_KEEPING = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
                 keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
                 keras.layers.Identity, keras.layers.ZeroPadding2D)


@dataclasses.dataclass
class EvaluatedLayer:
    """One evaluated kernel op: its neurons, how to get its inputs, its target."""

    op: KernelOp
    neurons: np.ndarray
    rectified: bool
    dim: int
    # A rectifier gates the op's own output: the two-component estimator's regimes are the
    # sign of y + b, as samples() splits them (an op gated through an Add has other regimes).
    gated: bool = True

    def kernel_matrix(self) -> tf.Tensor:
        k = tf.reshape(self.op.get_kernel(), [self.dim, -1])
        return tf.gather(k, self.neurons, axis=1)

    def bias(self) -> tf.Tensor:
        b = self.op.get_bias()
        n = len(self.neurons)
        return tf.zeros([n]) if b is None else tf.gather(tf.reshape(b, [-1]), self.neurons)

    def target(self) -> np.ndarray:
        """``(N, 3)`` coefficients of ``t`` on ``e = (y+, y-, m)``."""
        b = self.bias().numpy().astype(np.float64)
        if self.rectified:                     # relu(y + b) = y+ + b m
            return np.stack([np.ones_like(b), np.zeros_like(b), b], -1)
        return np.tile([1.0, 1.0, 0.0], (len(b), 1))

    def samples(self, x: tf.Tensor, max_positions: int | None,
                seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Inputs ``(m, D)`` and extras ``e = (y+, y-, m)`` ``(m, N, 3)`` of a batch."""
        patches = self.patches(x)
        positions = patches.shape[1]
        if max_positions is not None and positions > max_positions:
            noise = tf.random.stateless_uniform([positions], seed=seed)
            patches = tf.gather(patches, tf.argsort(noise)[:max_positions], axis=1)
        flat = tf.reshape(patches, [-1, self.dim])
        y = tf.matmul(flat, self.kernel_matrix())
        mask = tf.cast(y + self.bias() > 0, y.dtype)
        return flat, tf.stack([y * mask, y * (1.0 - mask), mask], axis=-1)

    def patches(self, x: tf.Tensor) -> tf.Tensor:
        """The op's inputs as ``(batch, positions, D)``: one row per output position."""
        layer, dim = self.op.layer, self.dim
        if isinstance(layer, keras.layers.Dense):
            return tf.reshape(x, [tf.shape(x)[0], -1, dim])
        if (isinstance(layer, keras.layers.Conv2D) and layer.data_format == "channels_last"
                and layer.padding in ("same", "valid")):
            kh, kw = layer.kernel_size
            p = tf.image.extract_patches(
                x, [1, kh, kw, 1], [1, *layer.strides, 1], [1, *layer.dilation_rate, 1],
                layer.padding.upper())
            return tf.reshape(p, [tf.shape(x)[0], -1, dim])
        eye = tf.reshape(tf.eye(dim, dtype=x.dtype), tuple(self.op.kernel_shape[:-1]) + (dim,))
        out = self.op.linear(x, eye)
        axis = self.op.channel_axis % len(out.shape)
        perm = [i for i in range(len(out.shape)) if i != axis] + [axis]
        return tf.reshape(tf.transpose(out, perm), [tf.shape(x)[0], -1, dim])


def followed_by_relu(graph: CanonicalGraph, op: KernelOp) -> bool:
    """Whether a ReLU rectifies ``op``'s output (through max-pooling or reshapes)."""
    key = op.outputs[0]
    while True:
        readers = [o for o in graph.ops if key in o.inputs]
        if len(readers) != 1 or key in graph.outputs:
            return False
        reader = readers[0]
        if isinstance(reader, ActivationOp):
            return reader.activation == "relu"
        if not isinstance(reader.layer, _SIGN_KEEPING):
            return False
        key = reader.outputs[0]


def select_layers(graph: CanonicalGraph, layers: Sequence[str] | None, max_neurons: int | None,
                   target: str, seed: int) -> list[EvaluatedLayer]:
    ops = graph.kernel_ops
    names = [op.name for op in ops]
    if layers is not None:
        missing = [n for n in layers if n not in names]
        if missing:
            raise ValueError(f"Unknown layer(s) {missing}; the model's kernel layers are {names}.")
        ops = [op for op in ops if op.name in layers]
    bad = [op.name for op in ops if isinstance(op.layer, _UNSUPPORTED)
           or not isinstance(op.layer, _SUPPORTED) or getattr(op.layer, "groups", 1) != 1]
    if bad:
        raise ValueError(f"signal_quality supports Dense and Conv1D/2D/3D layers (groups=1); "
                         f"received {bad}. Pass layers=[...] to leave them out.")
    rng = np.random.default_rng(seed)
    sources = regime_sources(graph)
    result = []
    for op in ops:
        total = int(op.kernel_shape[-1])
        neurons = np.arange(total)
        if max_neurons is not None and total > max_neurons:
            neurons = np.sort(rng.choice(total, int(max_neurons), replace=False))
        rectified = target == "rectified" and followed_by_relu(graph, op)
        result.append(EvaluatedLayer(op, neurons, rectified, int(np.prod(op.kernel_shape[:-1])),
                                     sources[op.name] == op.outputs[0]))
    return result
