"""PatternNet and PatternAttribution (Kindermans et al., 2018): kernels swapped for patterns.

Example:
    >>> import keras, numpy as np
    >>> import innv_pattern as ip
    >>> inp = keras.Input((4,))
    >>> model = keras.Model(inp, keras.layers.Dense(3)(inp))
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> analyzer = ip.create_analyzer("pattern.attribution", model)
    >>> _ = analyzer.fit(x, verbose=0)
    >>> analyzer.analyze(x[:2]).shape
    (2, 4)
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import keras
import numpy as np
import tensorflow as tf

from innv_pattern.analyzer_base import Analyzer, register
from innv_pattern.canonize import KernelOp
from innv_pattern.patterns.estimators import PATTERN_TYPES
from innv_pattern.rule_maps import RuleMap, pattern_map

__all__ = ["PatternAttribution", "PatternNet"]


class _PatternAnalyzer(Analyzer):
    """Shared by PatternNet and PatternAttribution: patterns in, kernels swapped.

    Every kernel layer, and every ``Add``, ``Subtract`` and ``Average`` (a
    linear layer with fixed weights), back-propagates with its fitted pattern;
    an element-wise affine layer ``y = s x + b`` (an unfolded
    BatchNormalization, ``Rescaling``) with its exact pattern ``1 / s``.

    Args:
        patterns: A mapping from kernel-op name to pattern (an
            :class:`innv_pattern.Patterns`, or a plain dict of arrays shaped like
            the kernels), or ``None`` to :meth:`fit` or :meth:`load_patterns`
            later.
        pattern_type: The signal estimator: ``"relu"`` (the two-component
            estimator with within-regime statistics, the default), ``"relu_eq7"``
            (the paper's Eq. 7 with the global mean of ``y``) or ``"linear"``;
            see :mod:`innv_pattern.patterns.estimators`.
    """

    needs_patterns = True
    start = "value"
    merge_kernels = True
    overflow_hint = (
        "Patterns fitted on an untrained network, or on few or unrepresentative samples, "
        "can amplify the signal by orders of magnitude per layer (each pattern is scaled "
        "to w^T a = 1, so it is long where the signal direction is nearly orthogonal to "
        "the weights). Fit on more data from the model's own input distribution, on a "
        "trained model, or use pattern.attribution (patterns times weights).")
    attribution: ClassVar[bool] = False

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 patterns: Mapping[str, Any] | None = None, pattern_type: str = "relu") -> None:
        if pattern_type not in PATTERN_TYPES:
            raise ValueError(f"pattern_type must be one of {sorted(PATTERN_TYPES)}; received "
                             f"{pattern_type!r}.")
        self.pattern_type = pattern_type
        self.patterns: dict[str, np.ndarray] | None = None
        self._patterns_source: Any = None
        super().__init__(model, neuron_selection_mode)
        if patterns is not None:
            self.set_patterns(patterns)

    def rule_map(self) -> RuleMap:
        return pattern_map(self.patterns, self.attribution)

    def set_patterns(self, patterns: Mapping[str, Any]) -> None:
        """Uses ``patterns`` from now on, after checking them against the model."""
        source = patterns
        if hasattr(patterns, "has_type"):  # an ip.Patterns: pick this analyzer's type
            if not patterns.has_type(self.pattern_type):
                raise ValueError(f"This analyzer uses '{self.pattern_type}' patterns; received "
                                 f"patterns of types {list(patterns.types)}. Fit or load "
                                 f"patterns of type '{self.pattern_type}'.")
            patterns = patterns.for_type(self.pattern_type)
        problems = []
        for op in self._graph.kernel_ops:
            key = op.pattern_key
            if key not in patterns:
                problems.append(f"'{key}' is missing")
            elif tuple(np.shape(patterns[key])) != tuple(op.kernel_shape):
                problems.append(f"'{key}' has shape {np.shape(patterns[key])}, "
                                f"the kernel {tuple(op.kernel_shape)}")
        if problems:
            raise ValueError(f"The patterns do not fit model '{self.model.name}': "
                             + "; ".join(problems) + ".")
        with self._lock:
            self._patterns_source = source
            self.patterns = {op.pattern_key: np.asarray(patterns[op.pattern_key], np.float32)
                             for op in self._graph.kernel_ops}
            self._build()

    def fit(self, data: Any, batch_size: int | None = None, steps: int | None = None,
            verbose: int = 1, strategy: Any = None) -> Any:
        """Fits the patterns on ``data`` (see :class:`innv_pattern.PatternComputer`)."""
        from innv_pattern.patterns import PatternComputer

        computer = PatternComputer(self.model, pattern_type=self.pattern_type, strategy=strategy)
        patterns = computer.compute(data, batch_size=batch_size, steps=steps, verbose=verbose)
        self.set_patterns(patterns)
        return patterns

    def save_patterns(self, path: str) -> None:
        """Saves the patterns in use (fitted or loaded) to an HDF5 file."""
        if not hasattr(self._patterns_source, "save"):
            raise ValueError("No fitted or loaded patterns to save: call fit(data) or "
                             "load_patterns(path) first (plain dicts of arrays cannot be saved).")
        self._patterns_source.save(path)

    def load_patterns(self, path: str, allow_changed_weights: bool = False) -> None:
        """Loads patterns from ``path``, checked against this analyzer's model."""
        from innv_pattern.patterns import Patterns

        self.set_patterns(Patterns.load(path, model=self.model,
                                        allow_changed_weights=allow_changed_weights))

    def analyze(self, x: Any, neuron_selection: Any = None, batch_size: int | None = None) -> Any:
        if self.patterns is None:
            raise ValueError(
                f"'{self.name}' needs patterns before it can analyze. Fit them with "
                "analyzer.fit(data), load a file with analyzer.load_patterns(path), or pass "
                "patterns=ip.PatternComputer(model).compute(data) to create_analyzer.")
        return super().analyze(x, neuron_selection, batch_size)


@register
class PatternNet(_PatternAnalyzer):
    """PatternNet: back-projects the signal, with each kernel replaced by its pattern.

    Each layer's back-projection sums the signal estimates of all its neurons,
    so the paper's signal grows with depth (15-30x per layer on the trained
    networks of ``benchmarks/pattern_factors.py``: 1e12 to 1e25 times the
    input after 10 to 20 layers; beyond float32 at ResNet depth).  With ``normalize``
    (the default) the back-projected signal is rescaled, per sample, to the
    root mean square of the forward activation at the first tensor after the
    first kernel layer that all paths from the output to the input pass through
    (the rescaled signal then does not depend on the input's offset, and
    PatternNet stays input-invariant); at the later such tensors (between layers
    and blocks, not inside a residual block) it is divided by its largest entry
    where that leaves ``[1e-15, 1e15]``, so that it never overflows or
    underflows float32.  The backward pass is linear in the signal,
    so the result is the paper's signal times one positive number per sample:
    the direction is exact, the scale is that of the activations, and a model
    with one kernel layer (the linear model, the toy example) gives the
    paper's ``a y`` unchanged.

    Args:
        normalize: Rescale at the cut tensors as above; ``False`` gives the
            paper's scale, which can overflow float32.
    """

    name = "pattern.net"
    display_name = "PatternNet"
    in_paper = True
    kind = "signal"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 patterns: Mapping[str, Any] | None = None, pattern_type: str = "relu",
                 normalize: bool = True) -> None:
        self.normalize = bool(normalize)
        self._cuts: frozenset[int] = frozenset()
        self._scale_cut: int | None = None
        super().__init__(model, neuron_selection_mode, patterns, pattern_type)

    def _build(self) -> None:
        cuts = _rescaled_tensors(self._graph) if self.normalize else set()
        self._cuts = frozenset(cuts)
        # The rescale nearest the input sets the scale; the others only guard the range.
        self._scale_cut = next((key for op in self._graph.ops for key in op.outputs
                                if key in cuts), None)
        super()._build()

    def _call(self, op: Any, *xs: tf.Tensor) -> list[tf.Tensor]:
        outs = super()._call(op, *xs)
        return [t if key not in self._cuts else _rms_rescaled(t) if key == self._scale_cut
                else _range_guarded(t) for key, t in zip(op.outputs, outs)]


