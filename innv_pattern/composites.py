"""LRP composites: which configured rule goes to which kernel layer (after Zennit).

A *rule* here is a configured template, its settings given as constructor
arguments (``Epsilon(epsilon=0.1)``, ``AlphaBeta(alpha=2, beta=1)``,
``ZBox(low=-1, high=1)``); a *selector* says which kernel layers a rule is for
(``dense``, ``conv``, ``first_layer``, ``layer_type(...)``, ``layer_name(...)``);
a :class:`Composite` is a list of (selector, rule) pairs, first match wins.
Presets are data (:data:`PRESETS`), and so are the iNNvestigate analyzers built
on them (:mod:`innv_pattern.lrp_analyzers`).

Example:
    >>> import keras, numpy as np
    >>> import innv_pattern as ip
    >>> from innv_pattern.composites import (AlphaBeta, Composite, Epsilon, ZBox, conv,
    ...                                      dense, first_layer)
    >>> inp = keras.Input((8, 8, 1))
    >>> h = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    >>> h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    >>> model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    >>> composite = Composite([(first_layer, ZBox(low=-1.0, high=1.0)),
    ...                        (dense, Epsilon(epsilon=0.25)),
    ...                        (conv, AlphaBeta(alpha=2, beta=1))])
    >>> analyzer = ip.create_analyzer("lrp", model, composite=composite)
    >>> analyzer.analyze(np.zeros((2, 8, 8, 1), "float32")).shape
    (2, 8, 8, 1)
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Sequence

import keras

from innv_pattern import kinds
from innv_pattern.canonize import KERNEL_LAYERS, CanonicalGraph, LayerOp, Op
from innv_pattern.lrp_rules import AlphaBetaRule, BoundedRule, FlatRule, WSquareRule, ZPlusFastRule
from innv_pattern.rule_maps import (Entry, Predicate, RuleMap, is_elementwise, is_kernel,
                                    is_relu_or_linear, lrp_map, of_kind)
from innv_pattern.rules import GradientRule, PassRule, Template, ZRule

__all__ = [
    "PRESETS", "AlphaBeta", "Composite", "Epsilon", "Flat", "WSquare", "Z", "ZBox", "ZPlus",
    "ZPlusFast", "any_layer", "conv", "deep_taylor_map", "dense", "first_layer", "layer_name",
    "layer_type",
]


# --------------------------------------------------------------------------
# Rules: configured templates.
# --------------------------------------------------------------------------
def Z() -> Template:  # noqa: N802 (rules are spelled like Zennit's classes)
    """LRP-z: ``R_i = x_i w_ij R_j / z_j``, the bias absorbing its share."""
    return ZRule.configured()


def Epsilon(epsilon: float = 1e-7) -> Template:  # noqa: N802
    """LRP-epsilon: the z-rule with ``epsilon * sign(z)`` added to each denominator."""
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0; received {epsilon!r}.")
    return ZRule.configured(epsilon=float(epsilon))


def AlphaBeta(alpha: float | None = None, beta: float | None = None,  # noqa: N802
              bias: bool = True) -> Template:
    """LRP-alpha-beta; give ``alpha`` or ``beta`` (the other is inferred) with ``alpha - beta = 1``.

    As in iNNvestigate: ``alpha >= 1``, ``beta >= 0``; ``bias=False`` is its
    ``IgnoreBias`` variant.
    """
    if alpha is None and beta is None:
        raise ValueError("AlphaBeta needs alpha or beta (alpha - beta = 1); received neither.")
    alpha = float(beta + 1 if alpha is None else alpha)
    beta = float(alpha - 1 if beta is None else beta)
    if alpha < 1 or beta < 0 or alpha - beta != 1:
        raise ValueError(f"AlphaBeta needs alpha >= 1, beta >= 0 and alpha - beta = 1; "
                         f"received alpha={alpha}, beta={beta}.")
    return AlphaBetaRule.configured(alpha=alpha, beta=beta, bias=bool(bias))


def ZPlus() -> Template:  # noqa: N802
    """LRP-z+ (Deep Taylor's z+): alpha 1, beta 0, bias ignored, inputs of either sign."""
    return AlphaBeta(alpha=1, beta=0, bias=False)


def ZPlusFast() -> Template:  # noqa: N802
    """LRP-z+ for non-negative inputs: positive weights only."""
    return ZPlusFastRule.configured()


def WSquare() -> Template:  # noqa: N802
    """Deep Taylor's w**2 rule."""
    return WSquareRule.configured()


def Flat() -> Template:  # noqa: N802
    """LRP-flat: every weight counts as one."""
    return FlatRule.configured()


def ZBox(low: Any, high: Any) -> Template:  # noqa: N802
    """Deep Taylor's z^B rule for inputs in ``[low, high]`` (scalars or broadcastable arrays)."""
    return BoundedRule.configured(low=low, high=high)


# --------------------------------------------------------------------------
# Selectors: which kernel layers a rule is for.
# --------------------------------------------------------------------------
_CONV_LAYERS = tuple(c for c in KERNEL_LAYERS if c is not keras.layers.Dense)
_RESHAPES = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute)


