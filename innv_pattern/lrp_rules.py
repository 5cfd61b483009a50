"""The LRP and Deep Taylor rules of a kernel layer beyond the z-rule.

Each rule back-propagates relevance through a kernel operation ``y = W x + b``
as one or more *groups*; a group is a sum of terms ``W_t v_t`` (a kernel
``W_t`` derived from ``W`` applied to an input ``v_t`` derived from ``x``) with
the denominator ``z = sum_t W_t v_t`` (plus the bias where the rule counts
it).  The relevance ``R`` arriving at ``y`` gives each input

    ``R_x = sum_groups weight * sum_t v_t * W_t^T (R / z)``,

zero where a denominator is exactly zero.  The forward pass is the operation's
own, so these rules, like :class:`innv_pattern.rules.ZRule`, cost one forward
and, per term, one transposed linear map.

=====================  ==========================================================
rule                   groups (``x+ = max(x, 0)``, ``W+ = max(W, 0)``, ...)
=====================  ==========================================================
``AlphaBetaRule``      ``alpha: x+ W+ + x- W-``; ``-beta: x+ W- + x- W+``
``ZPlusFastRule``      ``x W+`` (assumes ``x >= 0``)
``WSquareRule``        ``1 W**2`` (the input does not matter)
``FlatRule``           ``1 1`` (every weight one)
``BoundedRule``        ``(x - low) W+ + (x - high) W-`` (z-box, Deep Taylor's z^B)
=====================  ==========================================================

Every term of a group has one sign (``x+ W+ >= 0``, ``(x - low) W+ >= 0``, ...),
so a denominator is exactly zero only where all its terms are, and then
nothing is lost by passing nothing back.  (The z-box rule written as
``x W - low W+ - high W-``, as iNNvestigate computes it, is the same sum; in
float32 it leaves round-off where an input sits at its bounds, which a
near-zero denominator then amplifies.)

iNNvestigate 2.1.2's semantics, which the conformance tests pin: the
alpha-beta rule with ``bias=True`` adds the whole bias ``b = b+ + b-`` to both
denominators (its positive layer keeps ``b+``, its negative one ``b-``, and it
sums the two); ``v_t = 1`` is a tensor of ones shaped like ``x``, so at a
padded convolution's border the flat and w-square denominators count only the
weights that touch the input.  Where a denominator is exactly zero
iNNvestigate divides by ``1e-7`` instead; every term of such a denominator is
then zero and so is what it passes back, except where a bias alone makes the
denominator: there this module passes nothing and iNNvestigate a bias share.
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from innv_pattern.canonize import KernelOp, Op
from innv_pattern.rules import Rule, _forward_fn, _vjp, _with_backward

__all__ = ["AlphaBetaRule", "BoundedRule", "FlatRule", "TermsRule", "WSquareRule",
           "ZPlusFastRule"]

#: ``[(weight, [(v, W_t), ...], with_bias), ...]``
Groups = list[tuple[float, list[tuple[tf.Tensor, tf.Tensor]], bool]]


class TermsRule(Rule):
    """A kernel op's rule given by :meth:`groups` (see the module docstring)."""

    def __init__(self, op: Op, options: Mapping[str, Any]) -> None:
        if not isinstance(op, KernelOp):
            raise TypeError(f"{type(self).__name__} applies to kernel layers (Dense, "
                            f"convolutions); received '{op.name}'.")
        super().__init__(op, options)

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        raise NotImplementedError

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        op: KernelOp = self.op
        kernel = op.get_kernel()
        bias = op.get_bias()
        bias = None if bias is None else op.broadcast_bias(bias)

        def backward(xs: tuple, y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
            total = None
            for weight, terms, with_bias in self.groups(xs[0], kernel):
                z = _sum(op.linear(v, w) for v, w in terms)
                s = tf.math.divide_no_nan(g, z + bias if with_bias and bias is not None else z)
                part = _sum(v * _vjp(lambda u, w=w: op.linear(u, w), [v], s)[0]
                            for v, w in terms)
                total = weight * part if total is None else total + weight * part
            return [total]

        return [_with_backward(_forward_fn(op, lambda v: op.linear(v, kernel)), backward, xs)]


class AlphaBetaRule(TermsRule):
    """LRP-alpha-beta: positive and negative contributions apart (Bach et al., 2015).

    Settings: ``alpha``, ``beta`` (iNNvestigate requires ``alpha - beta = 1``;
    the composite constructors check it) and ``bias`` (count the bias in the
    denominators, default True). ``alpha=1, beta=0, bias=False`` is LRP-z+
    (Deep Taylor's z+ rule) for inputs of any sign.
    """

    setting_names = ("alpha", "beta", "bias")
    proportional = True

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        alpha = float(self.settings.get("alpha", 1.0))
        beta = float(self.settings.get("beta", 0.0))
        bias = bool(self.settings.get("bias", True))
        xp, xn = tf.nn.relu(x), tf.minimum(x, 0.0)
        wp, wn = tf.nn.relu(kernel), tf.minimum(kernel, 0.0)
        found = [(alpha, [(xp, wp), (xn, wn)], bias)]
        if beta:
            found.append((-beta, [(xp, wn), (xn, wp)], bias))
        return found


class ZPlusFastRule(TermsRule):
    """LRP-z+ for non-negative inputs: ``x W+`` without bias (iNNvestigate's ``ZPlusFast``)."""

    proportional = True

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        return [(1.0, [(x, tf.nn.relu(kernel))], False)]


class WSquareRule(TermsRule):
    """Deep Taylor's w**2 rule: relevance in proportion to the squared weights."""

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        return [(1.0, [(tf.ones_like(x), tf.square(kernel))], False)]


class FlatRule(TermsRule):
    """LRP-flat: relevance spread evenly over each output's receptive field."""

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        return [(1.0, [(tf.ones_like(x), tf.ones_like(kernel))], False)]


class BoundedRule(TermsRule):
    """Deep Taylor's z^B (z-box) rule for inputs in ``[low, high]`` (Montavon et al., 2017).

    Settings: ``low`` and ``high``, scalars or arrays broadcastable to the input.
    """

    setting_names = ("low", "high")

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        low = tf.cast(self.settings.get("low", -1.0), x.dtype)
        high = tf.cast(self.settings.get("high", 1.0), x.dtype)
        terms = [(x - low, tf.nn.relu(kernel)), (x - high, tf.minimum(kernel, 0.0))]
        return [(1.0, terms, False)]


def _sum(parts: Any) -> tf.Tensor:
    total = None
    for p in parts:
        total = p if total is None else total + p
    return total
