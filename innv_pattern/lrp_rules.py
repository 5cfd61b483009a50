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
nothing is lost by passing nothing back.  The alpha-beta rule computes its two
groups from ``x W`` and ``|x| |W|`` (one extra linear map each way instead of
four) and treats a group within float32 round-off of zero as zero (see
:class:`AlphaBetaRule`).  (The z-box rule written as
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
    """A kernel op's rule given by :meth:`groups` (see the module docstring).

    A term's input may have batch size 1 (the ones of the flat and w-square
    rules): its denominator is then computed once and broadcast.
    """

    def __init__(self, op: Op, options: Mapping[str, Any]) -> None:
        if not isinstance(op, KernelOp):
            raise TypeError(f"{type(self).__name__} applies to kernel layers (Dense, "
                            f"convolutions); received '{op.name}'.")
        super().__init__(op, options)

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        raise NotImplementedError

    def relevance(self, x: tf.Tensor, y: tf.Tensor, g: tf.Tensor, kernel: tf.Tensor,
                  bias: tf.Tensor | None) -> tf.Tensor:
        """The relevance of ``x`` given the relevance ``g`` of the output ``y``."""
        total = None
        for weight, terms, with_bias in self.groups(x, kernel):
            z = _sum(self.op.linear(v, w) for v, w in terms)
            s = tf.math.divide_no_nan(g, z + bias if with_bias and bias is not None else z)
            part = _sum(v * self.transposed(x, w, s) for v, w in terms)
            total = weight * part if total is None else total + weight * part
        return total

    def transposed(self, x: tf.Tensor, kernel: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        """``s`` through the transposed linear map with ``kernel`` (shaped like ``x``)."""
        return _vjp(lambda u: self.op.linear(u, kernel), [x], s)[0]

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        op: KernelOp = self.op
        kernel = op.get_kernel()
        bias = op.get_bias()
        bias = None if bias is None else op.broadcast_bias(bias)

        def backward(xs: tuple, y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
            return [self.relevance(xs[0], y, g, kernel, bias)]

        return [_with_backward(_forward_fn(op, lambda v: op.linear(v, kernel)), backward, xs)]


class AlphaBetaRule(TermsRule):
    """LRP-alpha-beta: positive and negative contributions apart (Bach et al., 2015).

    Settings: ``alpha``, ``beta`` (iNNvestigate requires ``alpha - beta = 1``;
    the composite constructors check it) and ``bias`` (count the bias in the
    denominators, default True). ``alpha=1, beta=0, bias=False`` is LRP-z+
    (Deep Taylor's z+ rule) for inputs of any sign.

    Computed with one extra linear map each way: the positive and negative
    parts are ``(x W +- |x| |W|) / 2``, so ``z+- = (z +- m) / 2`` with
    ``m = |x| |W|``, and the relevance is
    ``x/2 W^T (alpha s+ - beta s-) + |x|/2 |W|^T (alpha s+ + beta s-)``.
    A part within round-off of zero (``|z+-| <= 1e-5 m``: float32 cannot tell
    it from zero) counts as zero, as the exact sum of its one-signed terms would.
    """

    setting_names = ("alpha", "beta", "bias")
    proportional = True
    #: Below this fraction of ``|x| |W|`` a part is round-off.
    resolution = 1e-5

    def relevance(self, x: tf.Tensor, y: tf.Tensor, g: tf.Tensor, kernel: tf.Tensor,
                  bias: tf.Tensor | None) -> tf.Tensor:
        alpha = float(self.settings.get("alpha", 1.0))
        beta = float(self.settings.get("beta", 0.0))
        z = y if bias is None else self.op.linear(x, kernel)
        m = self.op.linear(tf.abs(x), tf.abs(kernel))
        shift = bias if bool(self.settings.get("bias", True)) and bias is not None else 0.0
        resolved = m * self.resolution

        def share(part: tf.Tensor) -> tf.Tensor:
            part = tf.where(tf.abs(part) <= resolved, tf.zeros_like(part), part)
            return tf.math.divide_no_nan(g, part + shift)

        s_pos = share((z + m) / 2)
        s_neg = share((z - m) / 2) if beta else tf.zeros_like(s_pos)
        signed, absolute = alpha * s_pos - beta * s_neg, alpha * s_pos + beta * s_neg
        return (x * self.transposed(x, kernel, signed)
                + tf.abs(x) * self.transposed(x, tf.abs(kernel), absolute)) / 2


class ZPlusFastRule(TermsRule):
    """LRP-z+ for non-negative inputs: ``x W+`` without bias (iNNvestigate's ``ZPlusFast``)."""

    proportional = True

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        return [(1.0, [(x, tf.nn.relu(kernel))], False)]


class WSquareRule(TermsRule):
    """Deep Taylor's w**2 rule: relevance in proportion to the squared weights."""

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        return [(1.0, [(tf.ones_like(x[:1]), tf.square(kernel))], False)]


class FlatRule(TermsRule):
    """LRP-flat: relevance spread evenly over each output's receptive field."""

    def groups(self, x: tf.Tensor, kernel: tf.Tensor) -> Groups:
        return [(1.0, [(tf.ones_like(x[:1]), tf.ones_like(kernel))], False)]


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
