"""Reverse rules: one small class each, bound once per canonical operation.

A rule is called like the operation it is bound to (``rule(*xs) -> outputs``)
and computes the same forward values; what it changes is the backward pass,
through ``tf.custom_gradient``.  An analysis is then a single
``tape.gradient`` through the bound rules, so the reverse pass costs what an
ordinary backward pass costs.  Which rule goes to which operation is data:
see :mod:`innv_pattern.rule_maps`.

Several rules back-propagate through a *linearization* of their operation
(:func:`linearization`): a kernel layer's bias-free linear part, a gate product
with its gates held constant, a LayerNormalization with its standard deviation
held constant, and any other operation as it is.

Example:
    >>> import keras, numpy as np, tensorflow as tf
    >>> from innv_pattern.canonize import canonize
    >>> inp = keras.Input((3,))
    >>> model = keras.Model(inp, keras.layers.Dense(1, use_bias=False)(inp))
    >>> rule = ZRule.configured().bind(canonize(model).ops[0])
    >>> x = tf.constant([[1.0, 2.0, 3.0]])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     z = rule(x)[0]
    >>> relevance = tape.gradient(z, x, output_gradients=z)  # LRP-z conserves z
    >>> bool(np.isclose(relevance.numpy().sum(), z.numpy().sum(), rtol=1e-5))
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import tensorflow as tf

from innv_pattern import kinds
from innv_pattern.canonize import KernelOp, LayerOp, Op

__all__ = [
    "DeconvReLURule",
    "DiagonalPatternRule",
    "GradientRule",
    "GuidedReLURule",
    "IdentityRule",
    "LinearizedRule",
    "ModifiedRule",
    "PassRule",
    "PatternRule",
    "RectifiedZRule",
    "Rule",
    "Template",
    "ZRule",
    "linearization",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Template:
    """A rule class with its settings, bound once per operation (Zennit's rule objects).

    Made by :meth:`Rule.configured`; rule maps and composites hold templates.

    Example:
        >>> ZRule.configured(epsilon=0.1)
        ZRule(epsilon=0.1)
    """

    rule: type["Rule"]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def bind(self, op: Op) -> "Rule":
        """The rule bound to ``op``."""
        return self.rule(op, self.settings)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.settings.items() if k != "patterns")
        return f"{self.rule.__name__}({shown})"


class Rule:
    """Base rule: the operation's own forward pass and ordinary gradient.

    Args:
        op: The canonical operation the rule is bound to.
        options: The rule's settings (:attr:`setting_names`), as
            :meth:`configured` received them.
    """

    #: The settings the rule reads; :meth:`configured` accepts these names only.
    setting_names: ClassVar[tuple[str, ...]] = ()
    #: The relevance it gives an input element is that element times a finite
    #: factor (zero where the input is zero); see ``rule_maps.fuse_rectifiers``.
    proportional: ClassVar[bool] = False

    def __init__(self, op: Op, options: Mapping[str, Any]) -> None:
        self.op = op
        self.settings = dict(options)

    @classmethod
    def configured(cls, **settings: Any) -> Template:
        """A :class:`Template` of this rule with ``settings``.

        Raises:
            TypeError: For a setting the rule does not read.
        """
        unknown = sorted(set(settings) - set(cls.setting_names))
        if unknown:
            raise TypeError(f"{cls.__name__} has no setting(s) {unknown}; accepted: "
                            f"{list(cls.setting_names)}.")
        return Template(cls, settings)

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        return self.op.forward(*xs)


class GradientRule(Rule):
    """Plain back-propagation (the gradient)."""


class ModifiedRule(Rule):
    """A rule with the forward pass of its op and the backward pass :meth:`backward`."""

    def backward(self, xs: tuple[tf.Tensor, ...], y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
        """The reverse signals of the inputs ``xs``, given output ``y`` and its signal ``g``."""
        raise NotImplementedError

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        return [_with_backward(lambda *v: self.op.forward(*v)[0], self.backward, xs)]


class DeconvReLURule(ModifiedRule):
    """DeConvNet: the ReLU rectifies the reverse signal, ignoring the forward pass."""

    def backward(self, xs: tuple, y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
        return [tf.nn.relu(g)]


class GuidedReLURule(ModifiedRule):
    """Guided BackProp: the rectified reverse signal times the activation's derivative.

    For a ReLU the derivative is its mask ``x > 0`` (Springenberg et al.); other
    rectifiers (ReLU6, leaky ReLU, ELU, GELU, swish) use their own derivative.
    """

    def backward(self, xs: tuple, y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
        return _vjp(lambda v: self.op.forward(v)[0], xs, tf.nn.relu(g))


class PassRule(ModifiedRule):
    """LRP: relevance passes an element-wise activation unchanged."""

    def backward(self, xs: tuple, y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
        return [g]


class LinearizedRule(ModifiedRule):
    """Back-propagation through the operation's :func:`linearization`.

    Gates and normalization statistics are held constant, as back-propagation
    through a ReLU holds its mask constant.
    """

    def backward(self, xs: tuple, y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
        return _vjp(linearization(self.op), xs, g)


class ZRule(ModifiedRule):
    """LRP-z / LRP-epsilon for any operation affine in its :func:`linearization`.

    ``R_i = x_i * J_i^T (R / (z + epsilon * sign(z)))``, the bias absorbing its
    share (iNNvestigate's convention).  ``epsilon = 0`` is LRP-z, where
    ``z == 0`` gives zero relevance instead of NaN.  At an ``Add`` this splits
    relevance in proportion to each input's contribution ``x_i / z``.
    """

    setting_names = ("epsilon",)
    proportional = True
    #: :func:`innv_pattern.rule_maps.fuse_rectifiers` may fuse it with the ReLU after it.
    fusable: ClassVar[bool] = True

    def __init__(self, op: Op, options: Mapping[str, Any]) -> None:
        super().__init__(op, options)
        self.epsilon = float(options.get("epsilon", 0.0))

    def _divide(self, g: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """``g / (z + epsilon * sign(z))``, zero where the denominator is zero."""
        if self.epsilon:
            z = z + tf.where(z >= 0, self.epsilon, -self.epsilon)
        return tf.math.divide_no_nan(g, z)

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        linear = linearization(self.op)  # a kernel op's kernel is read and folded once

        def backward(xs: tuple, y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
            grads = _vjp(linear, xs, self._divide(g, y))
            return [x * gx for x, gx in zip(xs, grads)]

        return [_with_backward(self._forward(linear), backward, xs)]

    def _forward(self, linear: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
        return _forward_fn(self.op, linear)


class RectifiedZRule(ZRule):
    """:class:`ZRule` and the ReLU that follows its op, as one rule (a fast path).

    The forward pass is ``relu(op(x))``, so the ReLU fuses into the kernel
    operation as in an ordinary forward pass, and the backward pass divides by
    the rectified output ``a`` instead of ``z``.  This equals :class:`ZRule`
    followed by :class:`PassRule` exactly when the relevance arriving at ``a``
    is zero wherever ``a`` is (then ``R / z`` and ``R / a`` agree, and so do
    ``R / (z +- epsilon)`` and ``R / (a + epsilon)``, up to the sign of zeros);
    :func:`innv_pattern.rule_maps.fuse_rectifiers` only fuses where the model
    guarantees it.  The ReLU itself becomes an :class:`IdentityRule`.
    """

    fusable = False

    def _forward(self, linear: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
        forward = _forward_fn(self.op, linear)
        return lambda *v: tf.nn.relu(forward(*v))

    def _divide(self, g: tf.Tensor, a: tf.Tensor) -> tf.Tensor:
        return tf.math.divide_no_nan(g, a + self.epsilon if self.epsilon else a)


class IdentityRule(Rule):
    """Returns its input: the place of a ReLU already applied by a :class:`RectifiedZRule`."""

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        return list(xs)


class PatternRule(Rule):
    """PatternNet / PatternAttribution: back-propagate with a swapped kernel.

    The backward pass of the kernel operation uses ``pattern`` (PatternNet) or
    ``kernel * pattern`` (PatternAttribution) in place of the kernel; the
    forward pass is unchanged.
    """

    setting_names = ("patterns", "attribution")

    def __init__(self, op: Op, options: Mapping[str, Any]) -> None:
        super().__init__(op, options)
        patterns = options.get("patterns")
        self.attribution = bool(options.get("attribution", False))
        # The backward kernel, computed once per pattern set (with any folded BatchNorm): an
        # eager tensor, which a compiled analysis captures instead of recomputing per call.
        # Patterns belong to the weights they were fitted on; the forward pass reads the
        # weights at call time.
        self.pattern = self.swapped = None
        if patterns is not None:
            kernel = op.get_kernel()
            self.pattern = tf.cast(np.asarray(patterns[op.pattern_key], np.float32), kernel.dtype)
            self.swapped = kernel * self.pattern if self.attribution else self.pattern

    def __call__(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        op: KernelOp = self.op
        kernel = op.get_kernel()
        swapped = tf.cast(self.swapped, kernel.dtype)

        def backward(xs: tuple, y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
            return _vjp(lambda v: op.linear(v, swapped), xs, g)

        return [_with_backward(_forward_fn(op, lambda v: op.linear(v, kernel)), backward, xs)]


class DiagonalPatternRule(ModifiedRule):
    """PatternNet / PatternAttribution at an element-wise affine op ``y = s x + b``.

    Each output is a neuron with one input, so its pattern is exact without
    fitting: ``a = cov[x, y] / var[y] = 1 / s`` (in either regime).
    PatternNet divides the signal by ``s`` (zero where ``s`` is); for
    PatternAttribution ``w a = 1``, so relevance passes unchanged.
    """

    setting_names = ("attribution",)

    def __init__(self, op: Op, options: Mapping[str, Any]) -> None:
        super().__init__(op, options)
        self.attribution = bool(options.get("attribution", False))

    def backward(self, xs: tuple, y: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
        if self.attribution:
            return [g]
        x = xs[0]
        scale = self.op.forward(tf.ones_like(x))[0] - self.op.forward(tf.zeros_like(x))[0]
        return [tf.math.divide_no_nan(g, scale)]


def linearization(op: Op) -> Callable[..., tf.Tensor]:
    """The function of ``op``'s inputs whose Jacobian the modified rules use.

    A kernel op's linear part (without bias); a ``gate`` product with its gate
    inputs held constant; a ``layer_norm`` with its mean subtracted but its
    standard deviation held constant (Ali et al., 2022); any other op itself.
    """
    if isinstance(op, KernelOp):
        kernel = op.get_kernel()
        return lambda x: op.linear(x, kernel)
    if isinstance(op, LayerOp) and op.kind == kinds.GATE:
        return lambda *xs: _product([tf.stop_gradient(x) if i in op.gates else x
                                     for i, x in enumerate(xs)])
    if isinstance(op, LayerOp) and op.kind == kinds.LAYER_NORM:
        return lambda x: _layer_norm_constant_std(op.layer, x)
    return lambda *xs: op.forward(*xs)[0]


def _forward_fn(op: Op, linear: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
    """``op``'s forward pass; a kernel op's as ``linear(x) + bias``, sharing ``linear``'s kernel."""
    if not isinstance(op, KernelOp):
        return lambda *xs: op.forward(*xs)[0]
    bias = op.get_bias()
    if bias is None:
        return linear
    bias = op.broadcast_bias(bias)
    return lambda x: linear(x) + bias


def _product(xs: list[tf.Tensor]) -> tf.Tensor:
    result = xs[0]
    for x in xs[1:]:
        result = result * x
    return result


def _layer_norm_constant_std(layer: Any, x: tf.Tensor) -> tf.Tensor:
    """Keras' LayerNormalization without ``beta``, the standard deviation held constant."""
    rank = len(x.shape)
    axes = sorted(a % rank for a in (layer.axis if isinstance(layer.axis, (list, tuple))
                                     else [layer.axis]))
    mean, variance = tf.nn.moments(x, axes, keepdims=True)
    inv = tf.stop_gradient(tf.math.rsqrt(variance + layer.epsilon))
    y = x * inv if layer.rms_scaling else (x - mean) * inv
    if layer.gamma is not None:
        shape = [x.shape[a] if a in axes else 1 for a in range(rank)]
        y = y * tf.reshape(tf.cast(layer.gamma, y.dtype), shape)
    return y


def _with_backward(forward: Callable[..., tf.Tensor], backward: Callable, xs: tuple) -> tf.Tensor:
    """``forward(*xs)``, whose gradient is ``backward(xs, y, g)``; variables get none."""

    @tf.custom_gradient
    def apply(*xs: tf.Tensor) -> Any:
        y = forward(*xs)

        def grad(g: tf.Tensor, variables: Any = None) -> Any:
            grads = backward(xs, y, g)
            return (grads, [None] * len(variables)) if variables else grads

        return y, grad

    return apply(*xs)


def _vjp(fn: Callable, xs: list[tf.Tensor] | tuple, g: tf.Tensor) -> list[tf.Tensor]:
    """``J^T g`` of ``fn`` at ``xs``: the forward is pruned where unused."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(list(xs))
        y = fn(*xs)
    grads = tape.gradient(y, list(xs), output_gradients=g)
    return [tf.zeros_like(x) if gx is None else gx for x, gx in zip(xs, grads)]
