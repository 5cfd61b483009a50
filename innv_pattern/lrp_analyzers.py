"""The LRP family and Deep Taylor, with iNNvestigate 2.1.2's names, arguments and defaults.

Each analyzer is one class: its declarations and its composite (which
configured rule goes to which kernel layer, :mod:`innv_pattern.composites`).
All of them start the reverse pass from the selected output's value, Deep
Taylor from its positive part (iNNvestigate puts a ReLU on the output).

Example:
    >>> import keras, numpy as np
    >>> import innv_pattern as ip
    >>> inp = keras.Input((4,))
    >>> h = keras.layers.Dense(5, activation="relu")(inp)
    >>> model = keras.Model(inp, keras.layers.Dense(3)(h))
    >>> x = np.ones((2, 4), "float32")
    >>> ip.create_analyzer("lrp.alpha_2_beta_1", model).analyze(x).shape
    (2, 4)
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import numpy as np

from innv_pattern.analyzer_base import Analyzer, register
from innv_pattern.composites import (PRESETS, AlphaBeta, Composite, Epsilon, Flat, WSquare, Z,
                                     ZBox, ZPlus, ZPlusFast, deep_taylor_map)
from innv_pattern.rule_maps import RuleMap
from innv_pattern.rules import Template

__all__ = [
    "BoundedDeepTaylor", "DeepTaylor", "LRP", "LRPAlpha1Beta0", "LRPAlpha1Beta0IgnoreBias",
    "LRPAlpha2Beta1", "LRPAlpha2Beta1IgnoreBias", "LRPAlphaBeta", "LRPEpsilon", "LRPFlat",
    "LRPSequentialPresetA", "LRPSequentialPresetAFlat", "LRPSequentialPresetB",
    "LRPSequentialPresetBFlat", "LRPWSquare", "LRPZ", "LRPZPlus", "LRPZPlusFast",
]


class _LRPFamily(Analyzer):
    """An LRP analyzer: ``rule`` on every kernel layer, or its own :meth:`composite`."""

    kind = "attribution"
    start = "value"
    rule: ClassVar[Template | None] = None

    def composite(self) -> Composite:
        """Which configured rule goes to which kernel layer."""
        return Composite.uniform(self.rule)

    def rule_map(self) -> RuleMap:
        return self.composite().rule_map()


@register
class LRPZ(_LRPFamily):
    """LRP with the z-rule on every affine layer (bias absorbs relevance)."""

    name = "lrp.z"
    display_name = "LRP-z"
    in_paper = True
    rule = Z()


@register
class LRPEpsilon(LRPZ):
    """LRP with the epsilon-rule (also at sums and average pooling).

    Args:
        epsilon: The stabilizer added to each denominator with its sign.
    """

    name = "lrp.epsilon"
    display_name = "LRP-epsilon"
    in_paper = True

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 1e-7) -> None:
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive; received {epsilon!r}.")
        self.epsilon = float(epsilon)
        super().__init__(model, neuron_selection_mode)

    def composite(self) -> Composite:
        return Composite.uniform(Epsilon(self.epsilon), sum_rule=Epsilon(self.epsilon))


@register
class LRPWSquare(_LRPFamily):
    """LRP with Deep Taylor's w**2 rule on every kernel layer."""

    name = "lrp.w_square"
    display_name = "LRP-w-square"
    rule = WSquare()


@register
class LRPFlat(_LRPFamily):
    """LRP with the flat rule on every kernel layer."""

    name = "lrp.flat"
    display_name = "LRP-flat"
    rule = Flat()


@register
class LRPAlphaBeta(_LRPFamily):
    """LRP-alpha-beta on every kernel layer.

    Args:
        alpha: Weight of the positive contributions (>= 1).
        beta: Weight of the negative ones (>= 0); give one of the two, or both
            with ``alpha - beta = 1``. With neither, alpha 2 and beta 1
            (Zennit's default; iNNvestigate refuses to guess).
        bias: Count the bias in the denominators (iNNvestigate's default).
    """

    name = "lrp.alpha_beta"
    display_name = "LRP-alpha-beta"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 alpha: float | None = None, beta: float | None = None,
                 bias: bool = True) -> None:
        if alpha is None and beta is None:
            alpha, beta = 2.0, 1.0
        self.alpha_beta = AlphaBeta(alpha, beta, bias)
        super().__init__(model, neuron_selection_mode)

    def composite(self) -> Composite:
        return Composite.uniform(self.alpha_beta)