#: The backward signal's largest entry is kept within ``[1 / GUARD, GUARD]`` between rescales.
_GUARD = 1e15


def _range_guarded(t: tf.Tensor) -> tf.Tensor:
    """``t``, whose backward signal is divided per sample by its largest entry where that
    entry leaves ``[1 / _GUARD, _GUARD]`` (a positive factor: the direction is kept)."""

    @tf.custom_gradient
    def guard(v: tf.Tensor) -> Any:
        def grad(g: tf.Tensor) -> tf.Tensor:
            axes = list(range(1, len(v.shape)))
            m = tf.reduce_max(tf.abs(g), axis=axes, keepdims=True)
            inside = tf.reduce_all(((m <= _GUARD) & (m >= 1.0 / _GUARD)) | tf.equal(m, 0.0))
            return tf.cond(inside, lambda: g, lambda: tf.math.divide_no_nan(g, m))

        return tf.identity(v), grad

    return guard(t)


#: A mean square below this may have lost entries to underflow (float32's normal range
#: ends at 1.2e-38): the rescale then takes the exact, slower path.
_TINY_SQUARE = 1e-30


def _rescaled_tensors(graph: Any) -> set[int]:
    """The tensors PatternNet rescales its backward signal at.

    Cut tensors (every path from the output to the input passes through them)
    after the first kernel op (before it, the RMS of a padded input moves with
    its offset), but not one that a single-input op other than a kernel op
    (an activation, pooling, a reshape) makes from another such tensor: the
    signal does not grow there, and the rescale nearest the input, which sets
    the output's scale, is kept.  One rescale per layer, not one per tensor.
    """
    after_kernel: set[int] = set()  # tensors that some kernel op's output reaches
    for op in graph.ops:
        if isinstance(op, KernelOp) or after_kernel.intersection(op.inputs):
            after_kernel.update(op.outputs)
    cuts = after_kernel & graph.cut_tensors() - set(graph.outputs)
    return {key for op in graph.ops for key in op.outputs if key in cuts and (
        isinstance(op, KernelOp) or len(op.inputs) != 1 or op.inputs[0] not in cuts)}


