"""The analyzer base class: one verb (``analyze``), its declarations, the registry.

An analyzer class declares, once, everything the rest of the package reads
about it: its ``name`` (iNNvestigate's), ``display_name`` (the paper's
spelling), ``kind`` (what it shows: ``"function"``, ``"signal"`` or
``"attribution"``, after Fig. 1 of Kindermans et al.), ``needs_patterns`` and
``start`` (where its reverse pass starts).  :func:`register` records it; the
viz, demo, evaluate and command-line modules read the declarations through
:func:`innv_pattern.analyzers.analyzer_classes`.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from innv_pattern.canonize import canonize
from innv_pattern.rule_maps import RULE_MAPS, RuleMap, bind, fuse_rectifiers, warn_fallbacks

__all__ = ["KINDS", "NEURON_SELECTION_MODES", "STARTS", "Analyzer", "register"]

NEURON_SELECTION_MODES = ("max_activation", "index", "all")
#: What an analyzer shows (Fig. 1 of the paper): a function of the model, the
#: signal in the input, or an attribution (contributions).
KINDS = ("function", "signal", "attribution")
#: Where the reverse pass starts at the selected output: 1, the output's value,
#: its positive part (Deep Taylor), or nowhere (the analysis is not a reverse pass).
STARTS = ("one", "value", "positive value", "none")
_REGISTRY: dict[str, type["Analyzer"]] = {}


def register(cls: type["Analyzer"]) -> type["Analyzer"]:
    """Class decorator: makes ``cls`` available to ``create_analyzer`` under ``cls.name``.

    Raises:
        ValueError: If a declaration is missing or not one of the accepted values.
    """
    if not cls.name or not cls.display_name:
        raise ValueError(f"{cls.__name__} needs a name and a display_name to be registered.")
    if cls.kind not in KINDS or cls.start not in STARTS:
        raise ValueError(f"{cls.__name__}: kind must be one of {KINDS} and start one of "
                         f"{STARTS}; received kind={cls.kind!r}, start={cls.start!r}.")
    _REGISTRY[cls.name] = cls
    return cls


class Analyzer:
    """Base class: the forward and reverse pass of a batch in one ``tf.function``.

    Subclasses declare ``name``, ``display_name``, ``kind``, ``needs_patterns``
    and ``start`` (see the module docstring), and say which rule goes to which
    layer: ``rule_family`` (a key of ``RULE_MAPS``) or their own
    :meth:`rule_map`.  They may override :meth:`_postprocess`.

    Args:
        model: A functional or Sequential Keras 3 model with one output.
        neuron_selection_mode: ``"max_activation"`` (per sample, the largest
            output), ``"index"`` (``analyze(x, neuron_selection=i)``) or
            ``"all"`` (every output at once).
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    kind: ClassVar[str] = "function"
    needs_patterns: ClassVar[bool] = False
    start: ClassVar[str] = "one"
    #: One of the methods Kindermans et al. (2018) compare (the demo shows these).
    in_paper: ClassVar[bool] = False
    #: Derived from ``start``: the reverse pass starts from the output's value.
    start_from_value: ClassVar[bool] = False
    rule_family: ClassVar[str] = "gradient"
    #: ``Add``-type merges as kernel ops with fixed weights (see ``canonize``).
    merge_kernels: ClassVar[bool] = False
    jit_compile: bool = False
    #: Bind each z-rule and the ReLU after it as one rule where that is exact
    #: (``rule_maps.fuse_rectifiers``); ``create_analyzer(..., fast_path=False)``
    #: binds rule by rule.
    fast_path: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.start_from_value = cls.start in ("value", "positive value")

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
        warn_fallbacks(self._graph, self.rule_map(), self.name)

    # -- set-up ------------------------------------------------------------
    def _build(self) -> None:
        """(Re)binds the rules and compiles the batch function."""
        self._rules = bind(self._graph, self.rule_map())
        if self.start_from_value and self.fast_path:
            self._rules = fuse_rectifiers(self._graph, self._rules)
        # No autograph: the batch function has no tensor-dependent Python control
        # flow, and tracing without it is about a third faster.
        self._batch_fn = tf.function(self._analyze_batch, reduce_retracing=True,
                                     jit_compile=self.jit_compile, autograph=False)

    def rule_map(self) -> RuleMap:
        """Which configured rule goes to which layer (first match wins)."""
        return RULE_MAPS[self.rule_family]

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
        if self.start == "positive value":
            return tf.stop_gradient(start * tf.nn.relu(y))
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