@register
class LRPAlpha2Beta1(_LRPFamily):
    """LRP-alpha-beta with alpha 2, beta 1."""

    name = "lrp.alpha_2_beta_1"
    display_name = "LRP-alpha2-beta1"
    rule = AlphaBeta(2, 1)


@register
class LRPAlpha2Beta1IgnoreBias(_LRPFamily):
    """LRP-alpha-beta with alpha 2, beta 1, the bias ignored."""

    name = "lrp.alpha_2_beta_1_IB"
    display_name = "LRP-alpha2-beta1 (no bias)"
    rule = AlphaBeta(2, 1, bias=False)


@register
class LRPAlpha1Beta0(_LRPFamily):
    """LRP-alpha-beta with alpha 1, beta 0."""

    name = "lrp.alpha_1_beta_0"
    display_name = "LRP-alpha1-beta0"
    rule = AlphaBeta(1, 0)


@register
class LRPAlpha1Beta0IgnoreBias(_LRPFamily):
    """LRP-alpha-beta with alpha 1, beta 0, the bias ignored."""

    name = "lrp.alpha_1_beta_0_IB"
    display_name = "LRP-alpha1-beta0 (no bias)"
    rule = AlphaBeta(1, 0, bias=False)


@register
class LRPZPlus(_LRPFamily):
    """LRP-z+: positive contributions only, bias ignored (alpha 1, beta 0 without bias)."""

    name = "lrp.z_plus"
    display_name = "LRP-z+"
    rule = ZPlus()


@register
class LRPZPlusFast(_LRPFamily):
    """LRP-z+ for non-negative inputs: positive weights only, the inputs as they are."""

    name = "lrp.z_plus_fast"
    display_name = "LRP-z+ (fast)"
    rule = ZPlusFast()


@register
class LRPSequentialPresetA(_LRPFamily):
    """iNNvestigate's preset A: epsilon on dense layers, alpha 1 beta 0 on convolutions.

    Args:
        epsilon: The dense layers' epsilon.
    """

    name = "lrp.sequential_preset_a"
    display_name = "LRP preset A"
    preset: ClassVar[str] = "sequential_preset_a"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 1e-1) -> None:
        self.epsilon = float(epsilon)
        super().__init__(model, neuron_selection_mode)

    def composite(self) -> Composite:
        return PRESETS[self.preset](epsilon=self.epsilon)


@register
class LRPSequentialPresetB(LRPSequentialPresetA):
    """iNNvestigate's preset B: epsilon on dense layers, alpha 2 beta 1 on convolutions."""

    name = "lrp.sequential_preset_b"
    display_name = "LRP preset B"
    preset = "sequential_preset_b"


@register
class LRPSequentialPresetAFlat(LRPSequentialPresetA):
    """Preset A with the flat rule on the first layer."""

    name = "lrp.sequential_preset_a_flat"
    display_name = "LRP preset A (flat)"
    preset = "sequential_preset_a_flat"


@register
class LRPSequentialPresetBFlat(LRPSequentialPresetA):
    """Preset B with the flat rule on the first layer."""

    name = "lrp.sequential_preset_b_flat"
    display_name = "LRP preset B (flat)"
    preset = "sequential_preset_b_flat"


#: iNNvestigate's rule names (``LRP_RULES``) for the ``lrp`` analyzer's ``rule`` argument.
RULE_NAMES: dict[str, Template] = {
    "Z": Z(), "Epsilon": Epsilon(), "WSquare": WSquare(), "Flat": Flat(),
    "Alpha2Beta1": AlphaBeta(2, 1), "Alpha2Beta1IgnoreBias": AlphaBeta(2, 1, bias=False),
    "Alpha1Beta0": AlphaBeta(1, 0), "Alpha1Beta0IgnoreBias": AlphaBeta(1, 0, bias=False),
    "ZPlus": ZPlus(), "ZPlusFast": ZPlusFast(),
}


