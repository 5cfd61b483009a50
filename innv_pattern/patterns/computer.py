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
import warnings
from typing import Any, Iterable

import keras
import numpy as np
import tensorflow as tf

from innv_pattern import kinds
from innv_pattern.canonize import (ActivationOp, CanonicalGraph, MergeInputs, KernelOp, LayerOp,
                                   Op, canonize)
from innv_pattern.patterns.batches import generator_dataset, samples_in_batch, skipped_batches
from innv_pattern.patterns.estimators import (PatternStatistics, expand_pattern_type,
                                             parse_pattern, regimes_of)
from innv_pattern.patterns.io import Fingerprint, Patterns
from innv_pattern.patterns.fitter import FitPlan, Fitter
from innv_pattern.progress import Progress

__all__ = ["FEW_SAMPLES", "PatternComputer", "regime_sources"]

#: Samples in a regime below which a neuron's two-component pattern is reported as noisy.
FEW_SAMPLES = 30


class PatternComputer:
    """Accumulates pattern statistics over data and turns them into patterns.

    Every kernel layer (Dense, Conv1D/2D/3D, depthwise, separable and
    transposed convolutions; BatchNormalization folded in) is fitted in the
    same forward pass (see :mod:`~innv_pattern.patterns.fitter`).  Statistics
    are float64 sums, so a fit can be stopped, saved, resumed, and fits on
    separate shards merged (:meth:`save_state`, :meth:`load_state`).  They
    take 24 bytes per kernel weight (three kernel-shaped float64 sums; two
    with ``"relu.positive"``, one with ``"linear"``) plus an input and an
    output image per kernel layer, whatever the amount of data.

    Args:
        model: A functional or Sequential Keras 3 model.
        pattern_type: ``"relu"`` (both regimes of the two-component
            estimator with within-regime statistics; ``relu.positive`` is the
            primary pattern), ``"relu_eq7"`` (the same with Eq. 7's global mean
            of ``y``), ``"linear"``, or a tuple such as ``("linear", "relu")``:
            one pass fits them all.  ``"relu.positive"`` is the low-memory
            mode: only the pattern PatternNet and PatternAttribution use, the
            same values as ``"relu"``'s (it keeps the positive regime's float64
            sums alone: 16 bytes per weight instead of 24, and two kernel
            gradients per op instead of three); its statistics checkpoint,
            save, resume and merge like the others' (files of ``relu.positive``
            statistics resume ``relu.positive`` fits only) and take no
            ``shrinkage``.
        shrinkage: Pseudo-samples of the all-sample statistics added to
            each regime's (:meth:`PatternStatistics.finalize`): 0, the
            default, is the published estimator; a few (say 10) tame neurons
            with few samples in a regime, which :meth:`few_sample_neurons`
            counts and ``compute`` reports.
        strategy: A ``tf.distribute.Strategy``; by default the current one
            (``tf.distribute.get_strategy()`` when the computer is made).
            Each replica sums its share of every batch; the sums are reduced,
            so a distributed fit equals a single-device one.
    """

    def __init__(self, model: keras.Model, pattern_type: str | tuple[str, ...] = "relu",
                 strategy: tf.distribute.Strategy | None = None,
                 shrinkage: float = 0.0) -> None:
        self.model = model
        self.shrinkage = float(shrinkage)
        self.pattern_type = pattern_type
        self.types = expand_pattern_type(pattern_type)
        graph = canonize(model, merge_kernels=True)
        if not graph.kernel_ops:
            raise ValueError(f"Model '{model.name}' has no kernel layer (Dense or convolution); "
                             "there is nothing to fit patterns for.")
        _check_static_shapes(graph.kernel_ops, graph)
        #: The frozen plan of the fit (graph, kernel ops, regimes, strategy) the fitter runs.
        self.plan = FitPlan(graph, tuple(graph.kernel_ops), regimes_of(self.types),
                            regime_sources(graph), strategy or tf.distribute.get_strategy(),
                            model.name)
        self._keys: dict[str, KernelOp] = {}  # pattern key -> first call of the layer
        for op in self.plan.ops:
            self._keys.setdefault(op.pattern_key, op)  # a shared layer's calls share one
        self._state: dict[str, PatternStatistics] = {}
        self._samples = 0
        self._fitter: Fitter | None = None

    @property
    def strategy(self) -> tf.distribute.Strategy:
        """The ``tf.distribute.Strategy`` the fit runs under."""
        return self.plan.strategy

    @property
    def samples_seen(self) -> int:
        """Input samples accumulated so far (batch entries, not positions)."""
        return self._samples

    @property
    def statistics(self) -> dict[str, PatternStatistics]:
        """The accumulated statistics by pattern key (kernel-op name; one per shared layer)."""
        return dict(self._state)

    def reset(self) -> None:
        """Forgets all accumulated statistics."""
        self._state, self._samples = {}, 0

    def compute(self, data: Any, batch_size: int | None = None, steps: int | None = None,
                verbose: int = 1, resume: bool = False,
                checkpoint: str | os.PathLike | None = None,
                checkpoint_every: int = 100, accumulate: bool = False) -> Patterns:
        """Fits the patterns in one pass over ``data``.

        With ``checkpoint``, a fit that runs for hours loses at most
        ``checkpoint_every`` batches: the statistics are saved to that file
        (atomically: a crash mid-write leaves the previous checkpoint) every
        ``checkpoint_every`` batches, when the pass ends, and when it is
        interrupted (``KeyboardInterrupt``, a bad batch, any exception).
        After a crash, run the same call again with ``resume=True``: it loads
        the checkpoint and skips the samples the checkpoint has seen (a
        checkpoint of a completed pass skips everything and gives the same
        patterns again).  Each
        checkpoint costs one flush of the accumulators and one file write
        (24 bytes per kernel weight, the size of the statistics); after the
        first one the statistics so far and the running accumulators coexist,
        so a checkpointed fit holds twice the statistics' memory.

        Example:
            >>> computer = PatternComputer(model)  # doctest: +SKIP
            >>> patterns = computer.compute(x_train, checkpoint="fit.partial.h5",
            ...                             resume=True)  # doctest: +SKIP

        Args:
            data: A ``tf.data.Dataset`` of ``x`` or ``(x, y)`` batches (``x`` a
                tuple for several inputs), a numpy array of samples, or any
                iterable of such batches (an iterator is consumed: a later
                ``compute(..., accumulate=True)`` continues where this one
                stopped).
            batch_size: Batch size for a numpy array (default 32); must be
                ``None`` for anything already batched.
            steps: Stop after this many batches (default: all of ``data``;
                skipped batches do not count).
            verbose: 1 shows a progress bar (samples seen, throughput) and a
                summary of degenerate neurons, 0 is silent.
            resume: Continue the fit kept in ``checkpoint`` (required): if the
                file exists, replace the statistics by its own and skip, from
                the start of ``data``, the samples it holds beyond those the
                computer held (none unless ``accumulate``): whole batches of a
                dataset or iterable (a skip that ends inside a batch is an
                error: resume with the batching of the interrupted fit), a
                slice of a numpy array.  ``data`` must be the same stream, in
                the same order, as in the interrupted call.  Without the file,
                the fit starts as without ``resume``.
            accumulate: Add to the statistics this computer holds (from earlier
                calls or :meth:`load_state`) instead of starting afresh.  Off
                by default, so that calling ``compute`` twice never counts the
                same data twice.
            checkpoint: An HDF5 file to keep the statistics in while fitting
                (a :class:`Patterns` file with statistics; ``load_state``
                reads it).  Without ``resume`` an existing file is
                overwritten at the first checkpoint.
            checkpoint_every: Batches between checkpoints (positive).

        Returns:
            The :class:`~innv_pattern.patterns.Patterns` of all the data seen.
            If the pass is interrupted, the statistics of every batch that
            completed are kept (and saved to ``checkpoint``): :meth:`save_state`
            and resume later.

        Raises:
            ValueError: No data at all; a checkpoint that does not fit ``data``
                or the computer; or a batch of the wrong structure or shape,
                or with NaN or infinite values (or sums that overflow inside
                the model).  A bad batch's message gives its index (0-based,
                among the batches of this call after any skipped ones); it
                adds nothing, and every earlier batch is kept.
            TypeError: A batch that is not numbers (strings, objects).
        """
        if int(checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be a positive number of batches; received "
                             f"{checkpoint_every!r}.")
        if resume and checkpoint is None:
            if not accumulate:
                warnings.warn("compute(resume=True) without a checkpoint adds to the statistics "
                              "held: pass accumulate=True for that (resume=True now only "
                              "continues a checkpoint file).", FutureWarning, stacklevel=2)
            accumulate = True
        if not accumulate:
            self.reset()
        before = self._state, self._samples
        skip = (self._load_checkpoint(checkpoint, verbose)
                if resume and checkpoint is not None else 0)
        try:
            batches, target = self._batches(data, batch_size, skip)
        except BaseException:  # data that does not line up with the checkpoint: change nothing
            self._state, self._samples = before
            raise
        bar = _progress(data, target, steps, skip) if verbose else None
        saving = None if checkpoint is None else (os.fspath(checkpoint), int(checkpoint_every))
        seen = self._accumulate(itertools.islice(batches, steps), bar, saving)
        if bar is not None:
            bar.done()
        if seen == 0 and not self._state:
            raise ValueError("Received no data: the data gave no batch (or steps=0). Pass a "
                             "non-empty numpy array, tf.data.Dataset or iterable of batches.")
        patterns = self.patterns()
        if verbose:
            print(_degenerate_summary(patterns))
            few = {k: n for k, n in self.few_sample_neurons().items() if n}
            if few:
                print(f"Neurons with fewer than {FEW_SAMPLES} samples in a regime (noisy "
                      f"patterns; shrinkage={self.shrinkage:g}): "
                      + ", ".join(f"'{k}': {n}" for k, n in few.items()))
        return patterns

    def few_sample_neurons(self, fewer_than: int = 0) -> dict[str, int]:
        """Per layer, the neurons of a gated layer with few samples (``n_r < fewer_than``)
        in a regime, but enough for a pattern.

        ``fewer_than`` defaults to :data:`FEW_SAMPLES`.  Neurons with fewer
        samples than the estimator needs (:attr:`Estimator.min_samples`) are
        degenerate instead (counted with the patterns).
        """
        limit = fewer_than or FEW_SAMPLES
        least = min(parse_pattern(t)[0].min_samples for t in self.types)
        found = {}
        for key, op in self._keys.items():
            stats = self._state.get(key)
            if stats is None or not stats.regimes or self.plan.regime_sources[op.name] is None:
                found[key] = 0
                continue
            pos = np.asarray(stats.sums["count_pos"])
            neg = stats.count - pos
            few = ((pos >= least) & (pos < limit)) | ((neg >= least) & (neg < limit))
            found[key] = int(np.sum(few))
        return found

    def _load_checkpoint(self, checkpoint: str | os.PathLike, verbose: int) -> int:
        """Loads an existing checkpoint; returns the samples of the data it has seen."""
        if not os.path.exists(checkpoint):
            return 0
        held = self._samples
        self.load_state(checkpoint)
        skip = self._samples - held
        if skip < 0:
            raise ValueError(f"Checkpoint '{os.fspath(checkpoint)}' holds {self._samples} "
                             f"samples, fewer than the {held} this computer held before; it is "
                             "not a checkpoint of this fit. Remove it, or pass resume=False.")
        if verbose:
            print(f"Resuming from checkpoint '{os.fspath(checkpoint)}': {self._samples} samples; "
                  f"skipping the first {skip} of the data.")
        return skip

    def _accumulate(self, batches: Iterable[Any], bar: Progress | None,
                    saving: tuple[str, int] | None = None) -> int:
        """Runs the compiled step on each batch; keeps what completed, even if interrupted.

        ``saving`` is ``(checkpoint path, batches between checkpoints)``; a
        checkpoint flushes the accumulators into the state, starts fresh ones
        (a flush empties them) and saves the state.  The state is saved, too,
        when the pass ends or is interrupted with batches not yet saved.
        """
        self._fitter = self._fitter or Fitter(self.plan)
        acc = self._fitter.accumulators()
        start, seen, done, pending, unsaved = time.perf_counter(), 0, 0, 0, False
        try:
            for x in batches:
                self._fitter.check(x, done)
                if done == 0:
                    self._fitter.shift(x)
                seen += self._fitter.step(acc, x, done)
                done, pending = done + 1, pending + 1
                if saving is not None and pending == saving[1]:
                    self._merge(acc)  # before new accumulators: never three copies at once
                    pending = 0
                    acc = self._fitter.accumulators()
                    unsaved = True
                    self.save_state(saving[0])
                    unsaved = False
                if bar is not None:
                    rate = f"{seen / max(time.perf_counter() - start, 1e-9):.0f} samples/s"
                    if bar.unit == "sample":
                        bar.update(seen, rate)
                    else:
                        bar.update(done, f"{seen} samples, {rate}")
        finally:
            if pending:
                self._merge(acc)
            if saving is not None and (pending or unsaved):
                self.save_state(saving[0])
        return seen

    def _merge(self, acc: dict[str, Any]) -> None:
        """Flushes ``acc`` (emptying it) into the state."""
        samples, statistics = self._fitter.flush(acc)
        for name, stats in statistics.items():
            old = self._state.get(name)
            self._state[name] = old.merge(stats) if old is not None else stats
        self._samples += samples

    def patterns(self) -> Patterns:
        """Patterns from the statistics accumulated so far."""
        if not self._state:
            raise ValueError("No statistics yet: call compute(data) or load_state(path) first.")
        by_type: dict[str, dict[str, np.ndarray]] = {t: {} for t in self.types}
        degenerate = {}
        for key, op in self._keys.items():
            found, degenerate[key] = self._state[key].finalize(
                op.get_kernel().numpy(), self.types, np.float32, self.shrinkage)
            if self.plan.regime_sources[op.name] is None:  # one regime: no negative pattern
                degenerate[key] = {t: n for t, n in degenerate[key].items()
                                   if parse_pattern(t)[1] != "negative"}
            for concrete, pattern in found.items():
                by_type[concrete][key] = pattern
        return Patterns(by_type, self.pattern_type, Fingerprint.of(self.model, self.plan.graph),
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
        Continue with ``compute(more_data, accumulate=True)``.
        """
        if not sources:
            raise ValueError("load_state needs at least one pattern file or Patterns object.")
        state: dict[str, PatternStatistics] = {}
        samples = 0
        for source in sources:
            loaded = source if isinstance(source, Patterns) else Patterns.load(
                source, model=self.model)
            loaded.check_model(self.model, graph=self.plan.graph)
            for name, stats in self._checked_statistics(loaded).items():
                state[name] = state[name].merge(stats) if name in state else stats
            samples += loaded.samples_seen
        self._state, self._samples = state, samples

    def _checked_statistics(self, loaded: Patterns) -> dict[str, PatternStatistics]:
        if loaded.statistics is None:
            raise ValueError("These patterns carry no statistics (saved with statistics=False), "
                             "so they cannot be resumed or merged. Fit again.")
        for key, op in self._keys.items():
            stats, layout = loaded.statistics[key], op.layout
            expected = (layout.kernel_shape, layout.neuron_axes, self.plan.regimes, layout.x_shape)
            received = (stats.kernel_shape, stats.neuron_axes, stats.regimes, stats.x_shape)
            if received != expected:
                raise ValueError(
                    f"Statistics of layer '{key}' (kernel shape, neuron axes, regimes, "
                    f"x shape) = {received} do not fit this computer's {expected}; pattern "
                    f"type {loaded.pattern_type!r} was fitted, this computer fits "
                    f"{self.pattern_type!r}.")
        return dict(loaded.statistics)

    def _batches(self, data: Any, batch_size: int | None,
                 skip: int = 0) -> tuple[Iterable[Any], int | None]:
        """The per-step elements (distributed where needed) and the sample target.

        The first ``skip`` samples are left out: sliced off a numpy array,
        whole batches of anything else.
        """
        single = self.strategy.num_replicas_in_sync == 1
        if isinstance(data, np.ndarray):
            if skip > len(data):
                raise ValueError(f"Cannot skip the {skip} samples a checkpoint has seen: the "
                                 f"data has {len(data)}. Resume on the data of that fit.")
            data, size = data[skip:], batch_size or 32
            if single:  # plain slices: no input pipeline competing for the cores
                return (data[i:i + size] for i in range(0, len(data), size)), len(data)
            dataset = tf.data.Dataset.from_tensor_slices(data).batch(size)
            return self.strategy.experimental_distribute_dataset(dataset), len(data)
        if batch_size is not None:
            raise ValueError(f"batch_size must be None for {type(data).__name__} data, which is "
                             f"already batched; received batch_size={batch_size}. It applies "
                             "to numpy arrays only.")
        if isinstance(data, tf.data.Dataset):
            if skip and single:  # read the skipped batches once, then go on from there
                iterator = iter(data)
                skipped_batches((samples_in_batch(b) for b in iterator), skip)
                return iterator, None
            if skip:  # count them, then let the distributed pipeline skip them
                sizes = data.map(lambda *e: tf.shape(tf.nest.flatten(e)[0])[0])
                data = data.skip(skipped_batches(sizes.as_numpy_iterator(), skip))
            return (data if single else self.strategy.experimental_distribute_dataset(data)), None
        if not hasattr(data, "__iter__"):
            raise TypeError("Expected a numpy array, a tf.data.Dataset or an iterable of "
                            f"batches; received {type(data).__name__}.")
        iterator = iter(data)
        if skip:
            skipped_batches((samples_in_batch(b) for b in iterator), skip)
        return (iterator if single else self.strategy.experimental_distribute_dataset(
            generator_dataset(iterator))), None


def regime_sources(graph: CanonicalGraph) -> dict[str, int | None]:
    """Per kernel op: the tensor whose sign is its two-component regime, or ``None``.

    The regimes of the two-component estimator are those of the ReLU that
    gates a neuron.  When every reader of an op's output is a rectifier,
    reached through ops that keep the sign (single-input routing and max
    pooling), the regime is the sign of the op's own output.  When the output
    only feeds an ``Add`` (a merge kernel op, see ``canonize``) whose output a
    rectifier gates in turn, that rectifier gates the op's contribution too:
    the regime is the sign of the merge's output, element by element.  An op
    with no gate (the logits, a separable convolution's depthwise half, a
    layer read by anything else) has one regime, every sample (``None``), so
    its ``relu.*`` positive pattern is the linear one.

    Example:
        >>> import keras
        >>> from innv_pattern.canonize import canonize
        >>> inp = keras.Input((3,))
        >>> hidden = keras.layers.Dense(4, activation="relu", name="h")(inp)
        >>> out = keras.layers.Dense(2, name="o")(hidden)
        >>> graph = canonize(keras.Model(inp, out))
        >>> sources = regime_sources(graph)
        >>> sources["h"] == graph.ops[0].outputs[0], sources["o"]
        (True, None)
    """
    readers: dict[int, list[Op]] = {}
    for op in graph.ops:
        for key in op.inputs:
            readers.setdefault(key, []).append(op)

    def gated(key: int) -> bool:
        found = readers.get(key, [])
        return key not in graph.outputs and bool(found) and all(
            (isinstance(r, ActivationOp) and r.activation in kinds.RECTIFIERS)
            or (isinstance(r, LayerOp) and r.kind in (kinds.ROUTING, kinds.MAX)
                and len(r.inputs) == 1 and gated(r.outputs[0])) for r in found)

    def source(key: int) -> int | None:
        if gated(key):
            return key
        found = readers.get(key, [])
        merge = found[0] if len(found) == 1 and isinstance(found[0], MergeInputs) else None
        if merge is None or key in graph.outputs:
            return None
        adds = readers.get(merge.outputs[0], [])  # the merge kernel op reading the inputs
        return source(adds[0].outputs[0]) if len(adds) == 1 else None

    return {op.name: source(op.outputs[0]) for op in graph.kernel_ops}


def _check_static_shapes(ops: list[KernelOp], graph: Any) -> None:
    """The accumulators are shaped like one input and one output of each op."""
    unknown = [f"'{op.name}' {shape}" for op in ops
               for shape in (graph.shapes[op.inputs[0]], graph.shapes[op.outputs[0]])
               if None in tuple(shape)[1:]]
    if unknown:
        raise ValueError(
            "Pattern fitting needs fixed input and output shapes (but the batch size) for "
            f"every kernel layer; received unknown sizes at {unknown}. Fit on a copy of the "
            "model built with a fixed input shape, e.g. keras.Input((224, 224, 3)): the "
            "patterns depend on the kernels only and fit the original model too.")


def _progress(data: Any, samples: int | None, steps: int | None, skip: int) -> Progress:
    """Progress in samples when their number is known, else in batches of a dataset of
    known length, else samples counted up (see :mod:`innv_pattern.progress`)."""
    if samples is not None and steps is None:
        return Progress(samples, "sample")
    if isinstance(data, tf.data.Dataset) and not skip and int(data.cardinality()) >= 0:
        batches = int(data.cardinality())
        return Progress(batches if steps is None else min(batches, int(steps)), "batch")
    return Progress(None, "sample")


def _degenerate_summary(patterns: Patterns) -> str:
    lines = [f"  '{name}': " + ", ".join(f"{n} {concrete}" for concrete, n in counts.items() if n)
             for name, counts in patterns.degenerate.items() if any(counts.values())]
    if not lines:
        return f"Patterns fitted on {patterns.samples_seen} samples; no degenerate neuron."
    return (f"Patterns fitted on {patterns.samples_seen} samples. Degenerate neurons (too few "
            "samples in the regime, or a zero denominator; their patterns are zero):\n"
            + "\n".join(lines))
