"""Pattern statistics of one kernel op in TensorFlow, without patches.

Every sum over samples (batch entries times output positions) of
``patch(x) * g`` is one kernel gradient: ``d/dK sum(linear(x, K) * g)``.  The
statistics of :class:`~innv_pattern.patterns.estimators.PatternStatistics`
need three such sums per batch (``g`` = the positive-regime mask, and ``y``
in each regime); that is all the per-batch work besides the forward pass and
a few element-wise sums (:func:`batch_sums`).

Float32 sums of values far from zero lose the small differences that make a
covariance, so everything is summed around a shift: ``x - mean`` (the input
channel means of a first batch) and ``y - w^T m`` (``m``: ``mean`` laid out
like the kernel).  Where patches read padding the shifted patch is not
``patch(x - mean)``: padded entries are 0 in both, so
``patch(x) - m = patch(x - mean) - m * (1 - patch(ones))``.  That correction,
the per-neuron sums and the sum of ``x`` are all linear in sums of ``g`` and
``x - mean`` over the batch, so the batches only accumulate those (one image
each) and :func:`finish` turns them into the estimator's arrays once, in
float64: a few kernel gradients of a single image.

Example:
    >>> import keras, numpy as np, tensorflow as tf
    >>> from innv_pattern.canonize import canonize
    >>> inp = keras.Input((3,))
    >>> op = canonize(keras.Model(inp, keras.layers.Dense(2)(inp))).kernel_ops[0]
    >>> x, kernel = tf.ones((4, 3)), op.get_kernel()
    >>> y = op.linear(x, kernel)
    >>> sums = batch_sums(op, op.layout, x, y, y > 0, tf.zeros(3), tf.zeros(2), True, kernel)
    >>> sums = {k: v.numpy().astype("float64") for k, v in sums.items()}
    >>> found = finish(op, op.layout, sums, tf.zeros(3))
    >>> float(found["count"]), found["sum_x"].shape
    (4.0, (3, 1))
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from innv_pattern.canonize import KernelOp
from innv_pattern.patterns.estimators import POSITIVE
from innv_pattern.linear_maps import KernelLayout

__all__ = ["batch_sums", "channel_sums", "finish", "kernel_grads"]

#: The per-neuron sum of each output gradient ``g``: sum of ``g`` over samples.
_NEURON_SUM = {"sum_xy": "sum_y", "sum_x_pos": "count_pos", "sum_xy_pos": "sum_y_pos",
               "sum_xy_neg": "sum_y_neg"}
_TOTAL = "total:"


def kernel_grads(op: KernelOp, x: tf.Tensor, kernel: tf.Tensor,
                 gs: list[tf.Tensor]) -> list[tf.Tensor]:
    """``[d/dK sum(linear(x, K) * g) for g in gs]``: sums over positions of ``patch(x) * g``.

    ``kernel`` gives the gradients' shape (it may have fewer output channels
    than ``op``'s kernel, like ``g``); its values do not matter.  Only the
    kernel gradients run: in a ``tf.function`` the forward ``linear`` each
    tape records is unused and pruned.  A 1x1 convolution's ``linear`` is a
    matrix product (:mod:`innv_pattern.canonize`), so its gradient is one too.
    (Stacking the ``g`` along the channel axis to share one gradient was
    measured slower on CPU: 3.0 to 4.7 times one gradient instead of 3.0,
    plus the copies to split it.)
    """
    grads = []
    for g in gs:
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            out = op.linear(x, kernel)
        grads.append(tape.gradient(out, kernel, output_gradients=g))
    return grads


def channel_sums(t: tf.Tensor, channel_axis: int) -> tf.Tensor:
    """Sums of ``t`` over every axis but ``channel_axis``: one per channel."""
    rank = len(t.shape)
    return tf.reduce_sum(t, axis=[i for i in range(rank) if i != channel_axis % rank])


def _per_channel(v: tf.Tensor, channel_axis: int, rank: int) -> tf.Tensor:
    shape = [1] * rank
    shape[channel_axis % rank] = -1
    return tf.reshape(v, shape)


def batch_sums(op: KernelOp, layout: KernelLayout, x: tf.Tensor, y: tf.Tensor,
               pos: tf.Tensor, mean: tf.Tensor, y_shift: tf.Tensor, regimes: bool | str,
               kernel: tf.Tensor) -> dict[str, tf.Tensor]:
    """One batch's sums around the shift, to be added up over batches.

    Args:
        op: The kernel op.
        layout: ``op.layout``.
        x: The op's input batch.
        y: ``op.linear(x, kernel)``, the output without bias.
        pos: The positive regime (bool, like ``y``).
        mean: Input shift, one value per input channel.
        y_shift: Output shift, one value per output channel (``w^T m``).
        regimes: Also compute the positive-regime sums; ``"positive"``:
            those instead of the all-sample ``x y`` (its total is still given).
        kernel: The op's kernel.

    Returns:
        Kernel gradients (float32, kernel-shaped) named as the estimator's
        arrays, each regime's ``x y`` apart (``sum_xy_pos``, ``sum_xy_neg``);
        for each, ``total:<name>``, its ``g`` summed over the batch (one
        output image, or one value per channel where no patch reads padding);
        ``x_total``, ``x - mean`` summed over the batch; and float64
        ``count`` (samples: batch times positions) and ``images``.
    """
    axis = op.channel_axis
    xs = x - _per_channel(mean, axis, len(x.shape))
    ys = y - _per_channel(y_shift, axis, len(y.shape))
    if regimes:
        positive = tf.where(pos, ys, tf.zeros_like(ys))
        gs = {"sum_x_pos": tf.cast(pos, ys.dtype), "sum_xy_pos": positive}
        if regimes != POSITIVE:
            gs["sum_xy_neg"] = ys - positive
    else:
        gs = {"sum_xy": ys}
    sums = dict(zip(gs, kernel_grads(op, xs, kernel, list(gs.values()))))
    if regimes == POSITIVE:  # the all-sample sum of y, without a kernel gradient
        gs["sum_xy"] = ys
    for name, g in gs.items():
        sums[_TOTAL + name] = (tf.reduce_sum(g, axis=0, keepdims=True) if layout.padded
                               else channel_sums(g, axis))
    sums["x_total"] = tf.reduce_sum(xs, axis=0, keepdims=True)
    channels = tf.cast(tf.shape(y)[axis % len(y.shape)], tf.float64)
    sums["count"] = tf.cast(tf.size(y, out_type=tf.int64), tf.float64) / channels
    sums["images"] = tf.cast(tf.shape(x)[0], tf.float64)
    return sums


def finish(op: KernelOp, layout: KernelLayout, sums: dict[str, np.ndarray],
           mean: tf.Tensor) -> dict[str, np.ndarray]:
    """The estimator's arrays (float64, still around the shift) from summed batch sums.

    The kernel-sized arrays of ``sums`` are reused (modified in place); the
    rest is a few single-image kernel gradients, in float64 on the CPU.

    Args:
        op: The kernel op.
        layout: ``op.layout``.
        sums: :func:`batch_sums` added up over batches, as float64 arrays.
        mean: The input shift the batches used.
    """
    names = [n for n in _NEURON_SUM if n in sums]
    small = {k: v for k, v in sums.items() if k not in names}
    with tf.device("/cpu:0"):
        extra = {k: v.numpy() for k, v in _single_image_sums(op, layout, small, names,
                                                             mean).items()}
    found = {k: v for k, v in extra.items() if not k.startswith(_TOTAL)}
    for name in names:
        found[name] = sums[name]
        if _TOTAL + name in extra:  # padding correction
            found[name] += extra[_TOTAL + name]
    if "sum_xy_neg" in found:  # totals of both regimes, added in float64
        found["sum_xy"] = np.add(found.pop("sum_xy_neg"), found["sum_xy_pos"],
                                 out=sums["sum_xy_neg"])
        found["sum_y"] = found["sum_y_pos"] + found.pop("sum_y_neg")
    found["count"] = sums["count"]
    return found


def _single_image_sums(op: KernelOp, layout: KernelLayout, s: dict[str, np.ndarray],
                       names: list[str], mean: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per-neuron sums, the sum of ``x``, and padding corrections (as ``total:<name>``)."""
    s = {k: tf.constant(v, tf.float64) for k, v in s.items()}
    found = {_NEURON_SUM[n]: tf.reshape(channel_sums(s[k], op.channel_axis), layout.neuron_shape)
             for n in _NEURON_SUM if (k := _TOTAL + n) in s}
    compact = layout.compact_kernel(tf.zeros(layout.kernel_shape, tf.float64))
    found["sum_x"] = kernel_grads(op, s["x_total"], compact, [_ones_out(op, s["x_total"],
                                                                        compact)])[0]
    if layout.padded:
        found.update(_padding_corrections(op, layout, s, found, names, mean))
    return found


def _ones_out(op: KernelOp, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    return tf.ones_like(op.linear(x, kernel))


def _padding_corrections(op: KernelOp, layout: KernelLayout, s: dict[str, tf.Tensor],
                         found: dict[str, tf.Tensor], names: list[str],
                         mean: tf.Tensor) -> dict[str, tf.Tensor]:
    """``m * sum(g * (patch(ones) - 1))`` for each kernel-gradient sum (adds ``sum_x``'s)."""
    m = layout.shift_kernel(tf.cast(mean, tf.float64))
    ones = tf.ones_like(s["x_total"])
    kernel = tf.zeros(layout.kernel_shape, tf.float64)  # gradients need its shape only
    with_ones = kernel_grads(op, ones, kernel, [s[_TOTAL + n] for n in names])
    compact = layout.compact_kernel(kernel)
    ones_sum = kernel_grads(op, ones, compact, [_ones_out(op, ones, compact)])[0]
    found["sum_x"] += m * (s["images"] * ones_sum - s["count"])
    return {_TOTAL + n: m * (a - found[_NEURON_SUM[n]]) for n, a in zip(names, with_ones)}
