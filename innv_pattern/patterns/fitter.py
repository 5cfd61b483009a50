"""The compiled per-batch work of a pattern fit, and where its sums accumulate.

A batch is one compiled forward pass (a finiteness check; the sums of every
kernel op under :data:`INLINE_KERNEL` weights, see
:func:`~innv_pattern.patterns.sums.batch_sums`: one kernel gradient per
statistic; the input, linear output and regime of each larger op), then,
per larger op, one compiled call for its sums, added to float64
accumulators and freed before the next op's are computed.  Sums are
reduced over replicas.

The kernel-sized work of an op (its kernel gradients and the float64 add)
does not depend on the batch size, so an op whose batch of inputs and
outputs is small next to its kernel (Dense layers, late convolutions) keeps
its forward values of a few batches (at most :data:`BUFFER_FRACTION` of its
kernel's size) and computes its sums once on all of them: the same sums,
taken over more samples at once.  Early convolutions, whose activations
outweigh their kernels, are summed every batch.

The float64 accumulators live where memory is cheapest:

* on the host (numpy) when every device of the strategy is a CPU: each op's
  float32 sums are added in place, so no second float64 copy of the
  statistics exists (on a CPU, device memory is host memory);
* on the devices (float64 variables) otherwise, each op's sums added on
  their device, so that GPUs do not ship kernel-sized sums to the host.

A batch adds all of its sums or none: :meth:`Fitter.check` refuses a batch of
the wrong structure, shape or dtype on the host before the step runs, and
the forward pass decides, before any sum is computed, that every kernel op's
input and output are finite and small enough that no float32 sum of their
products (over the batches an op keeps) can overflow
(:func:`_sums_fit_float32`); else :meth:`Fitter.step` raises and the batch
is not kept.

Example:
    >>> import keras, numpy as np, tensorflow as tf
    >>> from innv_pattern.patterns import PatternComputer
    >>> inp = keras.Input((3,))
    >>> computer = PatternComputer(keras.Model(inp, keras.layers.Dense(2, name="d")(inp)))
    >>> fitter = Fitter(computer.plan)
    >>> acc = fitter.accumulators()
    >>> x = tf.ones((4, 3))
    >>> fitter.shift(x)
    >>> fitter.check(x, index=0)
    >>> fitter.step(acc, x)
    4
    >>> samples, stats = fitter.flush(acc)
    >>> samples, stats["d"].count
    (4, 4.0)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from innv_pattern.canonize import CanonicalGraph, KernelOp
from innv_pattern.patterns.estimators import POSITIVE, PatternStatistics
from innv_pattern.patterns.sums import batch_sums, channel_sums, finish

__all__ = ["FitPlan", "Fitter", "cpu_only"]

_SUM = tf.distribute.ReduceOp.SUM


def cpu_only(strategy: tf.distribute.Strategy) -> bool:
    """Whether every device the strategy computes on is a CPU."""
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's default placement
        return not tf.config.list_logical_devices("GPU")
    return all(tf.DeviceSpec.from_string(d).device_type.upper() == "CPU" for d in devices)


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """What a fit computes, fixed when a :class:`PatternComputer` is made.

    Attributes:
        graph: The model's canonical graph (``Add`` merges as kernel ops).
        ops: Its kernel ops, each with its kernel's layout (``op.layout``).
        regimes: The statistics the estimators need (``regimes`` of
            :class:`~innv_pattern.patterns.estimators.PatternStatistics`).
        regime_sources: Per op name, the tensor whose sign is its regime, or
            ``None`` for one regime (see ``computer.regime_sources``).
        strategy: The ``tf.distribute.Strategy`` the batches run under.
        model_name: The model's name, for messages.
    """

    graph: CanonicalGraph
    ops: tuple[KernelOp, ...]
    regimes: bool | str
    regime_sources: Mapping[str, int | None]
    strategy: tf.distribute.Strategy
    model_name: str


class Fitter:
    """The compiled functions of a fit's :class:`FitPlan`, and the shift they use.

    Accumulators are made afresh for each ``compute`` call and passed in as
    arguments, so the functions are traced once per computer while the
    accumulators' memory is freed after every call.
    """

    def __init__(self, plan: FitPlan) -> None:
        self.plan = plan
        self.on_host = cpu_only(plan.strategy)
        shapes, dtypes = plan.graph.shapes, plan.graph.dtypes
        # In the op's compute dtype: float32, or float64 for a float64 model.
        self.means = {op.name: tf.Variable(tf.zeros(shapes[op.inputs[0]][op.channel_axis],
                                                    dtypes[op.inputs[0]]), trainable=False)
                      for op in plan.ops}
        self.y_shifts = {op.name: tf.Variable(tf.zeros(int(np.prod(
            op.layout.neuron_shape)), dtypes[op.inputs[0]]), trainable=False)
            for op in plan.ops}
        options = dict(reduce_retracing=True, autograph=False)
        # Small kernels' sums are computed in the forward call itself (each op costs a
        # call otherwise); large kernels' in a call of their own, one op at a time.
        self._inline = [int(np.prod(op.kernel_shape)) < INLINE_KERNEL for op in plan.ops]
        self._forward_values = tf.function(self._distributed_forward, **options)
        self._op_sums = [tf.function(functools.partial(self._distributed_op_sums, i), **options)
                         for i in range(len(plan.ops))]
        self._periods: list[int] | None = None  # batches each op keeps before summing
        self.shift = tf.function(self._distributed_shift, **options)

    def accumulators(self) -> dict[str, Any]:
        """Zero float64 accumulators (numpy arrays or variables) for every batch sum.

        They also hold, under ``"kept"``, the forward values of the batches
        each op has not summed yet (:meth:`flush` sums them).
        """
        zeros = (np.zeros if self.on_host else
                 lambda shape: tf.Variable(tf.zeros(shape, tf.float64), trainable=False))
        acc: dict[str, Any] = {"samples": np.zeros(()), "kept": [[] for _ in self.plan.ops]}
        for op in self.plan.ops:
            acc[op.name] = {k: zeros(shape) for k, shape in self._sum_shapes(op).items()}
        return acc

    def step(self, acc: dict[str, Any], x: Any, index: int = 0) -> int:
        """Adds one (distributed) batch to ``acc``; returns its number of samples.

        Args:
            acc: From :meth:`accumulators`.
            x: A batch that passed :meth:`check`.
            index: The batch's index in the pass (0-based), for error messages.

        Raises:
            ValueError: If a sum of the batch could be non-finite (NaN or
                infinite inputs, or an overflow inside the model); nothing of
                the batch was added to ``acc``.
        """
        values, sums, finite, samples = self._forward_values(x)
        finite, samples = np.asarray(finite), float(samples)
        if not finite.all():
            raise ValueError(self._non_finite_message(x, finite, index))
        if self._periods is None:
            self._periods = self._kept_batches(samples)
        acc["samples"] += samples
        for name, op_sums in sums.items():
            self._add(acc[name], op_sums)
        large = [i for i, inline in enumerate(self._inline) if not inline]
        for i, value in zip(large, values):
            acc["kept"][i].append(value)
        for i in large:
            if len(acc["kept"][i]) >= self._periods[i]:
                self._add_kept(acc, i)
        return int(samples)

    def _kept_batches(self, samples: float) -> list[int]:
        """Per op, how many batches (of ``samples``) it keeps before summing them.

        An op keeps batches while their inputs, outputs and regimes take at
        most :data:`BUFFER_FRACTION` of its kernel's size, and at most
        :data:`MAX_KEPT` (over all replicas) so that a float32 sum over them
        stays within the bound :func:`_sums_fit_float32` checks.
        """
        shapes, periods = self.plan.graph.shapes, []
        most = max(1, MAX_KEPT // self.plan.strategy.num_replicas_in_sync)
        for op in self.plan.ops:
            per_sample = (2 * np.prod(shapes[op.outputs[0]][1:])
                          + np.prod(shapes[op.inputs[0]][1:]))
            kept = BUFFER_FRACTION * np.prod(op.kernel_shape) / (samples * per_sample)
            periods.append(int(min(max(kept, 1), most)))
        return periods

    def _add_kept(self, acc: dict[str, Any], i: int) -> None:
        """Sums the batches op ``i`` kept and adds them to ``acc``."""
        op, kept = self.plan.ops[i], acc["kept"][i]
        if not kept:
            return
        sums = self._op_sums[i](list(kept))
        kept.clear()
        self._add(acc[op.name], sums)

    def _add(self, target: dict[str, Any], sums: dict[str, tf.Tensor]) -> None:
        """Adds float32 sums to float64 accumulators, in place (on their device)."""
        for name, value in sums.items():
            if self.on_host:
                np.add(target[name], value.numpy(), out=target[name])
            else:
                target[name].assign_add(tf.cast(value, tf.float64))

    def check(self, x: Any, index: int) -> None:
        """Raises ``ValueError`` or ``TypeError`` naming batch ``index`` if ``x`` does not fit.

        Host-side checks of the structure, the shape (all but the batch size)
        and the dtype (numbers) of each model input: cheap, and run before
        anything is compiled or added.
        """
        graph, where = self.plan.graph, f"Batch {index} (0-based) of the data"
        xs = self._model_inputs(x, where)
        for i, (t, key) in enumerate(zip(xs, graph.inputs)):
            expected = tuple(graph.shapes[key])
            name = f"input {i} ('{key}')" if len(xs) > 1 else "the model input"
            for part in self.plan.strategy.experimental_local_results(t):
                shape, dtype = _shape_and_dtype(part)
                if dtype is None:
                    raise TypeError(f"{where} holds {type(part).__name__} values of dtype "
                                    f"{getattr(part, 'dtype', '?')} for {name}; expected numbers "
                                    "(float, int or bool arrays or tensors).")
                if len(shape) != len(expected) or any(
                        e is not None and s != e for s, e in zip(shape[1:], expected[1:])):
                    hint = (" Integer vectors look like labels: pass x, or (x, y) tuples."
                            if len(shape) == 1 and (dtype.is_integer or dtype.is_bool) else "")
                    raise ValueError(f"{where} has shape {shape} (dtype {dtype.name}) for "
                                     f"{name}; the model takes {expected} (None: any size)."
                                     + hint)

    def _model_inputs(self, element: Any, where: str = "The data") -> list[Any]:
        """``x``, or ``x`` of ``(x, y[, sample_weight])``, as a list of model inputs."""
        graph = self.plan.graph
        x = element[0] if isinstance(element, tuple) else element
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(xs) != len(graph.inputs):
            raise ValueError(f"{where}: model '{self.plan.model_name}' has {len(graph.inputs)} "
                             f"inputs; received batches with {len(xs)} (pass x as a tuple of "
                             "arrays, and (x, y) tuples for x with labels).")
        return xs

    def _non_finite_message(self, x: Any, finite: np.ndarray, index: int) -> str:
        where = f"Batch {index} (0-based) of the data"
        bad_input = any(not np.isfinite(np.asarray(part, np.float64)).all()
                        for t in self._model_inputs(x)
                        for part in self.plan.strategy.experimental_local_results(t))
        if bad_input:
            problem = "holds NaN or infinite values"
        else:
            first = self.plan.ops[int(np.argmin(finite))].name
            problem = (f"is finite, but the float32 sums of layer '{first}' are not (an overflow "
                       "inside the model)")
        return (f"{where} {problem}; it was not added to the statistics, which keep every "
                "earlier batch. Clean or drop the batch and resume.")

    def _sum_shapes(self, op: KernelOp) -> dict[str, tuple[int, ...]]:
        """Shapes of :func:`batch_sums`' outputs."""
        layout = op.layout
        shapes = self.plan.graph.shapes
        out = tuple(shapes[op.outputs[0]][1:])
        regimes = self.plan.regimes
        names = (["sum_xy"] if not regimes else ["sum_x_pos", "sum_xy_pos"] if
                 regimes == POSITIVE else ["sum_x_pos", "sum_xy_pos", "sum_xy_neg"])
        total = (1,) + out if layout.padded else (out[op.channel_axis],)
        result = {name: layout.kernel_shape for name in names}
        result.update({"total:" + name: total for name in names
                       + (["sum_xy"] if regimes == POSITIVE else [])})
        result.update(x_total=(1,) + tuple(shapes[op.inputs[0]][1:]), count=(), images=())
        return result

    def _inputs(self, element: Any) -> list[tf.Tensor]:
        """The model inputs of a batch, cast to the model's dtypes."""
        graph = self.plan.graph
        return [tf.cast(t, graph.dtypes[k]) for t, k in zip(self._model_inputs(element),
                                                              graph.inputs)]

    def _forward(self, xs: list[tf.Tensor]) -> list[tuple[KernelOp, tf.Tensor, tf.Tensor,
                                                          tf.Tensor, tf.Tensor]]:
        """The forward pass; ``(op, input, linear output, regime, kernel)`` of each kernel op.

        The regime is the positive sign of the op's regime source
        (:func:`~innv_pattern.patterns.computer.regime_sources`): its own
        output, the output of the ``Add`` it feeds, or ones where no
        rectifier gates it.
        """
        found = []

        def call(op: Any, *args: tf.Tensor) -> list[tf.Tensor]:
            if not isinstance(op, KernelOp):
                return op.forward(*args)
            kernel, bias = op.get_kernel(), op.get_bias()
            y = op.linear(args[0], kernel)
            out = y if bias is None else y + op.broadcast_bias(bias)
            found.append((op, args[0], y, out, kernel))
            return [out]

        _, values = self.plan.graph.run(xs, call=call, keep=True)
        sources = self.plan.regime_sources
        return [(op, x, y, tf.ones_like(out) if sources[op.name] is None
                 else values[sources[op.name]], kernel) for op, x, y, out, kernel in found]

    def _batch_sums(self, op: KernelOp, x: tf.Tensor, y: tf.Tensor, pos: tf.Tensor,
                    kernel: tf.Tensor) -> dict[str, tf.Tensor]:
        """The sums of one op over some samples; ``pos``: their positive regime."""
        return batch_sums(op, op.layout, x, y, pos, self.means[op.name],
                          self.y_shifts[op.name], self.plan.regimes, kernel)

    def _replica_forward(self, x: Any) -> tuple[list[tuple[tf.Tensor, ...]], dict[str, Any],
                                                 tf.Tensor, tf.Tensor]:
        """The forward pass of a batch on one replica.

        Returns ``(input, linear output, positive regime)`` of each large op,
        the (all-reduced) sums of each small op, finiteness per op (all
        replicas) and the number of samples (all replicas).
        """
        xs = self._inputs(x)
        forward = self._forward(xs)
        risky = [tf.logical_not(_sums_fit_float32(x_in, y, out, self.means[op.name],
                                                  self.y_shifts[op.name]))
                 for op, x_in, y, out, _ in forward]
        total = {"risky": tf.cast(tf.stack(risky), tf.float64),
                 "samples": tf.cast(tf.shape(xs[0])[0], tf.float64)}
        values = []
        for (op, x_in, y, out, kernel), inline in zip(forward, self._inline):
            if inline:
                total[op.name] = self._batch_sums(op, x_in, y, out > 0, kernel)
            else:
                values.append((x_in, y, out > 0))
        total = _all_reduce(total)
        finite, samples = tf.equal(total.pop("risky"), 0.0), total.pop("samples")
        return values, total, finite, samples

    def _distributed_forward(self, x: Any) -> tuple[Any, dict[str, Any], tf.Tensor, tf.Tensor]:
        values, sums, finite, samples = self.plan.strategy.run(self._replica_forward, args=(x,))
        local = self.plan.strategy.experimental_local_results
        return values, local(sums)[0], local(finite)[0], local(samples)[0]

    def _replica_op_sums(self, i: int, kept: list[tuple[tf.Tensor, ...]]) -> dict[str, tf.Tensor]:
        op = self.plan.ops[i]
        x, y, pos = (tf.concat(list(parts), 0) if len(parts) > 1 else parts[0]
                     for parts in zip(*kept))
        return _all_reduce(self._batch_sums(op, x, y, pos, op.get_kernel()))

    def _distributed_op_sums(self, i: int, kept: list[tuple[Any, ...]]) -> dict[str, tf.Tensor]:
        """Op ``i``'s sums over the batches it kept (all-reduced)."""
        per_replica = self.plan.strategy.run(functools.partial(self._replica_op_sums, i),
                                          args=(kept,))
        return self.plan.strategy.experimental_local_results(per_replica)[0]

    def _replica_means(self, x: Any) -> dict[str, Any]:
        _, values = self.plan.graph.run(self._inputs(x), keep=True)
        sums = {}
        for op in self.plan.ops:
            v = values[op.inputs[0]]
            n = tf.cast(tf.size(v), tf.float64) / tf.cast(tf.shape(v)[op.channel_axis], tf.float64)
            sums[op.name] = (tf.cast(channel_sums(v, op.channel_axis), tf.float64), n)
        return _all_reduce(sums)

    def _distributed_shift(self, x: Any) -> None:
        """Sets the shift: the input channel means of batch ``x``, and ``w^T`` of them."""
        per_replica = self.plan.strategy.run(self._replica_means, args=(x,))
        total = self.plan.strategy.experimental_local_results(per_replica)[0]
        for op in self.plan.ops:
            layout = op.layout
            total_x, n = total[op.name]
            mean = tf.cast(total_x / tf.maximum(n, 1.0), self.means[op.name].dtype)
            self.means[op.name].assign(mean)
            y_shift = tf.reduce_sum(op.get_kernel() * layout.shift_kernel(mean),
                                    axis=layout.fan_in_axes)
            self.y_shifts[op.name].assign(tf.reshape(y_shift, [-1]))

    def flush(self, acc: dict[str, Any]) -> tuple[int, dict[str, PatternStatistics]]:
        """The samples and float64 statistics (by pattern key) ``acc`` holds.

        Empties ``acc`` op by op; the calls of a shared layer add up to one
        statistics object.
        """
        for i in range(len(self.plan.ops)):
            self._add_kept(acc, i)
        acc.pop("kept")
        samples = int(np.asarray(acc.pop("samples")))
        statistics = {}
        for op in self.plan.ops:
            layout = op.layout
            sums = {k: np.asarray(v) if self.on_host else v.numpy()
                    for k, v in acc.pop(op.name).items()}
            found = finish(op, layout, sums, self.means[op.name])
            x_shift = layout.shift_kernel(tf.cast(self.means[op.name], tf.float64)).numpy()
            y_shift = np.reshape(self.y_shifts[op.name].numpy(), layout.neuron_shape)
            stats = PatternStatistics(layout.kernel_shape, layout.neuron_axes, self.plan.regimes,
                                      layout.x_shape)
            stats.update(found, x_shift, y_shift, copy=False)
            key = op.pattern_key
            statistics[key] = statistics[key].merge(stats) if key in statistics else stats
        return samples, statistics


