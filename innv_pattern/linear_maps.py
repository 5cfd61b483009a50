"""How each Keras kernel layer maps its input: ``linear(x, kernel)`` without the bias.

Canonization (:mod:`innv_pattern.canonize`) gives every kernel layer such a
map, linear in ``x`` and in ``kernel``, so that rules and pattern statistics can
call it with other kernels (patterns, ``w * a``, ``w+``) and differentiate it.
The classes of kernel layers, and the layout of each one's kernel
(:class:`KernelLayout`: which axes index the neurons, which the fan-in), are
declared here, once; canonization attaches both to every kernel op.

Example:
    >>> import keras
    >>> layer = keras.layers.Conv1D(1, 1, strides=2, use_bias=False)
    >>> _ = layer.build((None, 5, 2))
    >>> pointwise_strides(layer)
    (2,)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras
import tensorflow as tf

__all__ = [
    "CONV", "DEPTHWISE", "KERNEL_LAYERS", "KernelLayout", "SEPARABLE", "TRANSPOSE", "causal",
    "channel_axis", "layout_of", "linear_map", "pointwise", "pointwise_strides", "strided",
]

CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
             keras.layers.Conv3DTranspose)
#: Every layer whose linear part canonization turns into kernel ops.
KERNEL_LAYERS = (keras.layers.Dense,) + CONV + DEPTHWISE + SEPARABLE + TRANSPOSE


def channel_axis(layer: Any) -> int:
    """The axis of the layer's output that indexes its neurons (output channels)."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return -(len(layer.kernel_size) + 1) if hasattr(layer, "kernel_size") else -1
    return -1