@register
class LRP(_LRPFamily):
    """LRP with rules chosen per layer: a composite, a preset, or iNNvestigate's arguments.

    Args:
        rule: iNNvestigate's form: one rule for every kernel layer (a
            configured rule such as ``Epsilon(0.1)`` or a name of
            :data:`RULE_NAMES`), or ``(selector, rule)`` pairs.
        input_layer_rule: A rule (or name) for the first layer, or
            ``(low, high)`` for :func:`~innv_pattern.composites.ZBox`.
        composite: A :class:`~innv_pattern.composites.Composite`, or the name
            of a preset in :data:`~innv_pattern.composites.PRESETS`. With
            neither ``rule`` nor ``composite``: the preset ``"epsilon_plus_flat"``
            (Zennit's recommendation for CNNs; iNNvestigate needs a rule).
        **preset_settings: The preset's settings (``epsilon``, ``low``, ``high``).
    """

    name = "lrp"
    display_name = "LRP"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 rule: Any = None, input_layer_rule: Any = None, composite: Any = None,
                 **preset_settings: Any) -> None:
        self._composite = _chosen_composite(rule, composite, preset_settings)
        self._composite = self._composite.with_first_layer(_first_rule(input_layer_rule))
        super().__init__(model, neuron_selection_mode)

    def composite(self) -> Composite:
        return self._composite


def _chosen_composite(rule: Any, composite: Any, settings: dict[str, Any]) -> Composite:
    if rule is None and composite is None:
        composite = "epsilon_plus_flat"
    if rule is not None and composite is not None:
        raise ValueError("The 'lrp' analyzer takes one of rule= (a rule, a rule name "
                         f"of {sorted(RULE_NAMES)}, or (selector, rule) pairs) and composite= "
                         f"(a Composite or a preset of {sorted(PRESETS)}); received "
                         f"rule={rule!r}, composite={composite!r}.")
    if settings and not isinstance(composite, str):
        raise TypeError(f"Settings {sorted(settings)} are for a preset (composite='name').")
    if isinstance(composite, str):
        if composite not in PRESETS:
            raise ValueError(f"Unknown preset {composite!r}; accepted: {sorted(PRESETS)}.")
        return PRESETS[composite](**settings)
    if composite is not None:
        if not isinstance(composite, Composite):
            raise TypeError(f"composite must be a Composite or a preset name; received "
                            f"{type(composite).__name__}.")
        return composite
    if isinstance(rule, (list, tuple)):
        return Composite([(selector, _rule(r)) for selector, r in rule])
    return Composite.uniform(_rule(rule))


def _rule(rule: Any) -> Template:
    if isinstance(rule, Template):
        return rule
    if isinstance(rule, str) and rule in RULE_NAMES:
        return RULE_NAMES[rule]
    raise ValueError(f"A rule is a configured rule (innv_pattern.composites: Epsilon(0.1), "
                     f"AlphaBeta(2, 1), ...) or one of {sorted(RULE_NAMES)}; received {rule!r}.")


def _first_rule(rule: Any) -> Template | None:
    if rule is None:
        return None
    if isinstance(rule, tuple) and len(rule) == 2:
        return ZBox(*rule)
    return _rule(rule)


@register
class DeepTaylor(Analyzer):
    """Deep Taylor decomposition for ReLU networks with unbounded input (z+ rule)."""

    name = "deep_taylor"
    display_name = "Deep Taylor"
    kind = "attribution"
    start = "positive value"

    def first_layer_rule(self) -> Template | None:
        return None

    def rule_map(self) -> RuleMap:
        return deep_taylor_map(self.first_layer_rule())


@register
class BoundedDeepTaylor(DeepTaylor):
    """Deep Taylor for input in ``[low, high]``: the z^B rule on the first layer.

    Args:
        low: The smallest input value (a scalar or an array broadcastable to
            the input); iNNvestigate's analyzer needs it, its rule defaults to -1.
        high: The largest (the rule's default: 1).
    """

    name = "deep_taylor.bounded"
    display_name = "Deep Taylor (bounded)"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 low: Any = -1.0, high: Any = 1.0) -> None:
        if low is None or high is None or not np.all(np.asarray(low) <= np.asarray(high)):
            raise ValueError("deep_taylor.bounded needs the input's range, low <= high; "
                             f"received low={low!r}, high={high!r}.")
        self.low, self.high = low, high
        super().__init__(model, neuron_selection_mode)

    def first_layer_rule(self) -> Template | None:
        return ZBox(self.low, self.high)