def _rms_rescaled(t: tf.Tensor) -> tf.Tensor:
    """``t``, whose backward signal is rescaled per sample to the RMS of ``t``."""

    @tf.custom_gradient
    def rescale(v: tf.Tensor) -> Any:
        def grad(g: tf.Tensor) -> tf.Tensor:
            axes = list(range(1, len(v.shape)))
            mean_square = tf.reduce_mean(tf.square(g), axis=axes, keepdims=True)

            def scaled() -> tuple[tf.Tensor, tf.Tensor]:
                # Divided by its largest entry first: squares of a huge (or tiny) signal
                # overflow (or underflow); taken only where they did, as it costs 3 passes.
                m = tf.reduce_max(tf.abs(g), axis=axes, keepdims=True)
                unit = tf.math.divide_no_nan(g, m)
                return unit, tf.reduce_mean(tf.square(unit), axis=axes, keepdims=True)

            representable = tf.reduce_all(tf.math.is_finite(mean_square)
                                          & (mean_square > _TINY_SQUARE))
            g, mean_square = tf.cond(representable, lambda: (g, mean_square), scaled)
            rms_v = tf.sqrt(tf.reduce_mean(tf.square(v), axis=axes, keepdims=True))
            return g * tf.math.divide_no_nan(rms_v, tf.sqrt(mean_square))

        return tf.identity(v), grad

    return rescale(t)


@register
class PatternAttribution(_PatternAnalyzer):
    """PatternAttribution: back-propagation with each kernel replaced by kernel x pattern."""

    name = "pattern.attribution"
    display_name = "PatternAttribution"
    in_paper = True
    kind = "attribution"
    attribution = True
