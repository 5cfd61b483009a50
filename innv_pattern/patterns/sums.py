"""One batch's pattern statistics of one kernel op, in TensorFlow, without patches.

Every sum over samples (batch entries times output positions) of
``patch(x) * g`` is one kernel gradient: ``d/dK sum(linear(x, K) * g)``.  The
statistics of :class:`~innv_pattern.patterns.estimators.PatternStatistics`
need three such sums per batch (``g`` = the positive-regime mask, ``y`` and
``y * mask``), computed together from one kernel stacked three times, plus a
sum of ``x`` that one image's worth of work gives (``x`` summed over the batch
first, which is linear).

Float32 sums of values far from zero lose the small differences that make a
covariance, so everything is summed around a shift: ``x - mean`` (the input
channel means of a first batch) and ``y - w^T mean``.  Where patches read
padding the shifted patch is not ``patch(x - mean)``: padded entries are 0 in
both, so ``patch(x) - m = patch(x - mean) - m * (1 - patch(ones))``; the
correction needs the sums of ``patch(ones) * g``, again kernel gradients, of
a single all-ones image since ``g`` can be summed over the batch first.

Example:
    >>> import keras, numpy as np, tensorflow as tf
    >>> from innv_pattern.canonize import canonize
    >>> from innv_pattern.patterns.layout import layout_of
    >>> inp = keras.Input((3,))
    >>> op = canonize(keras.Model(inp, keras.layers.Dense(2)(inp))).kernel_ops[0]
    >>> x = tf.ones((4, 3))
    >>> y = op.linear(x, op.get_kernel())
    >>> sums = batch_sums(op, layout_of(op), x, y, tf.zeros(3), tf.zeros(2), True)
    >>> float(sums["count"]), sums["sum_x"].shape.as_list()
    (4.0, [3, 1])
"""

from __future__ import annotations

import tensorflow as tf

from innv_pattern.canonize import KernelOp
from innv_pattern.patterns.layout import KernelLayout

__all__ = ["batch_sums", "channel_sums", "kernel_grads", "widen"]


def kernel_grads(op: KernelOp, layout: KernelLayout, x: tf.Tensor, kernel: tf.Tensor,
                 gs: list[tf.Tensor]) -> list[tf.Tensor]:
    """``[d/dK sum(linear(x, K) * g) for g in gs]``, from one stacked gradient."""
    stacked = layout.stack_kernel(kernel, len(gs))
    with tf.GradientTape() as tape:
        tape.watch(stacked)
        out = op.linear(x, stacked)
    g = layout.stack_channels(gs, op.channel_axis) if len(gs) > 1 else gs[0]
    grad = tape.gradient(out, stacked, output_gradients=g)
    return layout.unstack_kernel(grad, len(gs)) if len(gs) > 1 else [grad]


def channel_sums(t: tf.Tensor, channel_axis: int) -> tf.Tensor:
    """Sums of ``t`` over every axis but ``channel_axis``: one per channel."""
    rank = len(t.shape)
    return tf.reduce_sum(t, axis=[i for i in range(rank) if i != channel_axis % rank])


def _per_channel(v: tf.Tensor, channel_axis: int, rank: int) -> tf.Tensor:
    shape = [1] * rank
    shape[channel_axis % rank] = -1
    return tf.reshape(v, shape)


