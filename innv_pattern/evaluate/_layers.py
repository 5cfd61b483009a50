"""The kernel layers :func:`~innv_pattern.evaluate.signal_quality` evaluates.

For each kernel op: which neurons are evaluated, whether a ReLU rectifies its
output (the ``"rectified"`` target), and, per batch, its input samples (a
Dense input, or one convolution patch per output position) with the
per-neuron extras ``e = (y+, y-, m)``.  Dense, Conv1D/2D/3D, transposed
convolutions and both halves of a separable convolution are one
:class:`EvaluatedLayer` each; a depthwise convolution is one per input
channel (its filters read that channel alone: each filter is a neuron with
its own input).  :func:`memory_estimate` says, before any work, what the
covariances will take.

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
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from innv_pattern import kinds
from innv_pattern.canonize import ActivationOp, CanonicalGraph, KernelOp, LayerOp
from innv_pattern.patterns.computer import regime_sources

__all__ = ["EvaluatedLayer", "followed_by_relu", "memory_estimate", "select_layers"]


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
    # A depthwise op's input channel whose filters this is (None: every neuron reads all).
    channel: int | None = None

    @property
    def key(self) -> str:
        """Unique per evaluated layer (a depthwise op's channels share the op's name)."""
        return self.op.name if self.channel is None else f"{self.op.name}#{self.channel}"

    def columns(self, array: Any) -> tf.Tensor:
        """``(D, neurons)``: the evaluated neurons' columns of a kernel-shaped ``array``."""
        a = tf.convert_to_tensor(array)
        layout = self.op.layout
        neurons = self.neurons
        if self.channel is not None:           # this channel's depthwise filters
            a = tf.gather(a, self.channel, axis=layout.in_axis)
            neurons = neurons - self.channel * a.shape[-1]
        else:                                  # the neuron axis last (transposed kernels)
            rank = len(a.shape)
            a = tf.transpose(a, [i for i in range(rank) if i != layout.out_axis]
                             + [layout.out_axis])
        return tf.gather(tf.reshape(a, [self.dim, -1]), neurons, axis=1)

    def kernel_matrix(self) -> tf.Tensor:
        return self.columns(self.op.get_kernel())

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
        out = self.op.linear(*self._patch_operands(x))
        axis = self.op.channel_axis % len(out.shape)
        perm = [i for i in range(len(out.shape)) if i != axis] + [axis]
        return tf.reshape(tf.transpose(out, perm), [tf.shape(x)[0], -1, dim])


    def _patch_operands(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x, E)`` such that ``op.linear(x, E)`` has the patches as channels.

        ``E`` is the identity on the fan-in, laid out as the kernel with the
        neuron axis (size D) where the neurons were; a depthwise channel reads
        its own input channel with a ``(..., 1, D)`` kernel.
        """
        layout = self.op.layout
        shape = list(self.op.kernel_shape)
        eye = tf.eye(self.dim, dtype=x.dtype)
        if self.channel is not None:
            x = tf.gather(x, [self.channel], axis=self.op.channel_axis % len(x.shape))
            return x, tf.reshape(eye, shape[:-2] + [1, self.dim])
        fan_in = [d for i, d in enumerate(shape) if i != layout.out_axis]
        moved = tf.reshape(eye, fan_in + [self.dim])
        perm = list(range(len(shape) - 1))
        perm.insert(layout.out_axis, len(shape) - 1)
        return x, tf.transpose(moved, perm)


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
        if not (isinstance(reader, LayerOp) and reader.kind in (kinds.ROUTING, kinds.MAX)
                and len(reader.inputs) == 1):  # pooling, reshapes, padding, dropout keep signs
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
    bad = [op.name for op in ops if op.layout.groups != 1]
    if bad:
        raise ValueError(f"signal_quality supports Dense, convolutions (1D/2D/3D, transposed, "
                         f"depthwise, separable) but not grouped ones; received {bad}. Pass "
                         "layers=[...] to leave them out.")
    rng = np.random.default_rng(seed)
    sources = regime_sources(graph)
    result = []
    for op in ops:
        layout = op.layout
        total = int(np.prod([op.kernel_shape[a] for a in layout.neuron_axes]))
        neurons = np.arange(total)
        if max_neurons is not None and total > max_neurons:
            neurons = np.sort(rng.choice(total, int(max_neurons), replace=False))
        common = dict(op=op, rectified=target == "rectified" and followed_by_relu(graph, op),
                      gated=sources[op.name] == op.outputs[0])
        if not layout.depthwise:
            dim = int(np.prod(op.kernel_shape)) // total
            result.append(EvaluatedLayer(neurons=neurons, dim=dim, **common))
            continue
        per_channel = int(op.kernel_shape[layout.out_axis])          # depthwise: by channel
        dim = int(np.prod(op.kernel_shape)) // total
        for channel in np.unique(neurons // per_channel):
            chosen = neurons[neurons // per_channel == channel]
            result.append(EvaluatedLayer(neurons=chosen, dim=dim, channel=int(channel),
                                         **common))
    return result


def memory_estimate(layers: Sequence[EvaluatedLayer],
                    estimators: int) -> dict[str, tuple[float, float]]:
    """Bytes ``signal_quality`` needs per op: ``(kept, transient)``.

    Per evaluated layer with input size D and N neurons, ``kept`` for the
    whole run: the float64 co-moments ``cov[x]`` (D^2) and ``cov[x, e]``
    (3 D N); ``transient``, while a batch is summed and the read-out solved:
    a float32 ``x^T x`` on the device, a Cholesky copy and its solve (about
    3 more D^2, and 2 D N per estimator).  The run needs the sum of ``kept``
    plus the largest ``transient``.

    Example:
        >>> import keras
        >>> from innv_pattern.canonize import canonize
        >>> inp = keras.Input((1024,))
        >>> model = keras.Model(inp, keras.layers.Dense(8, name="d")(inp))
        >>> kept, transient = memory_estimate(select_layers(canonize(model), None, None,
        ...                                                 "linear", 0), 4)["d"]
        >>> round(kept / 2**20), round(transient / 2**20)   # MiB
        (8, 20)
    """
    result: dict[str, tuple[float, float]] = {}
    for layer in layers:
        d, n = float(layer.dim), float(len(layer.neurons))
        kept, transient = result.get(layer.op.name, (0.0, 0.0))
        result[layer.op.name] = (kept + 8 * d * d + 24 * d * n,
                                 max(transient, 20 * d * d + 16 * estimators * d * n))
    return result
