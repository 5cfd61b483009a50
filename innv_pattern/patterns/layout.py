"""How a kernel op's kernel is laid out: neurons, fan-in, groups, padding.

The pattern computer gets every statistic as a kernel gradient (the sum over
positions of ``patch(x) * g`` is the gradient of ``sum(linear(x, K) * g)``
with respect to ``K``).  :class:`KernelLayout` says, per kind of kernel
layer, which axes index the neurons, which axis only the outputs (all
neurons read the same inputs along the others), and where the shift of each
input channel goes in the kernel.

Example:
    >>> import keras
    >>> from innv_pattern.canonize import canonize
    >>> inp = keras.Input((8, 8, 3))
    >>> model = keras.Model(inp, keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(inp))
    >>> layout = layout_of(canonize(model).kernel_ops[0])
    >>> layout.neuron_axes, layout.x_shape
    ((2, 3), (3, 3, 3, 1))
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from innv_pattern.canonize import KernelOp

__all__ = ["KernelLayout", "layout_of"]

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_MERGES = (keras.layers.Add, keras.layers.Subtract, keras.layers.Average)
_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
              keras.layers.Conv3DTranspose)


@dataclasses.dataclass(frozen=True)
class KernelLayout:
    """The roles of a kernel's axes.

    Attributes:
        kernel_shape: Shape of the kernel.
        neuron_axes: Axes indexing the output neurons (non-negative).
        out_axis: The neuron axis that does not index input channels: along
            it every neuron reads the same inputs (ungrouped kernels).
        in_axis: Axis indexing the input channel (within its group).
        groups: Groups of a grouped convolution, else 1.
        padded: Some patches read padding (or, for a transposed convolution,
            miss kernel taps), so shifting ``x`` needs a correction.
    """

    kernel_shape: tuple[int, ...]
    neuron_axes: tuple[int, ...]
    out_axis: int
    in_axis: int
    groups: int = 1
    padded: bool = False

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
        grouped = tf.transpose(tf.reshape(mean, [self.groups, per_group_in]))
        spread = tf.repeat(grouped, out // self.groups, axis=1)
        return tf.reshape(spread, [1] * (rank - 2) + [per_group_in, out])


def layout_of(op: KernelOp) -> KernelLayout:
    """The layout of ``op``'s kernel (Dense, Conv, Depthwise, Separable, Transpose)."""
    shape = tuple(int(d) for d in op.kernel_shape)
    rank, layer = len(shape), op.layer
    padded = getattr(layer, "padding", "valid") != "valid"
    if isinstance(layer, keras.layers.Dense):
        return KernelLayout(shape, (rank - 1,), rank - 1, rank - 2)
    if isinstance(layer, _MERGES):  # (inputs, channels): channel c reads entry c of each input
        return KernelLayout(shape, (1,), 1, 0, groups=shape[1])
    if isinstance(layer, _DEPTHWISE) or op.name.endswith("/depthwise"):
        return KernelLayout(shape, (rank - 2, rank - 1), rank - 1, rank - 2, padded=padded)
    if isinstance(layer, _TRANSPOSE):
        return KernelLayout(shape, (rank - 2,), rank - 2, rank - 1, padded=True)
    if op.name.endswith("/pointwise"):  # a separable convolution's 1x1 'valid' half
        return KernelLayout(shape, (rank - 1,), rank - 1, rank - 2)
    groups = int(getattr(layer, "groups", 1))
    return KernelLayout(shape, (rank - 1,), rank - 1, rank - 2, groups=groups, padded=padded)