def batch_sums(op: KernelOp, layout: KernelLayout, x: tf.Tensor, y: tf.Tensor,
               mean: tf.Tensor, y_shift: tf.Tensor, regimes: bool,
               bias: tf.Tensor | None = None, kernel: tf.Tensor | None = None
               ) -> dict[str, tf.Tensor]:
    """Sums of one batch around the shift, named as the estimator's arrays.

    Args:
        op: The kernel op.
        layout: ``layout_of(op)``.
        x: The op's input batch.
        y: ``op.linear(x, kernel)``, the output without bias.
        mean: Input shift, one value per input channel.
        y_shift: Output shift, one value per output channel (``w^T m``).
        regimes: Also compute the positive-regime sums.
        bias: The op's bias; the regime is ``y + bias > 0``.
        kernel: The op's kernel (default ``op.get_kernel()``).

    Returns:
        float32 tensors (``count`` float64): per-neuron sums shaped
        ``layout.neuron_shape``, ``sum_x`` shaped ``layout.x_shape``, the
        others kernel-shaped.  With regimes, each regime's ``y`` and ``x y``
        sums come apart (``*_pos``, ``*_neg``; see :func:`widen`).
    """
    kernel = op.get_kernel() if kernel is None else kernel
    axis = op.channel_axis
    xs = x - _per_channel(mean, axis, len(x.shape))
    ys = y - _per_channel(y_shift, axis, len(y.shape))
    channels = tf.shape(y)[axis % len(y.shape)]
    count = tf.cast(tf.size(y, out_type=tf.int64), tf.float64) / tf.cast(channels, tf.float64)
    names, gs, neuron_names = ["sum_xy"], [ys], ["sum_y"]
    if regimes:
        pre = y if bias is None else y + op.broadcast_bias(bias)
        mask = tf.cast(pre > 0, y.dtype)
        names = ["sum_x_pos", "sum_xy_pos", "sum_xy_neg"]
        gs = [mask, ys * mask, ys - ys * mask]
        neuron_names = ["count_pos", "sum_y_pos", "sum_y_neg"]
    sums = dict(zip(names, kernel_grads(op, layout, xs, kernel, gs)))
    for name, g in zip(neuron_names, gs):
        sums[name] = tf.reshape(channel_sums(g, axis), layout.neuron_shape)
    compact = layout.compact_kernel(kernel)
    x_total = tf.reduce_sum(xs, axis=0, keepdims=True)
    sums["sum_x"] = kernel_grads(op, layout, x_total, compact, [_ones_out(op, x_total, compact)])[0]
    if layout.padded:
        _correct_padding(op, layout, sums, x, kernel, mean, dict(zip(names, gs)), count)
    sums["count"] = count
    return sums


def _ones_out(op: KernelOp, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    return tf.ones_like(op.linear(x, kernel))


def _correct_padding(op: KernelOp, layout: KernelLayout, sums: dict[str, tf.Tensor],
                     x: tf.Tensor, kernel: tf.Tensor, mean: tf.Tensor,
                     gs: dict[str, tf.Tensor], count: tf.Tensor) -> None:
    """Adds ``m * sum(g * (patch(ones) - 1))`` to each kernel-gradient sum."""
    ones = tf.ones_like(x[:1])
    m = layout.shift_kernel(mean)
    names = list(gs)
    totals = [tf.reduce_sum(gs[n], axis=0, keepdims=True) for n in names]
    with_ones = kernel_grads(op, layout, ones, kernel, totals)
    for name, total, a in zip(names, totals, with_ones):
        g_sum = tf.reshape(channel_sums(total, op.channel_axis), layout.neuron_shape)
        sums[name] += m * (a - g_sum)
    compact = layout.compact_kernel(kernel)
    batch = tf.cast(tf.shape(x)[0], x.dtype)
    ones_sum = kernel_grads(op, layout, ones, compact, [_ones_out(op, ones, compact)])[0]
    sums["sum_x"] += m * (batch * ones_sum - tf.cast(count, x.dtype))


def widen(sums: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """float64 sums named as the estimator's arrays.

    Totals over both regimes are added in float64 from the regimes' float32
    sums: a total taken in float32 would carry a rounding error as large as
    the whole negative-regime sum when that regime is rare.
    """
    wide = {k: tf.cast(v, tf.float64) for k, v in sums.items()}
    for name in ("sum_xy", "sum_y"):
        if name + "_neg" in wide:
            wide[name] = wide[name + "_pos"] + wide.pop(name + "_neg")
    return wide
