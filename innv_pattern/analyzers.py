"""Analyzers: one base class, one verb (``analyze``), a registry by name.

Example:
    >>> import keras, numpy as np
    >>> import innv_pattern as ip
    >>> inp = keras.Input((4,))
    >>> model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    >>> analyzer = ip.create_analyzer("lrp.z", model)
    >>> analyzer.analyze(np.ones((2, 4), "float32")).shape
    (2, 4)
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Mapping

import keras
import numpy as np
import tensorflow as tf

from innv_pattern.canonize import KernelOp, canonize
from innv_pattern.patterns.estimators import PATTERN_TYPES
from innv_pattern.rule_maps import RULE_MAPS, bind, fuse_rectifiers, warn_fallbacks

__all__ = ["Analyzer", "create_analyzer", "list_analyzers", "register"]

NEURON_SELECTION_MODES = ("max_activation", "index", "all")
_REGISTRY: dict[str, type["Analyzer"]] = {}


def register(cls: type["Analyzer"]) -> type["Analyzer"]:
    """Class decorator: makes ``cls`` available to :func:`create_analyzer`."""
    _REGISTRY[cls.name] = cls
    return cls


def list_analyzers() -> list[str]:
    """Names accepted by :func:`create_analyzer`."""
    return list(_REGISTRY)


def create_analyzer(name: str, model: keras.Model, neuron_selection_mode: str = "max_activation",
                    jit_compile: bool = False, **kwargs: Any) -> "Analyzer":
    """Makes the analyzer called ``name`` for ``model``.

    Args:
        name: One of :func:`list_analyzers`.
        model: A functional or Sequential Keras 3 model with one output.
        neuron_selection_mode: ``"max_activation"``, ``"index"`` or ``"all"``.
        jit_compile: Compile the analysis with XLA. Off by default: on CPU it
            measured slower (``benchmarks/analyze.py --xla``).
        **kwargs: Options of the analyzer (for example ``epsilon``).

    Raises:
        ValueError: For an unknown name or mode, or a model with layers the
            analyzer cannot reverse (all of them are named).
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown analyzer {name!r}. Accepted names: {list_analyzers()}.")
    analyzer = _REGISTRY[name](model, neuron_selection_mode=neuron_selection_mode, **kwargs)
    if jit_compile:
        analyzer.jit_compile = True
        analyzer._build()
    return analyzer