def any_layer(op: Op, graph: CanonicalGraph | None = None) -> bool:
    """Every kernel layer."""
    return True


def layer_type(*classes: type) -> Predicate:
    """Kernel layers that are instances of ``classes`` (Keras layer classes)."""
    return lambda op, graph=None: isinstance(op.layer, classes)


#: Dense layers.
dense = layer_type(keras.layers.Dense)
#: Convolutions: plain, depthwise, separable and transposed, in 1, 2 or 3 dimensions.
conv = layer_type(*_CONV_LAYERS)


def layer_name(*patterns: str) -> Predicate:
    """Kernel layers whose name matches one of ``patterns`` (``fnmatch`` wildcards)."""
    return lambda op, graph=None: any(fnmatch.fnmatchcase(op.layer.name, p) for p in patterns)


def first_layer(op: Op, graph: CanonicalGraph | None) -> bool:
    """Kernel layers that read a model input, directly or through Flatten, Reshape or Permute.

    iNNvestigate's input layers (``is_input_layer``).
    """
    if graph is None:
        raise ValueError("first_layer needs the canonical graph to find the model's inputs.")
    near_input = set(graph.inputs)
    for other in graph.ops:
        if isinstance(other.layer, _RESHAPES) and near_input.issuperset(other.inputs):
            near_input.update(other.outputs)
    return near_input.issuperset(op.inputs)


# --------------------------------------------------------------------------
# Composites.
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Composite:
    """Rules for the kernel layers, first match wins; ``sum_rule`` for the other affine layers.

    Args:
        rules: ``(selector, rule)`` pairs. A kernel layer that no selector
            accepts is an error naming it.
        sum_rule: The rule of sums, average pooling, element-wise affine
            layers, gates and layer normalization (default :func:`Z`, as
            iNNvestigate and Zennit's ``Norm``).
    """

    rules: Sequence[tuple[Predicate, Template]]
    sum_rule: Template = dataclasses.field(default_factory=Z)

    def __post_init__(self) -> None:
        rules = tuple(tuple(pair) for pair in self.rules)
        bad = [p for p in rules if len(p) != 2 or not callable(p[0])
               or not isinstance(p[1], Template)]
        if bad:
            raise TypeError(f"Composite rules are (selector, rule) pairs such as "
                            f"(dense, Epsilon(0.1)); received {bad}.")
        object.__setattr__(self, "rules", rules)

    @classmethod
    def uniform(cls, rule: Template, sum_rule: Template | None = None) -> "Composite":
        """``rule`` on every kernel layer."""
        return cls(((any_layer, rule),), sum_rule or Z())

    def with_first_layer(self, rule: Template | None) -> "Composite":
        """This composite with ``rule`` on the first layer(s) (nothing changes for ``None``)."""
        if rule is None:
            return self
        return dataclasses.replace(self, rules=((first_layer, rule),) + tuple(self.rules))

    def rule_map(self) -> RuleMap:
        """The rule map of an LRP analysis with this composite."""
        return lrp_map(self.rules, self.sum_rule)


