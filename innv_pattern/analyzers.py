"""Analyzers: one base class, one verb (``analyze``), a registry by name.

Each analyzer is one class that declares its name, display name, kind, needs
and start (:mod:`innv_pattern.analyzer_base`); :func:`analyzer_classes` is the
one list of them, which the rest of the package reads.

Example:
    >>> import keras, numpy as np
    >>> import innv_pattern as ip
    >>> inp = keras.Input((4,))
    >>> model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    >>> analyzer = ip.create_analyzer("lrp.z", model)
    >>> analyzer.analyze(np.ones((2, 4), "float32")).shape
    (2, 4)
    >>> analyzer_classes()["pattern.net"].kind
    'signal'
"""

from __future__ import annotations

from typing import Any

import keras

from innv_pattern.analyzer_base import _REGISTRY, Analyzer, register
from innv_pattern.gradient_analyzers import (Deconvnet, Gradient, GuidedBackprop, Input,
                                             InputTimesGradient, IntegratedGradients, Random,
                                             SmoothGrad)
from innv_pattern.lrp_analyzers import (LRP, BoundedDeepTaylor, DeepTaylor, LRPAlpha1Beta0,
                                        LRPAlpha1Beta0IgnoreBias, LRPAlpha2Beta1,
                                        LRPAlpha2Beta1IgnoreBias, LRPAlphaBeta, LRPEpsilon,
                                        LRPFlat, LRPSequentialPresetA, LRPSequentialPresetAFlat,
                                        LRPSequentialPresetB, LRPSequentialPresetBFlat,
                                        LRPWSquare, LRPZ, LRPZPlus, LRPZPlusFast)
from innv_pattern.pattern_analyzers import PatternAttribution, PatternNet

__all__ = [
    "LRP", "Analyzer", "BoundedDeepTaylor", "Deconvnet", "DeepTaylor", "Gradient",
    "GuidedBackprop", "Input", "InputTimesGradient", "IntegratedGradients", "LRPAlpha1Beta0",
    "LRPAlpha1Beta0IgnoreBias", "LRPAlpha2Beta1", "LRPAlpha2Beta1IgnoreBias", "LRPAlphaBeta",
    "LRPEpsilon", "LRPFlat", "LRPSequentialPresetA", "LRPSequentialPresetAFlat",
    "LRPSequentialPresetB", "LRPSequentialPresetBFlat", "LRPWSquare", "LRPZ", "LRPZPlus",
    "LRPZPlusFast", "PatternAttribution", "PatternNet", "Random", "SmoothGrad",
    "analyzer_classes", "create_analyzer", "list_analyzers", "register",
]


def analyzer_classes() -> dict[str, type[Analyzer]]:
    """Every registered analyzer class by name, in registration order.

    Read their declarations (``display_name``, ``kind``, ``needs_patterns``,
    ``start``) instead of keeping lists of names.
    """
    return dict(_REGISTRY)


def list_analyzers() -> list[str]:
    """Names accepted by :func:`create_analyzer`."""
    return list(_REGISTRY)


def create_analyzer(name: str, model: keras.Model, neuron_selection_mode: str = "max_activation",
                    jit_compile: bool = False, fast_path: bool = True,
                    **kwargs: Any) -> Analyzer:
    """Makes the analyzer called ``name`` for ``model``.

    Args:
        name: One of :func:`list_analyzers`.
        model: A functional or Sequential Keras 3 model with one output.
        neuron_selection_mode: ``"max_activation"``, ``"index"`` or ``"all"``.
        jit_compile: Compile the analysis with XLA. Off by default: on CPU it
            measured slower (``benchmarks/analyze.py --xla``).
        fast_path: Bind a z-rule layer and the ReLU after it as one rule where
            that is exact (the same result, faster); ``False`` binds rule by rule.
        **kwargs: Options of the analyzer (for example ``epsilon``).

    Raises:
        ValueError: For an unknown name or mode, or a model with layers the
            analyzer cannot reverse (all of them are named).
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown analyzer {name!r}. Accepted names: {list_analyzers()}.")
    analyzer = _REGISTRY[name](model, neuron_selection_mode=neuron_selection_mode, **kwargs)
    if jit_compile or not fast_path:
        analyzer.jit_compile, analyzer.fast_path = bool(jit_compile), bool(fast_path)
        analyzer._build()
    return analyzer
