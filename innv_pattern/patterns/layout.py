"""How a kernel op's kernel is laid out: neurons, fan-in, groups, padding.

The pattern computer gets every statistic as a kernel gradient (the sum over
positions of ``patch(x) * g`` is the gradient of ``sum(linear(x, K) * g)``
with respect to ``K``) and stacks several ``g`` so that one gradient
computation serves them all.  :class:`KernelLayout` knows, per kind of kernel
layer, along which axis copies of the kernel can be stacked and how the
output channels are then interleaved.

Example:
    >>> import keras
    >>> from innv_pattern.canonize import canonize
    >>> inp = keras.Input((8, 8, 3))
    >>> model = keras.Model(inp, keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(inp))
    >>> layout = layout_of(canonize(model).kernel_ops[0])
    >>> layout.neuron_axes, layout.channel_groups, layout.x_shape
    ((2, 3), 3, (3, 3, 3, 1))
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from innv_pattern.canonize import KernelOp

__all__ = ["KernelLayout", "layout_of"]

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
              keras.layers.Conv3DTranspose)


@dataclasses.dataclass(frozen=True)
class KernelLayout:
    """The roles of a kernel's axes.

    Attributes:
        kernel_shape: Shape of the kernel.
        neuron_axes: Axes indexing the output neurons (non-negative).
        stack_axis: Axis along which copies of the kernel are concatenated
            (the output axis; within each group for grouped convolutions).
        in_axis: Axis indexing the input channel (within its group).
        groups: Groups of a grouped convolution, else 1.
        channel_groups: Groups of the output channels once stacked: the
            convolution's groups, the input channels of a depthwise kernel
            (each has its own multipliers), else 1.
        padded: Some patches read padding (or, for a transposed convolution,
            miss kernel taps), so shifting ``x`` needs a correction.
    """

    kernel_shape: tuple[int, ...]
    neuron_axes: tuple[int, ...]
    stack_axis: int
    in_axis: int
    groups: int = 1
    channel_groups: int = 1
    padded: bool = False

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of the sum of ``x``: size 1 where all neurons read the same."""
        if self.groups > 1:
            return self.kernel_shape
        return tuple(1 if i == self.stack_axis else d for i, d in enumerate(self.kernel_shape))

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
        begin = [0] * len(self.kernel_shape)
        return tf.slice(kernel, begin, self.x_shape)

    def stack_kernel(self, kernel: tf.Tensor, copies: int) -> tf.Tensor:
        """``copies`` copies of ``kernel`` as one kernel with more outputs."""
        if self.groups == 1:
            return tf.concat([kernel] * copies, axis=self.stack_axis)
        shape = list(self.kernel_shape)
        grouped = tf.reshape(kernel, shape[:-1] + [self.groups, shape[-1] // self.groups])
        stacked = tf.concat([grouped] * copies, axis=-1)
        return tf.reshape(stacked, shape[:-1] + [shape[-1] * copies])

    def unstack_kernel(self, stacked: tf.Tensor, copies: int) -> list[tf.Tensor]:
        """Inverse of :meth:`stack_kernel`."""
        if self.groups == 1:
            return tf.split(stacked, copies, axis=self.stack_axis)
        shape = list(self.kernel_shape)
        grouped = tf.reshape(stacked, shape[:-1] + [self.groups, -1])
        return [tf.reshape(part, shape) for part in tf.split(grouped, copies, axis=-1)]

    def stack_channels(self, gs: list[tf.Tensor], channel_axis: int) -> tf.Tensor:
        """Output gradients ``gs`` interleaved as the stacked kernel's outputs."""
        rank = len(gs[0].shape)
        axis = channel_axis % rank
        perm = [i for i in range(rank) if i != axis] + [axis]
        last = [tf.transpose(g, perm) if axis != rank - 1 else g for g in gs]
        lead = tf.shape(last[0])[:-1]
        grouped = [tf.reshape(g, tf.concat([lead, [self.channel_groups, -1]], 0)) for g in last]
        stacked = tf.reshape(tf.concat(grouped, axis=-1), tf.concat([lead, [-1]], 0))
        if axis == rank - 1:
            return stacked
        return tf.transpose(stacked, [perm.index(i) for i in range(rank)])

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
    if isinstance(layer, _DEPTHWISE) or op.name.endswith("/depthwise"):
        return KernelLayout(shape, (rank - 2, rank - 1), rank - 1, rank - 2,
                            channel_groups=shape[-2], padded=padded)
    if isinstance(layer, _TRANSPOSE):
        return KernelLayout(shape, (rank - 2,), rank - 2, rank - 1, padded=True)
    if op.name.endswith("/pointwise"):  # a separable convolution's 1x1 'valid' half
        return KernelLayout(shape, (rank - 1,), rank - 1, rank - 2)
    groups = int(getattr(layer, "groups", 1))
    return KernelLayout(shape, (rank - 1,), rank - 1, rank - 2, groups=groups,
                        channel_groups=groups, padded=padded)