def _preset(conv_rule: Callable[[], Template], first: Callable[..., Template] | None = None,
            epsilon: float = 1e-1) -> Callable[..., Composite]:
    """A preset: ``Epsilon`` on dense layers, ``conv_rule`` on convolutions, ``first`` first."""

    def make(epsilon: float = epsilon, **first_settings: Any) -> Composite:
        composite = Composite(((dense, Epsilon(epsilon)), (conv, conv_rule())))
        return composite.with_first_layer(first(**first_settings) if first else None)

    return make


#: Composites by name: ``PRESETS[name](**settings)``. The ``sequential_preset_*``
#: are iNNvestigate's (epsilon 0.1 by default); the others Zennit's (epsilon 1e-6).
PRESETS: dict[str, Callable[..., Composite]] = {
    "sequential_preset_a": _preset(lambda: AlphaBeta(1, 0)),
    "sequential_preset_b": _preset(lambda: AlphaBeta(2, 1)),
    "sequential_preset_a_flat": _preset(lambda: AlphaBeta(1, 0), Flat),
    "sequential_preset_b_flat": _preset(lambda: AlphaBeta(2, 1), Flat),
    "epsilon_plus": _preset(ZPlus, epsilon=1e-6),
    "epsilon_plus_flat": _preset(ZPlus, Flat, epsilon=1e-6),
    "epsilon_alpha2_beta1": _preset(lambda: AlphaBeta(2, 1), epsilon=1e-6),
    "epsilon_alpha2_beta1_flat": _preset(lambda: AlphaBeta(2, 1), Flat, epsilon=1e-6),
    "epsilon_alpha2_beta1_zbox": _preset(lambda: AlphaBeta(2, 1), ZBox, epsilon=1e-6),
}


def deep_taylor_map(first: Template | None = None) -> RuleMap:
    """Deep Taylor (iNNvestigate's): z+ on kernel layers (``first`` on the first layer).

    A kernel layer's own ReLU is part of its rule (relevance passes); an
    activation layer, pooling, sums and routing follow the gradient, an
    element-wise affine layer passes relevance (its w**2 rule, one input per
    neuron).  Other activations, gates and layer normalization fall back as
    in LRP, with a warning naming them (iNNvestigate refuses such networks).
    """
    chosen = (Entry(lambda op, graph: is_kernel(op) and first_layer(op, graph), first),) \
        if first is not None else ()
    gradient = GradientRule.configured()
    return RuleMap(chosen + (
        Entry(is_kernel, ZPlus()),
        Entry(_own_activation, PassRule.configured()),
        Entry(is_relu_or_linear, gradient),
        Entry(of_kind(kinds.ROUTING, kinds.MAX, kinds.AFFINE), gradient),
        Entry(of_kind(kinds.DIAGONAL), PassRule.configured()),
        Entry(is_elementwise, PassRule.configured(),
              "relevance passed through unchanged, as at a ReLU"),
        Entry(of_kind(kinds.GATE), Z(), "gates held constant: the gated input gets all "
              "the relevance"),
        Entry(of_kind(kinds.LAYER_NORM), Z(), "z-rule with the standard deviation held constant"),
    ), refusal="Deep Taylor is defined for networks of kernel layers, element-wise "
               "activations, pooling, sums and normalization: recurrent, attention, Lambda "
               "and custom layers are not.")


def _own_activation(op: Op, graph: CanonicalGraph | None = None) -> bool:
    """A kernel layer's fused ReLU (split off by canonization)."""
    return (is_relu_or_linear(op) and not isinstance(op, LayerOp)
            and isinstance(op.layer, KERNEL_LAYERS))
