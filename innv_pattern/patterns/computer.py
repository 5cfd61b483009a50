"""Fits the patterns of every kernel layer in one streaming pass over data.

Example:
    >>> import keras, numpy as np
    >>> from innv_pattern.patterns import PatternComputer
    >>> inp = keras.Input((4,))
    >>> hidden = keras.layers.Dense(3, activation="relu", name="hidden")(inp)
    >>> model = keras.Model(inp, keras.layers.Dense(2, name="out")(hidden))
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> patterns = PatternComputer(model, pattern_type="relu").compute(x, verbose=0)
    >>> patterns["hidden"].shape, patterns.samples_seen, patterns.types
    ((4, 3), 64, ('relu.positive', 'relu.negative'))
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf

from innv_pattern.canonize import KernelOp, canonize
from innv_pattern.patterns.estimators import PatternStatistics, expand_pattern_type
from innv_pattern.patterns.io import Fingerprint, Patterns
from innv_pattern.patterns.layout import layout_of
from innv_pattern.patterns.sums import batch_sums, channel_sums, widen

__all__ = ["PatternComputer"]

_SUM = tf.distribute.ReduceOp.SUM


class PatternComputer:
    """Accumulates pattern statistics over data and turns them into patterns.

    Every kernel layer (Dense, Conv1D/2D/3D, depthwise, separable and
    transposed convolutions; BatchNormalization folded in) is fitted in the
    same forward pass: one compiled ``tf.function`` per batch.  Statistics
    are float64 sums, so a fit can be stopped, saved, resumed, and fits on
    separate shards merged (:meth:`save_state`, :meth:`load_state`).

    Args:
        model: A functional or Sequential Keras 3 model.
        pattern_type: ``"relu"`` (both regimes of the two-component
            estimator; ``relu.positive`` is the primary pattern), ``"linear"``,
            or a tuple such as ``("linear", "relu")``.
        strategy: A ``tf.distribute.Strategy``; by default the current one
            (``tf.distribute.get_strategy()`` when the computer is made).
            Each replica sums its share of every batch; the sums are reduced,
            so a distributed fit equals a single-device one.
    """

    def __init__(self, model: keras.Model, pattern_type: str | tuple[str, ...] = "relu",
                 strategy: tf.distribute.Strategy | None = None) -> None:
        self.model = model
        self.pattern_type = pattern_type
        self.types = expand_pattern_type(pattern_type)
        self.strategy = strategy or tf.distribute.get_strategy()
        self._graph = canonize(model)
        self._ops: list[KernelOp] = self._graph.kernel_ops
        if not self._ops:
            raise ValueError(f"Model '{model.name}' has no kernel layer (Dense or convolution); "
                             "there is nothing to fit patterns for.")
        self._layouts = {op.name: layout_of(op) for op in self._ops}
        self._regimes = any(t.startswith("relu") for t in self.types)
        self._state: dict[str, PatternStatistics] = {}
        self._samples = 0
        self._fitter: _Fitter | None = None

    @property
    def samples_seen(self) -> int:
        """Input samples accumulated so far (batch entries, not positions)."""
        return self._samples

    @property
    def statistics(self) -> dict[str, PatternStatistics]:
        """The accumulated statistics by kernel-op name."""
        return dict(self._state)

    def reset(self) -> None:
        """Forgets all accumulated statistics."""
        self._state, self._samples = {}, 0

    def compute(self, data: Any, batch_size: int | None = None, steps: int | None = None,
                verbose: int = 1, resume: bool = False) -> Patterns:
        """Fits the patterns in one pass over ``data``.

        Args:
            data: A ``tf.data.Dataset`` of ``x`` or ``(x, y)`` batches (``x`` a
                tuple for several inputs), a numpy array of samples, or any
                iterable of such batches (an iterator is consumed: a later
                ``compute(..., resume=True)`` continues where this one stopped).
            batch_size: Batch size for a numpy array (default 32); must be
                ``None`` for anything already batched.
            steps: Stop after this many batches (default: all of ``data``).
            verbose: 1 shows a progress bar (samples seen, throughput) and a
                summary of degenerate neurons, 0 is silent.
            resume: Add to the statistics accumulated so far (by earlier calls
                or :meth:`load_state`) instead of starting afresh.

        Returns:
            The :class:`~innv_pattern.patterns.Patterns` of all the data seen.
            If the pass is interrupted, the statistics of every batch that
            completed are kept: :meth:`save_state` and resume later.
        """
        if not resume:
            self.reset()
        batches, target = self._batches(data, batch_size)
        self._fitter = self._fitter or _Fitter(self)
        acc = self._fitter.accumulators()
        bar = keras.utils.Progbar(target, verbose=verbose, unit_name="sample",
                                  stateful_metrics=["samples/s"]) if verbose else None
        start, seen, done = time.perf_counter(), 0, 0
        try:
            for x in itertools.islice(batches, steps):  # takes no batch beyond `steps`
                if done == 0:
                    self._fitter.shift(x)
                seen += int(self._fitter.step(acc, x))
                done += 1
                if bar is not None:
                    rate = seen / max(time.perf_counter() - start, 1e-9)
                    bar.update(seen, values=[("samples/s", rate)])
        finally:
            if done:
                self._fitter.flush(acc)
            del acc
        if seen == 0 and not self._state:
            raise ValueError("Received no data: the data gave no batch (or steps=0). Pass a "
                             "non-empty numpy array, tf.data.Dataset or iterable of batches.")
        patterns = self.patterns()
        if verbose:
            print(_degenerate_summary(patterns))
        return patterns

    def patterns(self) -> Patterns:
        """Patterns from the statistics accumulated so far."""
        if not self._state:
            raise ValueError("No statistics yet: call compute(data) or load_state(path) first.")
        by_type: dict[str, dict[str, np.ndarray]] = {t: {} for t in self.types}
        degenerate = {}
        for op in self._ops:
            kernel = op.get_kernel().numpy()
            found, degenerate[op.name] = self._state[op.name].finalize(kernel, self.types)
            for kind, pattern in found.items():
                by_type[kind][op.name] = pattern.astype(np.float32)
        return Patterns(by_type, self.pattern_type, Fingerprint.of(self.model, self._graph),
                        samples_seen=self._samples, degenerate=degenerate,
                        statistics=dict(self._state))

    def save_state(self, path: str | os.PathLike) -> None:
        """Saves the statistics so far (with their patterns) to an HDF5 file."""
        self.patterns().save(path)

    def load_state(self, *sources: str | os.PathLike | Patterns) -> None:
        """Replaces the statistics by the sum of those in ``sources``.

        Each source is a pattern file (or :class:`Patterns`) with statistics,
        fitted on this model; several sources (shards of a dataset, fitted
        apart) merge into exactly what one pass over all of them gives.
        Continue with ``compute(more_data, resume=True)``.
        """
        if not sources:
            raise ValueError("load_state needs at least one pattern file or Patterns object.")
        state: dict[str, PatternStatistics] = {}
        samples = 0
        for source in sources:
            loaded = source if isinstance(source, Patterns) else Patterns.load(
                source, model=self.model)
            loaded.check_model(self.model, graph=self._graph)
            for name, stats in self._checked_statistics(loaded).items():
                state[name] = state[name].merge(stats) if name in state else stats
            samples += loaded.samples_seen
        self._state, self._samples = state, samples

    def _checked_statistics(self, loaded: Patterns) -> dict[str, PatternStatistics]:
        if loaded.statistics is None:
            raise ValueError("These patterns carry no statistics (saved with statistics=False), "
                             "so they cannot be resumed or merged. Fit again.")
        for op in self._ops:
            stats, layout = loaded.statistics[op.name], self._layouts[op.name]
            expected = (layout.kernel_shape, layout.neuron_axes, self._regimes, layout.x_shape)
            received = (stats.kernel_shape, stats.neuron_axes, stats.regimes, stats.x_shape)
            if received != expected:
                raise ValueError(
                    f"Statistics of layer '{op.name}' (kernel shape, neuron axes, regimes, "
                    f"x shape) = {received} do not fit this computer's {expected}; pattern "
                    f"type {loaded.pattern_type!r} was fitted, this computer fits "
                    f"{self.pattern_type!r}.")
        return dict(loaded.statistics)

    def _batches(self, data: Any, batch_size: int | None) -> tuple[Iterable[Any], int | None]:
        """The per-step inputs (distributed where needed) and the sample target."""
        target = None
        if isinstance(data, np.ndarray):
            target = len(data)
            data = tf.data.Dataset.from_tensor_slices(data).batch(batch_size or 32)
        elif batch_size is not None:
            raise ValueError(f"batch_size must be None for {type(data).__name__} data, which is "
                             f"already batched; received batch_size={batch_size}. It applies "
                             "to numpy arrays only.")
        if isinstance(data, tf.data.Dataset):
            data = data.map(_first, num_parallel_calls=tf.data.AUTOTUNE)
            return self.strategy.experimental_distribute_dataset(data), target
        if not hasattr(data, "__iter__"):
            raise TypeError(f"Expected a numpy array, a tf.data.Dataset or an iterable of batches; "
                            f"received {type(data).__name__}.")
        if self.strategy.num_replicas_in_sync == 1:
            return (_first(*_as_tuple(b)) for b in data), target
        return self._batches(_generator_dataset(iter(data)), None)


def _as_tuple(batch: Any) -> tuple:
    return batch if isinstance(batch, tuple) else (batch,)


def _first(*element: Any) -> Any:
    """``x`` of an ``x`` or ``(x, y[, sample_weight])`` element."""
    return element[0]


def _generator_dataset(iterator: Iterator[Any]) -> tf.data.Dataset:
    first = next(iterator, None)
    if first is None:
        return tf.data.Dataset.from_tensors(np.zeros((0,))).take(0)
    signature = tf.nest.map_structure(
        lambda t: tf.TensorSpec((None,) + tuple(np.shape(t))[1:], tf.as_dtype(np.asarray(t).dtype)),
        first)

    def generate() -> Iterator[Any]:
        yield first
        yield from iterator

    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _all_reduce(nest: Any) -> Any:
    """Sums ``nest`` over replicas: one batched all-reduce per dtype, in a fixed order."""
    ctx = tf.distribute.get_replica_context()
    flat = tf.nest.flatten(nest)
    reduced = list(flat)
    for dtype in sorted({t.dtype for t in flat}, key=lambda d: d.name):
        where = [i for i, t in enumerate(flat) if t.dtype == dtype]
        for i, value in zip(where, ctx.all_reduce(_SUM, [flat[i] for i in where])):
            reduced[i] = value
    return tf.nest.pack_sequence_as(nest, reduced)


def _degenerate_summary(patterns: Patterns) -> str:
    lines = [f"  '{name}': " + ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
             for name, counts in patterns.degenerate.items() if any(counts.values())]
    if not lines:
        return f"Patterns fitted on {patterns.samples_seen} samples; no degenerate neuron."
    return (f"Patterns fitted on {patterns.samples_seen} samples. Degenerate neurons (never in "
            "the regime, or zero denominator; their patterns are zero):\n" + "\n".join(lines))


class _Fitter:
    """The compiled per-batch functions of a computer, and the shift they use.

    Accumulators are float64 variables made afresh for each ``compute`` call
    and passed in as arguments, so the functions are traced once per
    computer while the accumulators' memory is freed after every call.
    """

    def __init__(self, computer: PatternComputer) -> None:
        self.c = computer
        shapes = computer._graph.shapes
        self.means = {op.name: tf.Variable(tf.zeros(shapes[op.inputs[0]][op.channel_axis]),
                                           trainable=False) for op in computer._ops}
        self.y_shifts = {op.name: tf.Variable(tf.zeros(int(np.prod(
            computer._layouts[op.name].neuron_shape))), trainable=False) for op in computer._ops}
        self.step = tf.function(self._distributed_step, reduce_retracing=True, autograph=False)
        self.shift = tf.function(self._distributed_shift, reduce_retracing=True, autograph=False)

    def accumulators(self) -> dict[str, Any]:
        """Zero float64 variables for every array of every op's statistics."""
        acc: dict[str, Any] = {"samples": tf.Variable(tf.zeros((), tf.float64), trainable=False)}
        for op in self.c._ops:
            acc[op.name] = {k: tf.Variable(tf.zeros(shape, tf.float64), trainable=False)
                            for k, shape in self._empty(op).array_shapes().items()}
        return acc

    def _empty(self, op: KernelOp) -> PatternStatistics:
        layout = self.c._layouts[op.name]
        return PatternStatistics(layout.kernel_shape, layout.neuron_axes, self.c._regimes,
                                 layout.x_shape)

    def _inputs(self, x: Any) -> list[tf.Tensor]:
        graph = self.c._graph
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(xs) != len(graph.inputs):
            raise ValueError(f"Model '{self.c.model.name}' has {len(graph.inputs)} inputs; "
                             f"received batches with {len(xs)} (pass x as a tuple of arrays, "
                             "and (x, y) tuples for x with labels).")
        return [tf.cast(t, graph.dtypes[k]) for t, k in zip(xs, graph.inputs)]

    def _replica_sums(self, x: Any) -> dict[str, Any]:
        sums: dict[str, Any] = {}

        def call(op: Any, *args: tf.Tensor) -> list[tf.Tensor]:
            if not isinstance(op, KernelOp):
                return op.forward(*args)
            kernel, bias = op.get_kernel(), op.get_bias()
            y = op.linear(args[0], kernel)
            sums[op.name] = batch_sums(op, self.c._layouts[op.name], args[0], y,
                                       self.means[op.name], self.y_shifts[op.name],
                                       self.c._regimes, bias, kernel)
            return [y if bias is None else y + op.broadcast_bias(bias)]

        xs = self._inputs(x)
        self.c._graph.run(xs, call=call)
        sums["samples"] = tf.cast(tf.shape(xs[0])[0], tf.float64)
        return _all_reduce(sums)

    def _distributed_step(self, acc: dict[str, Any], x: Any) -> tf.Tensor:
        per_replica = self.c.strategy.run(self._replica_sums, args=(x,))
        total = self.c.strategy.experimental_local_results(per_replica)[0]
        for op in self.c._ops:
            wide = widen(total[op.name])
            for field, var in acc[op.name].items():
                var.assign_add(wide[field])
        acc["samples"].assign_add(total["samples"])
        return total["samples"]

    def _replica_means(self, x: Any) -> dict[str, Any]:
        _, values = self.c._graph.run(self._inputs(x), keep=True)
        sums = {}
        for op in self.c._ops:
            v = values[op.inputs[0]]
            n = tf.cast(tf.size(v), tf.float64) / tf.cast(tf.shape(v)[op.channel_axis], tf.float64)
            sums[op.name] = (tf.cast(channel_sums(v, op.channel_axis), tf.float64), n)
        return _all_reduce(sums)

    def _distributed_shift(self, x: Any) -> None:
        per_replica = self.c.strategy.run(self._replica_means, args=(x,))
        total = self.c.strategy.experimental_local_results(per_replica)[0]
        for op in self.c._ops:
            layout = self.c._layouts[op.name]
            total_x, n = total[op.name]
            mean = tf.cast(total_x / tf.maximum(n, 1.0), tf.float32)
            self.means[op.name].assign(mean)
            m = layout.shift_kernel(mean)
            y_shift = tf.reduce_sum(op.get_kernel() * m, axis=layout.fan_in_axes)
            self.y_shifts[op.name].assign(tf.reshape(y_shift, [-1]))

    def flush(self, acc: dict[str, Any]) -> None:
        """Moves what ``acc`` accumulated into the computer's float64 statistics.

        Each op's accumulators are freed as soon as they are read.
        """
        c = self.c
        samples = int(acc.pop("samples").numpy())
        for op in c._ops:
            layout = c._layouts[op.name]
            sums = {k: v.numpy() for k, v in acc.pop(op.name).items()}
            part = self._empty(op)
            x_shift = layout.shift_kernel(self.means[op.name]).numpy()
            y_shift = np.reshape(self.y_shifts[op.name].numpy(), layout.neuron_shape)
            part.update(sums, x_shift, y_shift)
            old = c._state.get(op.name)
            c._state[op.name] = old.merge(part) if old is not None else part
        c._samples += samples
