"""The compiled per-batch work of a pattern fit, and where its sums accumulate.

One ``tf.function`` runs the forward pass and every kernel op's batch sums
(:func:`~innv_pattern.patterns.sums.batch_sums`) on each replica and sums
them over replicas.  The float64 accumulators live where memory is cheapest:

* on the host (numpy) when every device of the strategy is a CPU: each op's
  float32 sums are added in place (from inside the step, through
  ``tf.numpy_function``), so no second float64 copy of the statistics
  exists (on a CPU, device memory is host memory).  On one device the sums
  of large kernels are computed one after the other, each once the previous
  ops' are added, so only one large op's float32 sums exist at a time;
* on the devices (float64 variables) otherwise, so that GPUs do not ship
  kernel-sized sums to the host after every batch.

A batch adds all of its sums or none: :meth:`Fitter.check` refuses a batch of
the wrong structure, shape or dtype on the host before the step runs, and the
step adds only if every sum it is about to add is finite (a NaN or infinite
input, or an overflow inside the model), else :meth:`Fitter.step` raises.
On one CPU device that is decided from the forward pass before any sum is
computed: every kernel op's input and output are finite and small enough
that no float32 sum of their products can overflow
(:func:`_sums_fit_float32`).  Otherwise the sums themselves are checked, and
every op's float32 sums of a batch wait for the last op's.

Example:
    >>> import keras, numpy as np, tensorflow as tf
    >>> from innv_pattern.patterns import PatternComputer
    >>> inp = keras.Input((3,))
    >>> computer = PatternComputer(keras.Model(inp, keras.layers.Dense(2, name="d")(inp)))
    >>> fitter = Fitter(computer)
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

from typing import Any

import numpy as np
import tensorflow as tf

from innv_pattern.canonize import KernelOp
from innv_pattern.patterns.estimators import PatternStatistics
from innv_pattern.patterns.sums import batch_sums, channel_sums, finish

__all__ = ["Fitter", "cpu_only"]

_SUM = tf.distribute.ReduceOp.SUM


def cpu_only(strategy: tf.distribute.Strategy) -> bool:
    """Whether every device the strategy computes on is a CPU."""
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's default placement
        return not tf.config.list_logical_devices("GPU")
    return all(tf.DeviceSpec.from_string(d).device_type.upper() == "CPU" for d in devices)


class Fitter:
    """The compiled functions of a :class:`PatternComputer`, and the shift they use.

    Accumulators are made afresh for each ``compute`` call and passed in as
    arguments, so the functions are traced once per computer while the
    accumulators' memory is freed after every call.
    """

    def __init__(self, computer: Any) -> None:
        self.c = computer
        self.on_host = cpu_only(computer.strategy)
        shapes, dtypes = computer._graph.shapes, computer._graph.dtypes
        # In the op's compute dtype: float32, or float64 for a float64 model.
        self.means = {op.name: tf.Variable(tf.zeros(shapes[op.inputs[0]][op.channel_axis],
                                                    dtypes[op.inputs[0]]), trainable=False)
                      for op in computer._ops}
        self.y_shifts = {op.name: tf.Variable(tf.zeros(int(np.prod(
            computer._layouts[op.name].neuron_shape)), dtypes[op.inputs[0]]), trainable=False)
            for op in computer._ops}
        options = dict(reduce_retracing=True, autograph=False)
        self._host: dict[str, Any] = {}  # the accumulators the host step adds to
        self._add_on_host = tf.function(self._distributed_host_add, **options)
        self._sequential = self.on_host and computer.strategy.num_replicas_in_sync == 1
        self._add_in_order = tf.function(self._sequential_host_add, **options)
        self._accumulate = tf.function(self._distributed_accumulate, **options)
        self.shift = tf.function(self._distributed_shift, **options)

    def accumulators(self) -> dict[str, Any]:
        """Zero float64 accumulators (numpy arrays or variables) for every batch sum."""
        zeros = (np.zeros if self.on_host else
                 lambda shape: tf.Variable(tf.zeros(shape, tf.float64), trainable=False))
        acc: dict[str, Any] = {"samples": zeros(())}
        for op in self.c._ops:
            acc[op.name] = {k: zeros(shape) for k, shape in self._sum_shapes(op).items()}
        return acc

    def step(self, acc: dict[str, Any], x: Any, index: int = 0) -> int:
        """Adds one (distributed) batch's sums to ``acc``; returns its number of samples.

        Args:
            acc: From :meth:`accumulators`.
            x: A batch that passed :meth:`check`.
            index: The batch's index in the pass (0-based), for error messages.

        Raises:
            ValueError: If a sum of the batch is not finite (NaN or infinite
                inputs, or an overflow inside the model); nothing of the batch
                was added to ``acc``.
        """
        if self.on_host:
            self._host = acc
            add = self._add_in_order if self._sequential else self._add_on_host
            samples, finite = add(x)
        else:
            samples, finite = self._accumulate(acc, x)
        finite = np.asarray(finite)
        if not finite.all():
            raise ValueError(self._non_finite_message(x, finite, index))
        return int(samples)

    def check(self, x: Any, index: int) -> None:
        """Raises ``ValueError`` or ``TypeError`` naming batch ``index`` if ``x`` does not fit.

        Host-side checks of the structure, the shape (all but the batch size)
        and the dtype (numbers) of each model input: cheap, and run before
        anything is compiled or added.
        """
        graph, where = self.c._graph, f"Batch {index} (0-based) of the data"
        xs = self._model_inputs(x, where)
        for i, (t, key) in enumerate(zip(xs, graph.inputs)):
            expected = tuple(graph.shapes[key])
            name = f"input {i} ('{key}')" if len(xs) > 1 else "the model input"
            for part in self.c.strategy.experimental_local_results(t):
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
        graph = self.c._graph
        x = element[0] if isinstance(element, tuple) else element
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(xs) != len(graph.inputs):
            raise ValueError(f"{where}: model '{self.c.model.name}' has {len(graph.inputs)} "
                             f"inputs; received batches with {len(xs)} (pass x as a tuple of "
                             "arrays, and (x, y) tuples for x with labels).")
        return xs

    def _non_finite_message(self, x: Any, finite: np.ndarray, index: int) -> str:
        where = f"Batch {index} (0-based) of the data"
        bad_input = any(not np.isfinite(np.asarray(part, np.float64)).all()
                        for t in self._model_inputs(x)
                        for part in self.c.strategy.experimental_local_results(t))
        if bad_input:
            problem = "holds NaN or infinite values"
        else:
            first = self.c._ops[int(np.argmin(finite))].name
            problem = (f"is finite, but the float32 sums of layer '{first}' are not (an overflow "
                       "inside the model)")
        return (f"{where} {problem}; it was not added to the statistics, which keep every "
                "earlier batch. Clean or drop the batch and resume.")

    def _sum_shapes(self, op: KernelOp) -> dict[str, tuple[int, ...]]:
        """Shapes of :func:`batch_sums`' outputs."""
        layout = self.c._layouts[op.name]
        shapes = self.c._graph.shapes
        out = tuple(shapes[op.outputs[0]][1:])
        names = ["sum_x_pos", "sum_xy_pos", "sum_xy_neg"] if self.c._regimes else ["sum_xy"]
        total = (1,) + out if layout.padded else (out[op.channel_axis],)
        result = {name: layout.kernel_shape for name in names}
        result.update({"total:" + name: total for name in names})
        result.update(x_total=(1,) + tuple(shapes[op.inputs[0]][1:]), count=(), images=())
        return result

    def _inputs(self, element: Any) -> list[tf.Tensor]:
        """The model inputs of a batch, cast to the model's dtypes."""
        graph = self.c._graph
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

        _, values = self.c._graph.run(xs, call=call, keep=True)
        sources = self.c._regime_sources
        return [(op, x, y, tf.ones_like(out) if sources[op.name] is None
                 else values[sources[op.name]], kernel) for op, x, y, out, kernel in found]

    def _batch_sums(self, op: KernelOp, x: tf.Tensor, y: tf.Tensor, regime: tf.Tensor,
                    kernel: tf.Tensor) -> dict[str, tf.Tensor]:
        """The sums of one op; its regime is ``regime > 0`` (see :meth:`_forward`)."""
        return batch_sums(op, self.c._layouts[op.name], x, y, regime, self.means[op.name],
                          self.y_shifts[op.name], self.c._regimes, kernel)

    def _replica_sums(self, x: Any) -> dict[str, Any]:
        xs = self._inputs(x)
        sums: dict[str, Any] = {op.name: self._batch_sums(op, x_in, y, out, kernel)
                                for op, x_in, y, out, kernel in self._forward(xs)}
        sums["samples"] = tf.cast(tf.shape(xs[0])[0], tf.float64)
        return _all_reduce(sums)

    def _distributed_sums(self, x: Any) -> dict[str, Any]:
        per_replica = self.c.strategy.run(self._replica_sums, args=(x,))
        return self.c.strategy.experimental_local_results(per_replica)[0]

    def _finite(self, total: dict[str, Any]) -> tf.Tensor:
        """One flag per op: every sum it adds is finite (a sum of its entries is: no NaN or inf)."""
        return tf.stack([tf.math.is_finite(tf.add_n([
            tf.cast(tf.reduce_sum(v), tf.float64) for v in total[op.name].values()]))
            for op in self.c._ops])

    def _distributed_accumulate(self, acc: dict[str, Any], x: Any) -> tuple[tf.Tensor, tf.Tensor]:
        total = self._distributed_sums(x)
        finite = self._finite(total)

        def add() -> tf.Tensor:
            for op in self.c._ops:
                for name, var in acc[op.name].items():
                    var.assign_add(tf.cast(total[op.name][name], tf.float64))
            acc["samples"].assign_add(total["samples"])
            return tf.constant(True)

        tf.cond(tf.reduce_all(finite), add, lambda: tf.constant(False))
        return total["samples"], finite

    def _distributed_host_add(self, x: Any) -> tuple[tf.Tensor, tf.Tensor]:
        total = self._distributed_sums(x)
        finite = self._finite(total)
        ok = tf.reduce_all(finite)
        for op in self.c._ops:  # one call per op: its sums are freed once added
            names = list(total[op.name])
            tf.numpy_function(self._adder(op.name, names),
                              [ok] + [total[op.name][n] for n in names], tf.bool, stateful=True)
        tf.numpy_function(self._adder("samples"), [ok, total["samples"]], tf.bool, stateful=True)
        return total["samples"], finite

    def _sequential_host_add(self, x: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """One device, host accumulators: the forward pass, then each op's sums in turn.

        The batch is checked on the forward values alone, so each op's sums
        can be added (and freed) before the next op's are computed.
        """
        xs = self._inputs(x)
        forward = self._forward(xs)
        finite = tf.stack([_sums_fit_float32(x_in, y, out, self.means[op.name],
                                             self.y_shifts[op.name])
                           for op, x_in, y, out, _ in forward])
        ok = tf.reduce_all(finite)
        done = [ok]
        for op, x_in, y, out, kernel in forward:
            large = int(np.prod(op.kernel_shape)) >= _LARGE_KERNEL
            # A large kernel's sums wait until every earlier op's are added.
            with tf.control_dependencies(done if large else [ok]):
                sums = self._batch_sums(op, x_in, y, out, kernel)
            names = list(sums)
            added = tf.numpy_function(self._adder(op.name, names),
                                      [ok] + [sums[n] for n in names], tf.bool, stateful=True)
            done = [added] if large else done + [added]
        samples = tf.cast(tf.shape(xs[0])[0], tf.float64)
        with tf.control_dependencies(done):
            tf.numpy_function(self._adder("samples"), [ok, samples], tf.bool, stateful=True)
        return tf.identity(samples), finite

    def _adder(self, key: str, names: list[str] | None = None) -> Any:
        """Adds its arguments to the host accumulators ``key`` (and ``names``), in place.

        The first argument is the batch's finiteness flag: nothing is added if it is false.
        Returns the flag (something to wait for).
        """
        def add(ok: np.ndarray, *values: np.ndarray) -> np.ndarray:
            if ok:
                targets = ([self._host[key]] if names is None
                           else [self._host[key][n] for n in names])
                for target, value in zip(targets, values):
                    np.add(target, value, out=target)
            return np.asarray(ok, dtype=bool)
        return add

    def _replica_means(self, x: Any) -> dict[str, Any]:
        _, values = self.c._graph.run(self._inputs(x), keep=True)
        sums = {}
        for op in self.c._ops:
            v = values[op.inputs[0]]
            n = tf.cast(tf.size(v), tf.float64) / tf.cast(tf.shape(v)[op.channel_axis], tf.float64)
            sums[op.name] = (tf.cast(channel_sums(v, op.channel_axis), tf.float64), n)
        return _all_reduce(sums)

    def _distributed_shift(self, x: Any) -> None:
        """Sets the shift: the input channel means of batch ``x``, and ``w^T`` of them."""
        per_replica = self.c.strategy.run(self._replica_means, args=(x,))
        total = self.c.strategy.experimental_local_results(per_replica)[0]
        for op in self.c._ops:
            layout = self.c._layouts[op.name]
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
        samples = int(np.asarray(acc.pop("samples")))
        statistics = {}
        for op in self.c._ops:
            layout = self.c._layouts[op.name]
            sums = {k: np.asarray(v) if self.on_host else v.numpy()
                    for k, v in acc.pop(op.name).items()}
            found = finish(op, layout, sums, self.means[op.name])
            x_shift = layout.shift_kernel(tf.cast(self.means[op.name], tf.float64)).numpy()
            y_shift = np.reshape(self.y_shifts[op.name].numpy(), layout.neuron_shape)
            stats = PatternStatistics(layout.kernel_shape, layout.neuron_axes, self.c._regimes,
                                      layout.x_shape)
            stats.update(found, x_shift, y_shift, copy=False)
            key = op.pattern_key
            statistics[key] = statistics[key].merge(stats) if key in statistics else stats
        return samples, statistics


#: Kernels of at least this many weights get their batch sums computed one at a
#: time (12 bytes per weight each); smaller ones run in parallel, as their memory
#: is small and serializing them costs time (14% for a 0.5M-weight CNN on 2 cores).
_LARGE_KERNEL = 1 << 20

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