class Analyzer:
    """Base class: the forward and reverse pass of a batch in one ``tf.function``.

    Subclasses set ``name``, ``rule_family`` (a key of ``RULE_MAPS``) and
    ``start_from_value`` (the reverse pass starts from the selected output's
    value instead of 1), and may override :meth:`_options` and
    :meth:`_postprocess`.

    Args:
        model: A functional or Sequential Keras 3 model with one output.
        neuron_selection_mode: ``"max_activation"`` (per sample, the largest
            output), ``"index"`` (``analyze(x, neuron_selection=i)``) or
            ``"all"`` (every output at once).
    """

    name: ClassVar[str] = ""
    rule_family: ClassVar[str] = "gradient"
    start_from_value: ClassVar[bool] = False
    #: ``Add``-type merges as kernel ops with fixed weights (see ``canonize``).
    merge_kernels: ClassVar[bool] = False
    jit_compile: bool = False

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation") -> None:
        if neuron_selection_mode not in NEURON_SELECTION_MODES:
            raise ValueError(
                f"Unknown neuron_selection_mode {neuron_selection_mode!r}; "
                f"accepted: {list(NEURON_SELECTION_MODES)}.")
        self.model = model
        self.neuron_selection_mode = neuron_selection_mode
        self._graph = canonize(model, merge_kernels=self.merge_kernels)
        if len(self._graph.outputs) != 1:
            raise ValueError(f"Analyzers explain one output; model '{model.name}' has "
                             f"{len(self._graph.outputs)}. Build a model with a single output.")
        out_shape = self._graph.shapes[self._graph.outputs[0]]
        self._n_outputs = int(np.prod(out_shape[1:]))
        self._input_specs = [(self._graph.shapes[k], self._graph.dtypes[k]) for k in self._graph.inputs]
        self._lock = threading.Lock()
        self._build()
        warn_fallbacks(self._graph, RULE_MAPS[self.rule_family], self.name)

    # -- set-up ------------------------------------------------------------
    def _build(self) -> None:
        """(Re)binds the rules and compiles the batch function."""
        self._rules = bind(self._graph, RULE_MAPS[self.rule_family], self._options())
        if self.start_from_value:
            self._rules = fuse_rectifiers(self._graph, self._rules)
        # No autograph: the batch function has no tensor-dependent Python control
        # flow, and tracing without it is about a third faster.
        self._batch_fn = tf.function(self._analyze_batch, reduce_retracing=True,
                                     jit_compile=self.jit_compile, autograph=False)

    def _options(self) -> dict[str, Any]:
        return {}

    # -- the compiled batch ------------------------------------------------
    def _forward(self, xs: list[tf.Tensor]) -> tf.Tensor:
        out = self._graph.run(xs, call=self._call)[0]
        return tf.reshape(out, [tf.shape(out)[0], -1])

    def _call(self, op: Any, *xs: tf.Tensor) -> list[tf.Tensor]:
        """``op`` applied through its bound rule (the forward pass of the analysis)."""
        return self._rules[op.name](*xs)

    def _reverse(self, xs: list[tf.Tensor], index: tf.Tensor) -> list[tf.Tensor]:
        """Gradient of the selected outputs w.r.t. ``xs`` (index -1: maximum)."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(xs)
            y = self._forward(xs)
        start = self._start(y, index)
        grads = tape.gradient(y, xs, output_gradients=start)
        return [tf.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]

    def _start(self, y: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        if self.neuron_selection_mode == "all":
            start = tf.ones_like(y)
        else:
            chosen = tf.where(index < 0, tf.argmax(y, axis=-1, output_type=tf.int32), index)
            start = tf.one_hot(chosen, tf.shape(y)[-1], dtype=y.dtype)
        return tf.stop_gradient(start * y if self.start_from_value else start)

    def _analyze_batch(self, xs: list[tf.Tensor], index: tf.Tensor) -> list[tf.Tensor]:
        xs = [tf.cast(x, tf.float32) if not x.dtype.is_floating else x for x in xs]
        return self._postprocess(xs, self._reverse(xs, index))

    def _postprocess(self, xs: list[tf.Tensor], grads: list[tf.Tensor]) -> list[tf.Tensor]:
        return grads

    # -- the public verb ---------------------------------------------------
    def analyze(self, x: Any, neuron_selection: Any = None, batch_size: int | None = None) -> Any:
        """Explains ``x``.

        Args:
            x: A batch (numpy array or tensor), or a list of batches for a
                model with several inputs.
            neuron_selection: With mode ``"index"``: the output index, an int
                or one int per sample.
            batch_size: Analyze in chunks of this many samples (memory).

        Returns:
            Numpy arrays with the structure and shapes of ``x``.
        """
        xs = self._check_inputs(x)
        index = self._check_selection(neuron_selection, len(xs[0]))
        n = len(xs[0])
        step = n if not batch_size else int(batch_size)
        chunks = []
        for start in range(0, n, max(step, 1)):
            part = [tf.convert_to_tensor(v[start:start + step]) for v in xs]
            with self._lock:
                out = self._batch_fn(part, tf.constant(index[start:start + step]))
            chunks.append([o.numpy() for o in out])
        result = chunks[0] if len(chunks) == 1 else [
            np.concatenate([c[i] for c in chunks]) for i in range(len(xs))]
        self._check_finite(result)
        return result if isinstance(x, (list, tuple)) else result[0]

    #: Why an analysis can overflow, and what to do (pattern analyzers say more).
    overflow_hint = "Check the model's weights and the input's scale."

    def _check_finite(self, result: list[np.ndarray]) -> None:
        """Refuses results that overflowed float32 (the inputs were checked finite)."""
        bad = np.zeros(len(result[0]), bool)
        for r in result:
            bad |= ~np.isfinite(r.reshape(len(r), -1)).all(axis=1)
        if bad.any():
            where = np.flatnonzero(bad)
            shown = ", ".join(str(i) for i in where[:10]) + (", ..." if len(where) > 10 else "")
            raise ValueError(f"'{self.name}' overflowed float32 for {len(where)} of {len(bad)} "
                             f"sample(s) ({shown}): the reverse pass exceeded 3.4e38, so there "
                             f"is no finite result to return. {self.overflow_hint}")

    def _check_inputs(self, x: Any) -> list[np.ndarray]:
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(xs) != len(self._input_specs):
            raise ValueError(f"Model '{self.model.name}' takes {len(self._input_specs)} input(s); "
                             f"received {len(xs)}.")
        arrays = []
        for i, (v, (shape, dtype)) in enumerate(zip(xs, self._input_specs)):
            v = np.asarray(v)
            if v.dtype.kind not in "fiub":
                raise TypeError(f"Input {i} must be numeric; received dtype {v.dtype}.")
            if v.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape[1:], v.shape[1:])):
                raise ValueError(f"Input {i} must have shape {shape} (batch first); received "
                                 f"an array of shape {v.shape}.")
            if v.shape[0] == 0:
                raise ValueError(f"Input {i} is an empty batch (shape {v.shape}).")
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
                raise ValueError(f"Input {i} contains {bad} NaN or infinite value(s); "
                                 "analyses need finite input.")
            dt = dtype if "float" in dtype else "float32"
            arrays.append(v.astype(dt, copy=False))
        if len({a.shape[0] for a in arrays}) > 1:
            raise ValueError(f"All inputs need the same batch size; received {[a.shape[0] for a in arrays]}.")
        return arrays

    def _check_selection(self, selection: Any, n: int) -> np.ndarray:
        mode = self.neuron_selection_mode
        if mode != "index":
            if selection is not None:
                raise ValueError(f"neuron_selection is only used with neuron_selection_mode='index'; "
                                 f"this analyzer uses {mode!r} and received {selection!r}.")
            return np.full(n, -1, np.int32)
        if selection is None:
            raise ValueError("neuron_selection_mode='index' needs analyze(x, neuron_selection=i) "
                             "with an int or one int per sample.")
        index = np.asarray(selection)
        if index.dtype.kind not in "iu" or index.ndim > 1 or (index.ndim == 1 and len(index) != n):
            raise ValueError(f"neuron_selection must be an int or {n} ints (one per sample); "
                             f"received {selection!r}.")
        if np.any(index < 0) or np.any(index >= self._n_outputs):
            raise ValueError(f"neuron_selection must be in [0, {self._n_outputs}) for this model's "
                             f"{self._n_outputs} outputs; received {selection!r}.")
        return np.broadcast_to(index, (n,)).astype(np.int32)


@register
class Gradient(Analyzer):
    """The gradient of the selected output with respect to the input."""

    name = "gradient"


@register
class InputTimesGradient(Gradient):
    """Input times gradient."""

    name = "input_t_gradient"

    def _postprocess(self, xs: list[tf.Tensor], grads: list[tf.Tensor]) -> list[tf.Tensor]:
        return [x * g for x, g in zip(xs, grads)]


@register
class Deconvnet(Analyzer):
    """DeConvNet (Zeiler & Fergus): ReLUs rectify the reverse signal."""

    name = "deconvnet"
    rule_family = "deconvnet"
    start_from_value = True


@register
class GuidedBackprop(Analyzer):
    """Guided BackProp (Springenberg et al.): gradient mask and rectification."""

    name = "guided_backprop"
    rule_family = "guided_backprop"
    start_from_value = True


@register
class LRPZ(Analyzer):
    """LRP with the z-rule on every affine layer (bias absorbs relevance)."""

    name = "lrp.z"
    rule_family = "lrp.z"
    start_from_value = True


@register
class LRPEpsilon(LRPZ):
    """LRP with the epsilon-rule.

    Args:
        epsilon: The stabilizer added to each denominator with its sign.
    """

    name = "lrp.epsilon"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 1e-7) -> None:
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive; received {epsilon!r}.")
        self.epsilon = float(epsilon)
        super().__init__(model, neuron_selection_mode)

    def _options(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}


class _Sampling(Gradient):
    """Averages gradients over ``n`` modified copies of the input.

    The selected neuron is chosen once, on the unmodified input, and explained
    in every copy.
    """

    def _augment(self, x: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _analyze_batch(self, xs: list[tf.Tensor], index: tf.Tensor) -> list[tf.Tensor]:
        xs = [tf.cast(x, tf.float32) if not x.dtype.is_floating else x for x in xs]
        if self.neuron_selection_mode != "all":
            y = self._forward(xs)
            index = tf.where(index < 0, tf.argmax(y, axis=-1, output_type=tf.int32), index)

        def body(i: tf.Tensor, acc: list[tf.Tensor]) -> tuple:
            grads = self._reverse([self._augment(x, i) for x in xs], index)
            return i + 1, [a + g for a, g in zip(acc, grads)]

        zeros = [tf.zeros_like(x) for x in xs]
        _, total = tf.while_loop(lambda i, _: i < self.n, body, (tf.constant(0), zeros))
        return self._postprocess(xs, [t / float(self.n) for t in total])


@register
class SmoothGrad(_Sampling):
    """SmoothGrad (Smilkov et al.): the mean gradient over noisy copies.

    Args:
        augment_by_n: Number of noisy copies.
        noise_scale: Standard deviation of the Gaussian noise.
        seed: Seed of the noise (analyses are reproducible).
    """

    name = "smoothgrad"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 augment_by_n: int = 64, noise_scale: float = 1.0, seed: int = 0) -> None:
        if int(augment_by_n) < 1 or not noise_scale >= 0:
            raise ValueError("augment_by_n must be >= 1 and noise_scale >= 0; received "
                             f"augment_by_n={augment_by_n!r}, noise_scale={noise_scale!r}.")
        self.n, self.noise_scale = int(augment_by_n), float(noise_scale)
        self._rng = tf.random.Generator.from_seed(seed)
        super().__init__(model, neuron_selection_mode)

    def _augment(self, x: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        return x + self._rng.normal(tf.shape(x), stddev=self.noise_scale, dtype=x.dtype)


@register
class IntegratedGradients(_Sampling):
    """Integrated Gradients (Sundararajan et al.) from a reference input.

    Args:
        steps: Number of points on the straight path, both ends included
            (``alpha = i / (steps - 1)``, iNNvestigate's convention).
        reference_inputs: The path's start (a scalar or an array
            broadcastable to the input).
    """

    name = "integrated_gradients"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 steps: int = 64, reference_inputs: Any = 0.0) -> None:
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1; received {steps!r}.")
        self.n = int(steps)
        self.reference = np.asarray(reference_inputs, np.float32)
        super().__init__(model, neuron_selection_mode)

    def _augment(self, x: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        alpha = tf.cast(i, x.dtype) / float(max(self.n - 1, 1))
        alpha = alpha if self.n > 1 else tf.ones_like(alpha)
        ref = tf.constant(self.reference, x.dtype)
        return ref + alpha * (x - ref)

    def _postprocess(self, xs: list[tf.Tensor], grads: list[tf.Tensor]) -> list[tf.Tensor]:
        ref = tf.constant(self.reference)
        return [(x - tf.cast(ref, x.dtype)) * g for x, g in zip(xs, grads)]


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

    rule_family = "pattern"
    start_from_value = True
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

    def _options(self) -> dict[str, Any]:
        return {"patterns": self.patterns, "attribution": self.attribution}

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
    (the default) the back-projected signal is rescaled, per sample, at every
    tensor that all paths from the output to the input pass through (between
    layers and blocks, not inside a residual block) to the root mean square of
    the forward activation there (after the first kernel layer: the rescaled
    signal then does not depend on the input's offset, and PatternNet stays
    input-invariant).  The backward pass is linear in the signal,
    so the result is the paper's signal times one positive number per sample:
    the direction is exact, the scale is that of the activations, and a model
    with one kernel layer (the linear model, the toy example) gives the
    paper's ``a y`` unchanged.

    Args:
        normalize: Rescale at the cut tensors as above; ``False`` gives the
            paper's scale, which can overflow float32.
    """

    name = "pattern.net"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 patterns: Mapping[str, Any] | None = None, pattern_type: str = "relu",
                 normalize: bool = True) -> None:
        self.normalize = bool(normalize)
        self._cuts: frozenset[int] = frozenset()
        super().__init__(model, neuron_selection_mode, patterns, pattern_type)

    def _build(self) -> None:
        graph = self._graph
        after_kernel: set[int] = set()  # tensors that some kernel op's output reaches
        for op in graph.ops:
            if isinstance(op, KernelOp) or after_kernel.intersection(op.inputs):
                after_kernel.update(op.outputs)
        # Not before the first kernel op: the RMS of a padded input moves with its offset.
        self._cuts = frozenset(after_kernel & graph.cut_tensors() - set(graph.outputs)
                               if self.normalize else ())
        super()._build()

    def _call(self, op: Any, *xs: tf.Tensor) -> list[tf.Tensor]:
        outs = super()._call(op, *xs)
        return [_rms_rescaled(t) if key in self._cuts else t for key, t in zip(op.outputs, outs)]


def _rms_rescaled(t: tf.Tensor) -> tf.Tensor:
    """``t``, whose backward signal is rescaled per sample to the RMS of ``t``."""

    @tf.custom_gradient
    def rescale(v: tf.Tensor) -> Any:
        def grad(g: tf.Tensor) -> tf.Tensor:
            axes = list(range(1, len(v.shape)))
            # Divided by its largest entry first: squares of a large signal overflow.
            g = tf.math.divide_no_nan(g, tf.reduce_max(tf.abs(g), axis=axes, keepdims=True))
            rms_v = tf.sqrt(tf.reduce_mean(tf.square(v), axis=axes, keepdims=True))
            rms_g = tf.sqrt(tf.reduce_mean(tf.square(g), axis=axes, keepdims=True))
            return g * tf.math.divide_no_nan(rms_v, rms_g)

        return tf.identity(v), grad

    return rescale(t)


@register
class PatternAttribution(_PatternAnalyzer):
    """PatternAttribution: back-propagation with each kernel replaced by kernel x pattern."""

    name = "pattern.attribution"
    attribution = True