#: An op keeps batches while their inputs, outputs and regimes (float32) take at
#: most this fraction of its kernel's size: half a float32 kernel, against the
#: 12 bytes per weight of its float32 sums and 24 of its float64 accumulators.
BUFFER_FRACTION = 0.5
#: Kernels of fewer weights get their sums in the forward call (their float32 sums,
#: 12 bytes per weight, coexist); larger ones one op at a time, in calls of their own.
INLINE_KERNEL = 1 << 20
#: Most batches (times replicas) summed at once: a float32 sum over them stays
#: below ``MAX_KEPT * _FLOAT32_SUM_BOUND``, well within float32's range.
MAX_KEPT = 64

#: Bound on any float32 batch sum of products of a kernel op's (shifted) input and
#: output entries: well below float32's largest value (3.4e38).
_FLOAT32_SUM_BOUND = 1e36


def _sums_fit_float32(x: tf.Tensor, y: tf.Tensor, out: tf.Tensor, mean: tf.Tensor,
                      y_shift: tf.Tensor) -> tf.Tensor:
    """Whether every batch sum of one kernel op is certainly finite in float32.

    True iff the op's input and output are finite and ``count * max|x - mean|
    * max|y - y_shift|`` (``count``: samples times positions) stays below
    :data:`_FLOAT32_SUM_BOUND`, which bounds every entry of every batch sum
    (sums of ``patch(x) * g`` with ``|g| <= max(1, |y - y_shift|)``).  Sums
    of absolute values propagate NaN and infinity, unlike maxima.
    """
    ax, aout = tf.abs(x), tf.abs(out)
    finite = tf.math.is_finite(tf.reduce_sum(ax)) & tf.math.is_finite(tf.reduce_sum(aout))
    mx = tf.reduce_max(ax) + tf.reduce_max(tf.abs(mean))
    my = tf.maximum(tf.reduce_max(tf.abs(y)) + tf.reduce_max(tf.abs(y_shift)), 1.0)
    count = tf.cast(tf.size(y), mx.dtype)
    return finite & (count * mx * my < _FLOAT32_SUM_BOUND)


def _shape_and_dtype(t: Any) -> tuple[tuple[int | None, ...], tf.DType | None]:
    """Shape and dtype of an array-like; dtype ``None`` unless numbers (float, int, bool)."""
    if not hasattr(t, "shape") or not hasattr(t, "dtype"):
        t = np.asarray(t)
    try:
        dtype = tf.as_dtype(t.dtype)
    except TypeError:  # numpy strings and objects
        return tuple(t.shape), None
    numeric = dtype.is_floating or dtype.is_integer or dtype.is_bool
    return tuple(t.shape), dtype if numeric else None


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
