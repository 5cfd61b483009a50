"""Reverse rules: one small class each, bound once per canonical operation.

A rule is called like the operation it is bound to (``rule(*xs) -> outputs``)
and computes the same forward values; what it changes is the backward pass,
through ``tf.custom_gradient``.  An analysis is then a single
``tape.gradient`` through the bound rules, so the reverse pass costs what an
ordinary backward pass costs.  Which rule goes to which operation is data: a
:data:`RuleMap` is a list of ``(predicate, rule_class)`` pairs, first match
wins (see :func:`bind`).

Example:
    >>> import keras, numpy as np, tensorflow as tf
    >>> from innv_pattern.canonize import canonize
    >>> from innv_pattern.rules import RULE_MAPS, bind
    >>> inp = keras.Input((3,))
    >>> graph = canonize(keras.Model(inp, keras.layers.Dense(2)(inp)))
    >>> rules = bind(graph, RULE_MAPS["lrp.z"], {})
    >>> type(rules[graph.ops[0].name]).__name__
    'ZRule'
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from innv_pattern.canonize import ActivationOp, CanonicalGraph, KernelOp, LayerOp, Op

__all__ = [
    "RULE_MAPS",
    "GradientRule",
    "DeconvReLURule",
    "GuidedReLURule",
    "PassRule",
    "ZRule",
    "PatternRule",
    "UnsupportedLayerError",
    "bind",
]


class UnsupportedLayerError(ValueError):
    """The model has layers that an analyzer has no reverse rule for."""


# --------------------------------------------------------------------------
# The rules.
# --------------------------------------------------------------------------
class Rule:
    """Base rule: the operation's own forward pass and ordinary gradient.

    Args:
        op: The canonical operation the rule is bound to.
        options: Analyzer options (``epsilon``, ``patterns``, ...).
    """

    def __init__(self, op: Op, options: Mapping[str, Any]) -> None:
        self.op = op

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        return self.op.forward(*xs)


class GradientRule(Rule):
    """Plain back-propagation (the gradient)."""


class _ElementwiseBackward(Rule):
    """A single-input rule whose backward is ``backward(x, y, g)``."""

    def backward(self, x: tf.Tensor, y: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        @tf.custom_gradient
        def apply(x: tf.Tensor) -> Any:
            y = self.op.forward(x)[0]
            return y, lambda g: self.backward(x, y, g)

        return [apply(xs[0])]


class DeconvReLURule(_ElementwiseBackward):
    """DeConvNet: the ReLU rectifies the reverse signal, ignoring the forward mask."""

    def backward(self, x: tf.Tensor, y: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(g)


class GuidedReLURule(_ElementwiseBackward):
    """Guided BackProp: the gradient's mask and the DeConvNet rectification."""

    def backward(self, x: tf.Tensor, y: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(g) * tf.cast(x > 0, g.dtype)


class PassRule(_ElementwiseBackward):
    """LRP: relevance passes an element-wise activation unchanged."""

    def backward(self, x: tf.Tensor, y: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        return g


class ZRule(Rule):
    """LRP-z / LRP-epsilon for any affine operation ``z = f(x1, ..., xn)``.

    ``R_i = x_i * J_i^T (R / (z + epsilon * sign(z)))``, the bias absorbing its
    share (iNNvestigate's convention).  ``epsilon = 0`` is LRP-z, where
    ``z == 0`` gives zero relevance instead of NaN.
    """

    def __init__(self, op: Op, options: Mapping[str, Any]) -> None:
        super().__init__(op, options)
        self.epsilon = float(options.get("epsilon", 0.0))

    def _divide(self, g: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """``g / (z + epsilon * sign(z))``, zero where the denominator is zero."""
        if self.epsilon:
            z = z + tf.where(z >= 0, self.epsilon, -self.epsilon)
        return tf.math.divide_no_nan(g, z)

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        linear = _affine_and_linear(self.op)

        @tf.custom_gradient
        def apply(*xs: tf.Tensor) -> Any:
            z = linear[0](*xs)

            def grad(g: tf.Tensor, variables: Any = None) -> Any:
                grads = _vjp(linear[1], xs, self._divide(g, z))
                grads = [x * gx for x, gx in zip(xs, grads)]
                return (grads, [None] * len(variables or [])) if variables else grads

            return z, grad

        return [apply(*xs)]


class PatternRule(Rule):
    """PatternNet / PatternAttribution: back-propagate with a swapped kernel.

    The backward pass of the kernel operation uses ``pattern`` (PatternNet) or
    ``kernel * pattern`` (PatternAttribution) in place of the kernel; the
    forward pass is unchanged.
    """

    def __init__(self, op: Op, options: Mapping[str, Any]) -> None:
        super().__init__(op, options)
        patterns = options.get("patterns")
        self.pattern = None if patterns is None else np.asarray(patterns[op.pattern_key])
        self.attribution = bool(options.get("attribution", False))

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        op: KernelOp = self.op
        kernel = op.get_kernel()
        bias = op.get_bias()
        pattern = tf.constant(self.pattern, dtype=kernel.dtype)
        swapped = kernel * pattern if self.attribution else pattern

        @tf.custom_gradient
        def apply(x: tf.Tensor) -> Any:
            y = op.linear(x, kernel)
            if bias is not None:
                y = y + op.broadcast_bias(bias)
            return y, lambda g: _vjp(lambda v: op.linear(v, swapped), [x], g)[0]

        return [apply(xs[0])]


def _affine_and_linear(op: Op) -> tuple[Callable, Callable]:
    """``(z(*xs), linear(*xs))``: the op with and without its bias."""
    if isinstance(op, KernelOp):
        kernel, bias = op.get_kernel(), op.get_bias()

        def affine(x: tf.Tensor) -> tf.Tensor:
            y = op.linear(x, kernel)
            return y if bias is None else y + op.broadcast_bias(bias)

        return affine, lambda x: op.linear(x, kernel)
    forward = lambda *xs: op.forward(*xs)[0]  # noqa: E731
    return forward, forward


def _vjp(fn: Callable, xs: list[tf.Tensor] | tuple, g: tf.Tensor) -> list[tf.Tensor]:
    """``J^T g`` of ``fn`` at ``xs``: the forward is pruned where unused."""
    with tf.GradientTape() as tape:
        tape.watch(list(xs))
        y = fn(*xs)
    grads = tape.gradient(y, list(xs), output_gradients=g)
    return [tf.zeros_like(x) if gx is None else gx for x, gx in zip(xs, grads)]


# --------------------------------------------------------------------------
# Which layers each rule family may be bound to.
# --------------------------------------------------------------------------
L = keras.layers
ROUTING_LAYERS = (
    L.InputLayer, L.Flatten, L.Reshape, L.Permute, L.Dropout, L.SpatialDropout1D,
    L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianDropout, L.GaussianNoise,
    L.AlphaDropout, L.ActivityRegularization, L.ZeroPadding1D, L.ZeroPadding2D,
    L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.Concatenate,
    L.Identity, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.RepeatVector,
)
MAX_LAYERS = (
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.Maximum,
)
AFFINE_LAYERS = (
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.Add, L.Subtract, L.Average, L.BatchNormalization, L.Rescaling, L.Normalization,
)
RELU_LIKE = ("relu", "linear")


def is_kernel(op: Op) -> bool:
    return isinstance(op, KernelOp)


def is_relu(op: Op) -> bool:
    return isinstance(op, ActivationOp) and op.activation == "relu"


def is_activation(op: Op) -> bool:
    return isinstance(op, ActivationOp) and op.activation in RELU_LIKE


def is_routing(op: Op) -> bool:
    return isinstance(op, LayerOp) and isinstance(op.layer, ROUTING_LAYERS + MAX_LAYERS)


def is_affine(op: Op) -> bool:
    return isinstance(op, LayerOp) and isinstance(op.layer, AFFINE_LAYERS)


def any_op(op: Op) -> bool:
    return True


RuleMap = list[tuple[Callable[[Op], bool], type[Rule]]]

_STRICT_TAIL: RuleMap = [
    (is_kernel, GradientRule),
    (is_activation, GradientRule),
    (is_routing, GradientRule),
    (is_affine, GradientRule),
]
_LRP: RuleMap = [
    (is_kernel, ZRule),
    (is_affine, ZRule),
    (is_activation, PassRule),
    (is_routing, GradientRule),
]

#: Rule maps by analyzer family; an op no predicate accepts is unsupported.
RULE_MAPS: dict[str, RuleMap] = {
    "gradient": [(any_op, GradientRule)],
    "deconvnet": [(is_relu, DeconvReLURule)] + _STRICT_TAIL,
    "guided_backprop": [(is_relu, GuidedReLURule)] + _STRICT_TAIL,
    "lrp.z": _LRP,
    "pattern": [(is_kernel, PatternRule)] + _STRICT_TAIL,
}


def bind(graph: CanonicalGraph, rule_map: RuleMap, options: Mapping[str, Any]) -> dict[str, Rule]:
    """Binds one rule to every op of ``graph``, first match in ``rule_map``.

    Raises:
        UnsupportedLayerError: naming every op that no entry accepts.
    """
    bound: dict[str, Rule] = {}
    missing: list[Op] = []
    for op in graph.ops:
        rule = next((cls for pred, cls in rule_map if pred(op)), None)
        if rule is None:
            missing.append(op)
        else:
            bound[op.name] = rule(op, options)
    if missing:
        raise UnsupportedLayerError(_unsupported_message(missing))
    return bound


def _unsupported_message(missing: list[Op]) -> str:
    found = ", ".join(
        f"'{op.layer.name}' ({type(op.layer).__name__}"
        + (f", activation={op.activation}" if isinstance(op, ActivationOp) else "")
        + ")"
        for op in missing
    )
    layers = sorted({c.__name__ for c in ROUTING_LAYERS + MAX_LAYERS + AFFINE_LAYERS})
    return (
        f"The model has {len(missing)} layer(s) this analyzer has no reverse rule "
        f"for: {found}. Supported: Dense, Conv1D/2D/3D, DepthwiseConv1D/2D, "
        f"SeparableConv1D/2D, Conv1D/2D/3DTranspose, activations {list(RELU_LIKE)}, "
        f"and {', '.join(layers)}. The 'gradient' family of analyzers accepts any "
        "differentiable layer."
    )
