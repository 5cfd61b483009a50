"""Which reverse rule each analyzer family binds to which operation: data.

A :class:`RuleMap` is a sequence of :class:`Entry` (predicate, configured rule
(a :class:`~innv_pattern.rules.Template`), and a note where the rule is a
fallback: an approximation outside the theory of the method, which assumes a
network of kernel layers, ReLUs, pooling and sums).  A predicate receives the
op and the canonical graph (for positions such as "the first layer").
The first entry whose predicate accepts an operation wins; an operation that
no entry accepts makes :func:`bind` raise :class:`UnsupportedLayerError`
naming every such layer before any work starts, and an analyzer warns once,
naming the layers, when it falls back (:func:`warn_fallbacks`).

Example:
    >>> import keras
    >>> from innv_pattern.canonize import canonize
    >>> inp = keras.Input((3,))
    >>> graph = canonize(keras.Model(inp, keras.layers.Dense(2)(inp)))
    >>> rules = bind(graph, RULE_MAPS["gradient"])
    >>> type(rules[graph.ops[0].name]).__name__
    'GradientRule'
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from innv_pattern import kinds
from innv_pattern.canonize import ActivationOp, CanonicalGraph, KernelOp, LayerOp, Op
from innv_pattern.rules import (DeconvReLURule, DiagonalPatternRule, GradientRule,
                                GuidedReLURule, IdentityRule, LinearizedRule, PassRule,
                                PatternRule, RectifiedZRule, Rule, Template, ZRule)

__all__ = ["RULE_MAPS", "Entry", "FallbackWarning", "RuleMap", "UnsupportedLayerError",
           "bind", "describe", "fallbacks", "fuse_rectifiers", "lrp_map", "pattern_map",
           "warn_fallbacks"]

#: ``accepts(op, graph)``: whether an entry's rule goes to ``op`` of ``graph``.
Predicate = Callable[[Op, Optional[CanonicalGraph]], bool]


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


class UnsupportedLayerError(ValueError):
    """The model has layers that an analyzer has no reverse rule for."""


class FallbackWarning(UserWarning):
    """An analyzer uses an approximate rule for some layers of the model."""


class Entry(NamedTuple):
    """One line of a rule map: ops that ``accepts`` get ``rule``; ``fallback`` says how it approximates."""

    accepts: Predicate
    rule: Template
    fallback: str | None = None


@dataclasses.dataclass(frozen=True)
class RuleMap:
    """An analyzer family's entries, first match wins.

    Attributes:
        entries: The entries, in order.
        refusal: Why an op that no entry accepts has no rule (for the error).
    """

    entries: tuple[Entry, ...]
    refusal: str = ""

    def match(self, op: Op, graph: CanonicalGraph | None = None) -> Entry | None:
        """The first entry that accepts ``op`` (of ``graph``)."""
        return next((entry for entry in self.entries if entry.accepts(op, graph)), None)


# --------------------------------------------------------------------------
# Predicates.
# --------------------------------------------------------------------------
def any_op(op: Op, graph: CanonicalGraph | None = None) -> bool:
    return True


def is_kernel(op: Op, graph: CanonicalGraph | None = None) -> bool:
    return isinstance(op, KernelOp)


def is_relu(op: Op, graph: CanonicalGraph | None = None) -> bool:
    return isinstance(op, ActivationOp) and op.activation == "relu"


def is_linear(op: Op, graph: CanonicalGraph | None = None) -> bool:
    return isinstance(op, ActivationOp) and op.activation == "linear"


def is_relu_or_linear(op: Op, graph: CanonicalGraph | None = None) -> bool:
    return is_relu(op) or is_linear(op)


def is_rectifier(op: Op, graph: CanonicalGraph | None = None) -> bool:
    return isinstance(op, ActivationOp) and op.activation in kinds.RECTIFIERS


def is_elementwise(op: Op, graph: CanonicalGraph | None = None) -> bool:
    return isinstance(op, ActivationOp) and op.activation in kinds.ELEMENTWISE


def of_kind(*names: str) -> Predicate:
    """A predicate: a :class:`LayerOp` of one of the kinds ``names``."""
    return lambda op, graph=None: isinstance(op, LayerOp) and op.kind in names


def has_no_weights(op: Op, graph: CanonicalGraph | None = None) -> bool:
    return not getattr(op.layer, "weights", None)


# --------------------------------------------------------------------------
# The maps.
# --------------------------------------------------------------------------
_LINEAR_KINDS = (kinds.ROUTING, kinds.MAX, kinds.AFFINE, kinds.DIAGONAL)


_GRADIENT = GradientRule.configured()
_PASS = PassRule.configured()


def _modified_relu(rule: Template) -> RuleMap:
    """DeConvNet and Guided BackProp: a modified gradient at the rectifiers."""
    return RuleMap((
        Entry(is_relu, rule),
        Entry(is_kernel, _GRADIENT),
        Entry(is_linear, _GRADIENT),
        Entry(of_kind(*_LINEAR_KINDS), _GRADIENT),
        Entry(is_rectifier, rule, "treated as a ReLU"),
        Entry(any_op, _GRADIENT, "plain gradient"),
    ))


def lrp_map(kernel_rules: Sequence[tuple[Predicate, Template]], sum_rule: Template) -> RuleMap:
    """LRP: each kernel op gets the rule of the first of ``kernel_rules`` that selects it.

    ``sum_rule`` (a z- or epsilon-rule) goes to the other affine ops: sums,
    average pooling, element-wise affine layers, sigmoid gates and layer
    normalization; relevance passes ReLUs unchanged and follows the gradient
    through routing and max pooling (iNNvestigate's choices).
    """
    chosen = tuple(Entry(_kernel_and(accepts), rule) for accepts, rule in kernel_rules)
    return RuleMap(chosen + (
        Entry(of_kind(kinds.AFFINE, kinds.DIAGONAL), sum_rule),
        Entry(of_kind(kinds.ROUTING, kinds.MAX), _GRADIENT),
        Entry(is_relu_or_linear, _PASS),
        Entry(is_elementwise, _PASS, "relevance passed through unchanged, as at a ReLU"),
        Entry(of_kind(kinds.GATE), sum_rule,
              "gates held constant: the gated input gets all the relevance"),
        Entry(of_kind(kinds.LAYER_NORM), sum_rule,
              "z-rule with the standard deviation held constant (Ali et al., 2022)"),
    ), refusal="LRP needs every layer to be affine or element-wise (recurrent, attention, "
               "Lambda and custom layers, and products of tensors other than sigmoid gates, "
               "are not), and a rule for every kernel layer (a composite's rules must "
               "select each one).")


def _kernel_and(accepts: Predicate) -> Predicate:
    return lambda op, graph=None: is_kernel(op) and accepts(op, graph)


def pattern_map(patterns: Mapping[str, Any] | None, attribution: bool) -> RuleMap:
    """PatternNet (``attribution=False``) or PatternAttribution with ``patterns``.

    Pattern analyzers canonize Add, Subtract and Average as kernel ops (fitted
    patterns); an element-wise affine layer (an unfolded BatchNormalization,
    Rescaling) has the exact pattern 1 / s.  Routing, max pooling and the
    remaining affine layers (average pooling, resizing) back-propagate their
    gradient, as in iNNvestigate.
    """
    linearized = LinearizedRule.configured()
    return RuleMap((
        Entry(is_kernel, PatternRule.configured(patterns=patterns, attribution=attribution)),
        Entry(is_relu_or_linear, _GRADIENT),
        Entry(of_kind(kinds.DIAGONAL), DiagonalPatternRule.configured(attribution=attribution)),
        Entry(of_kind(*_LINEAR_KINDS), _GRADIENT),
        Entry(is_elementwise, _GRADIENT, "the activation's gradient"),
        Entry(of_kind(kinds.GATE), linearized, "gates held constant, as a ReLU's mask"),
        Entry(of_kind(kinds.LAYER_NORM), linearized, "the standard deviation held constant"),
        Entry(has_no_weights, _GRADIENT, "plain gradient"),
    ), refusal="Pattern analyzers fit patterns for Dense and convolution kernels only, so a "
               "layer with other weights (recurrent, attention, EinsumDense, custom) has no "
               "pattern.")


_Z = ZRule.configured()

#: The rule maps of the analyzer families without settings; an op no entry accepts
#: is unsupported.
RULE_MAPS: dict[str, RuleMap] = {
    "gradient": RuleMap((Entry(any_op, _GRADIENT),)),
    "deconvnet": _modified_relu(DeconvReLURule.configured()),
    "guided_backprop": _modified_relu(GuidedReLURule.configured()),
    "lrp.z": lrp_map([(any_op, _Z)], _Z),
}


# --------------------------------------------------------------------------
# Binding.
# --------------------------------------------------------------------------
def bind(graph: CanonicalGraph, rule_map: RuleMap) -> dict[str, Rule]:
    """Binds one rule to every op of ``graph``, first match in ``rule_map``.

    Raises:
        UnsupportedLayerError: naming every op that no entry accepts.
    """
    bound: dict[str, Rule] = {}
    missing: list[Op] = []
    for op in graph.ops:
        entry = rule_map.match(op, graph)
        if entry is None:
            missing.append(op)
        else:
            bound[op.name] = entry.rule.bind(op)
    if missing:
        raise UnsupportedLayerError(_unsupported_message(missing, rule_map.refusal))
    return bound


def fuse_rectifiers(graph: CanonicalGraph, rules: Mapping[str, Rule]) -> dict[str, Rule]:
    """``rules`` with each z-rule op and the ReLU after it bound as one :class:`RectifiedZRule`.

    A :class:`ZRule` fuses (its ``fusable``; a :class:`RectifiedZRule` does
    not fuse again), keeping its settings.
    Fused only where that is exact: the op's output feeds nothing but a ReLU
    bound to :class:`PassRule`, and the relevance reaching the ReLU's output is
    that output times something (:func:`_value_scaled`), so it is zero where the
    ReLU's output is.  For reverse passes that start from the output's value
    (LRP).  The ReLU then fuses into the kernel operation in the compiled graph.
    """
    readers: dict[int, list[Op]] = {}
    for op in graph.ops:
        for key in op.inputs:
            readers.setdefault(key, []).append(op)
    scaled = _value_scaled(graph, rules, readers)
    fused = dict(rules)
    for op in graph.ops:
        rule, after = rules[op.name], readers.get(op.outputs[0], [])
        if (isinstance(rule, ZRule) and rule.fusable and len(op.outputs) == 1
                and op.outputs[0] not in graph.outputs
                and len(after) == 1 and after[0].inputs == op.outputs
                and is_relu(after[0]) and isinstance(rules[after[0].name], PassRule)
                and scaled[after[0].outputs[0]]):
            fused[op.name] = RectifiedZRule(op, rule.settings)
            fused[after[0].name] = IdentityRule(after[0], {})
    return fused


def _value_scaled(graph: CanonicalGraph, rules: Mapping[str, Rule],
                  readers: dict[int, list[Op]]) -> dict[int, bool]:
    """Per tensor: its relevance is the tensor times a finite factor, element by element.

    True where every reader passes that on (at an output, the reverse pass
    starts from its value): a rule whose relevance is proportional to its
    input (``Rule.proportional``: the z-rule's ``x * ...``), a copying or max-selecting
    gradient (each input element gets relevance only from outputs that equal
    it), or a ReLU or identity passing relevance whose output has the property
    (``relu(z) * s`` is ``z * s * (z > 0)``).
    """
    scaled: dict[int, bool] = {}

    def passes(op: Op) -> bool:
        rule = rules[op.name]
        if rule.proportional:
            return True
        copies = ((isinstance(rule, GradientRule) and of_kind(kinds.ROUTING, kinds.MAX)(op))
                  or (isinstance(rule, PassRule) and is_relu_or_linear(op)))
        return copies and all(scaled[key] for key in op.outputs)

    for op in reversed(graph.ops):  # an op's readers come after it
        for key in op.outputs:
            scaled[key] = all(passes(reader) for reader in readers.get(key, []))
    return scaled


def fallbacks(graph: CanonicalGraph, rule_map: RuleMap) -> dict[str, list[str]]:
    """The ops bound to a fallback rule, ``{note: ["'name' (what)", ...]}``."""
    found: dict[str, list[str]] = {}
    for op in graph.ops:
        entry = rule_map.match(op, graph)
        if entry is not None and entry.fallback is not None:
            found.setdefault(entry.fallback, []).append(describe(op))
    return found


def warn_fallbacks(graph: CanonicalGraph, rule_map: RuleMap, analyzer: str) -> None:
    """Warns once, naming the layers, if ``analyzer`` falls back anywhere in ``graph``.

    The warning points at the first caller outside this package (the user's
    ``create_analyzer`` line).
    """
    found = fallbacks(graph, rule_map)
    if not found:
        return
    lines = [f"  - {note}: {', '.join(ops)}" for note, ops in found.items()]
    warnings.warn(
        f"Analyzer '{analyzer}' is defined for networks of kernel layers, ReLUs, pooling "
        f"and sums; this model has {sum(map(len, found.values()))} layer(s) it handles "
        "approximately:\n" + "\n".join(lines), FallbackWarning, stacklevel=_outside_package())


def _outside_package() -> int:
    """The ``stacklevel`` of the first frame outside this package, seen from our caller."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def describe(op: Op) -> str:
    """``'name' (LayerClass[, activation=...])``, as messages name a layer."""
    extra = f", activation={op.activation}" if isinstance(op, ActivationOp) else ""
    return f"'{op.name}' ({type(op.layer).__name__}{extra})"


def _unsupported_message(missing: list[Op], refusal: str) -> str:
    found = ", ".join(describe(op) for op in missing)
    return (
        f"The model has {len(missing)} layer(s) this analyzer has no reverse rule for: "
        f"{found}. {refusal + ' ' if refusal else ''}Supported: Dense, Conv1D/2D/3D, "
        "DepthwiseConv1D/2D, SeparableConv1D/2D, Conv1D/2D/3DTranspose, element-wise "
        "activations, pooling, padding, cropping, upsampling, reshaping, dropout, Add, "
        "Subtract, Average, Concatenate, Maximum, Minimum, sigmoid-gated Multiply, "
        "BatchNormalization, LayerNormalization, Rescaling, Normalization and keras.ops "
        "arithmetic with constants. The 'gradient' family of analyzers accepts any "
        "differentiable layer."
    )