@dataclasses.dataclass(frozen=True)
class KernelLayout:
    """The roles of a kernel's axes.

    Attributes:
        kernel_shape: Shape of the kernel.
        neuron_axes: Axes indexing the output neurons (non-negative).
        out_axis: The neuron axis that does not index input channels: along
            it every neuron reads the same inputs (ungrouped kernels).
        in_axis: Axis indexing the input channel (within its group).
        groups: Groups of a grouped convolution (or a merge's channels), else 1.
        blocked: The input holds the groups' inputs as blocks (a merge: entry
            ``k * groups + c`` is input ``k``'s channel ``c``), not each group's
            channels together.
        padded: Some patches read padding (or, for a transposed convolution,
            miss kernel taps), so shifting ``x`` needs a correction.

    Example:
        >>> layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
        >>> _ = layer.build((None, 8, 8, 3))
        >>> layout = layout_of(layer, tuple(layer.kernel.shape))
        >>> layout.neuron_axes, layout.x_shape, layout.depthwise
        ((2, 3), (3, 3, 3, 1), True)
    """

    kernel_shape: tuple[int, ...]
    neuron_axes: tuple[int, ...]
    out_axis: int
    in_axis: int
    groups: int = 1
    padded: bool = False
    blocked: bool = False

    @property
    def depthwise(self) -> bool:
        """Each input channel has its own filters (a depthwise kernel ``(..., in, mult)``)."""
        return len(self.neuron_axes) == 2

    @property
    def transposed(self) -> bool:
        """The output channels come before the input channels (``(..., out, in)``)."""
        return self.out_axis < self.in_axis and self.groups == 1

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of the sum of ``x``: size 1 where all neurons read the same."""
        if self.groups > 1:
            return self.kernel_shape
        return tuple(1 if i == self.out_axis else d for i, d in enumerate(self.kernel_shape))

    @property
    def neuron_shape(self) -> tuple[int, ...]:
        """Kernel shape with size 1 on the fan-in axes."""
        return tuple(d if i in self.neuron_axes else 1 for i, d in enumerate(self.kernel_shape))

    @property
    def fan_in_axes(self) -> tuple[int, ...]:
        """Axes summed by ``w^T x``."""
        return tuple(i for i in range(len(self.kernel_shape)) if i not in self.neuron_axes)

    def compact_kernel(self, kernel: tf.Tensor) -> tf.Tensor:
        """One neuron's worth of kernel, enough to sum ``x`` (see ``x_shape``)."""
        if self.groups > 1:
            return kernel
        return tf.slice(kernel, [0] * len(self.kernel_shape), self.x_shape)

    def shift_kernel(self, mean: tf.Tensor) -> tf.Tensor:
        """The input shift per input channel, broadcastable to the kernel."""
        rank = len(self.kernel_shape)
        if self.groups == 1:
            shape = [1] * rank
            shape[self.in_axis] = -1
            return tf.reshape(mean, shape)
        per_group_in, out = self.kernel_shape[-2], self.kernel_shape[-1]
        grouped = (tf.reshape(mean, [per_group_in, self.groups]) if self.blocked
                   else tf.transpose(tf.reshape(mean, [self.groups, per_group_in])))
        spread = tf.repeat(grouped, out // self.groups, axis=1)
        return tf.reshape(spread, [1] * (rank - 2) + [per_group_in, out])

    @classmethod
    def of_dense(cls, shape: tuple[int, ...]) -> "KernelLayout":
        """``(..., in, out)`` read unpadded: Dense, a 1x1 'valid' (pointwise) kernel."""
        rank = len(shape)
        return cls(tuple(shape), (rank - 1,), rank - 1, rank - 2)

    @classmethod
    def of_depthwise(cls, shape: tuple[int, ...], padded: bool) -> "KernelLayout":
        """``(..., in, multiplier)``: every ``(in, m)`` pair is a neuron."""
        rank = len(shape)
        return cls(tuple(shape), (rank - 2, rank - 1), rank - 1, rank - 2, padded=padded)


def layout_of(layer: Any, kernel_shape: tuple[int, ...]) -> KernelLayout:
    """The layout of a Dense, Conv, Depthwise or transposed kernel of ``layer``.

    A separable convolution's halves are a depthwise and a pointwise kernel:
    :meth:`KernelLayout.of_depthwise` and :meth:`KernelLayout.of_dense`.
    """
    shape = tuple(int(d) for d in kernel_shape)
    rank = len(shape)
    padded = getattr(layer, "padding", "valid") != "valid"
    if isinstance(layer, DEPTHWISE):
        return KernelLayout.of_depthwise(shape, padded)
    if isinstance(layer, TRANSPOSE):
        return KernelLayout(shape, (rank - 2,), rank - 2, rank - 1, padded=True)
    if isinstance(layer, keras.layers.Dense):
        return KernelLayout.of_dense(shape)
    groups = int(getattr(layer, "groups", 1))
    return KernelLayout(shape, (rank - 1,), rank - 1, rank - 2, groups=groups, padded=padded)


def linear_map(layer: Any) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """``linear(x, kernel)``: the layer's map without bias, for any kernel of its layout."""
    if isinstance(layer, keras.layers.Dense):
        return lambda x, k: keras.ops.matmul(x, k)
    conv = dict(strides=layer.strides, data_format=layer.data_format,
                dilation_rate=layer.dilation_rate,
                padding="valid" if layer.padding == "causal" else layer.padding)
    if isinstance(layer, DEPTHWISE):
        fn = lambda x, k: keras.ops.depthwise_conv(x, k, **conv)  # noqa: E731
    elif isinstance(layer, TRANSPOSE):
        fn = lambda x, k: keras.ops.conv_transpose(  # noqa: E731
            x, k, output_padding=layer.output_padding, **conv)
    elif layer.groups > 1 and layer.kernel.shape[-2] == 1:
        # One input channel per group: a depthwise convolution, whose gradients
        # TensorFlow computes thousands of times faster on CPU (ConvNeXt).
        fn = lambda x, k: keras.ops.depthwise_conv(  # noqa: E731
            x, tf.reshape(k, tuple(k.shape[:-2]) + (layer.groups, -1)), **conv)
    else:
        fn = lambda x, k: keras.ops.conv(x, k, **conv)  # noqa: E731
    return causal(layer, fn) if layer.padding == "causal" else fn


def pointwise_strides(layer: Any) -> tuple[int, ...] | None:
    """The strides of an ungrouped 1x1 Conv1D/2D/3D, else ``None``.

    Its output position ``i`` reads ``x`` at ``i * s`` alone, whatever the
    padding ('same' and 'causal' pad nothing for a 1x1 kernel) or dilation.
    """
    if (isinstance(layer, CONV) and layer.groups == 1
            and all(int(d) == 1 for d in layer.kernel_size)):
        return tuple(int(s) for s in layer.strides)
    return None


def pointwise(strides: tuple[int, ...],
               data_format: str = "channels_last") -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """``linear`` of a 1x1 convolution: a strided selection, then a matrix product.

    No convolution op runs forward or backward: TensorFlow's oneDNN kernels
    for the gradients of strided 1x1 convolutions corrupt the heap and crash
    the process (TensorFlow 2.21, e.g. input 4x60x60x8, kernel 1x1x8x16,
    stride 2).  The gradients are matrix products (as Dense's) and, through
    :func:`strided`, a slice and a pad.  Channels-first tensors are
    transposed to channels-last and back.

    Example:
        >>> linear = pointwise((2,))
        >>> x = tf.reshape(tf.range(10.0), (1, 5, 2))
        >>> linear(x, tf.constant([[[1.0], [10.0]]]))[0, :, 0].numpy().tolist()
        [10.0, 54.0, 98.0]
    """
    def linear(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        if data_format == "channels_first":
            return keras.ops.moveaxis(linear_last(keras.ops.moveaxis(x, 1, -1), kernel), -1, 1)
        return linear_last(x, kernel)

    def linear_last(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        return keras.ops.matmul(strided(x, strides), tf.reshape(kernel, kernel.shape[-2:]))

    return linear


def strided(x: tf.Tensor, strides: tuple[int, ...]) -> tf.Tensor:
    """``x`` (channels_last) at the positions ``0, s, 2s, ...`` of each spatial axis.

    Padded to whole strides, reshaped to ``(batch * n_0, s_0, n_1, s_1, ...,
    n_k, s_k * channels)`` (rank 6 at most: TensorFlow pads up to rank 6), and
    the first of each ``s`` sliced off: the gradient is a pad and a slice,
    faster on CPU than a gather's or a strided slice's
    (``benchmarks/pointwise_sums.py``).
    """
    if all(s == 1 for s in strides):
        return x
    shape = tf.shape(x)
    out = [-(-shape[i] // s) for i, s in enumerate(strides, start=1)]
    x_padded = tf.pad(x, [[0, 0], *([0, n * s - shape[i]] for i, (n, s)
                                     in enumerate(zip(out, strides), start=1)), [0, 0]])
    split = [shape[0] * out[0]]
    for s, n in zip(strides, out[1:]):
        split += [s, n]
    split.append(strides[-1] * shape[-1])
    sizes = [-1] + [1, -1] * (len(strides) - 1) + [shape[-1]]
    first = tf.slice(tf.reshape(x_padded, tf.stack(split)), [0] * len(split), tf.stack(sizes))
    y = tf.reshape(first, tf.stack([shape[0], *out, shape[-1]]))
    y.set_shape([x.shape[0], *(None if n is None else -(-n // s)
                               for n, s in zip(x.shape[1:-1], strides)), x.shape[-1]])
    return y


def causal(layer: Any, fn: Callable) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """A causal Conv1D: left padding, then the 'valid' convolution ``fn`` (as Keras does)."""
    left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
    pads = [[0, 0]] * 3
    pads[1 if layer.data_format == "channels_last" else 2] = [left, 0]
    return lambda x, k: fn(keras.ops.pad(x, pads), k)
