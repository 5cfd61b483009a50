"""Relevance bookkeeping: how much relevance each operation passes on, and where the rest goes.

An analyzer that starts its reverse pass from the explained output's value
(the LRP rules, PatternAttribution) distributes that value over the input.
:func:`relevance_flow` follows it operation by operation through the
analyzer's canonical graph: what each op receives (summed over its outputs),
what it passes on (summed over its inputs, counting only what flows through
that op where a tensor has several readers), their ratio, and where the rest
goes: into the biases (the z-rule), into degenerate neurons (a zero pattern:
PatternAttribution's ``w^T a`` is 1 for every other neuron), or at closed
ReLU gates (relevance arriving where the forward output is 0).

Each op's share is a vector-Jacobian product through the op's bound rule,
the very backward pass the analysis uses, so in a chain of ops the relevance
at the input is the output times the product of the shares.

Example:
    >>> import keras, numpy as np
    >>> import innv_pattern as ip
    >>> inp = keras.Input((4,))
    >>> hidden = keras.layers.Dense(5, activation="relu", use_bias=False, name="h")(inp)
    >>> model = keras.Model(inp, keras.layers.Dense(3, use_bias=False, name="out")(hidden))
    >>> x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    >>> flow = relevance_flow(ip.create_analyzer("lrp.z", model), x)
    >>> [(r["name"], r["type"]) for r in flow["ops"]]
    [('out', 'kernel'), ('h/activation', 'activation'), ('h', 'kernel')]
    >>> bool(np.allclose(flow["input"], flow["output"], rtol=1e-5))   # LRP-z without bias
    True
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import tensorflow as tf

from innv_pattern import kinds
from innv_pattern.canonize import ActivationOp, CanonicalGraph, KernelOp, LayerOp, Op
from innv_pattern.rules import ZRule

__all__ = ["relevance_flow"]

#: Activations whose closed gates (output 0) drop the relevance arriving there.
_GATED = kinds.RECTIFIERS


def relevance_flow(analyzer: Any, x: Any, neuron_selection: Any = None) -> dict[str, Any]:
    """Per operation, the relevance it receives, passes on, and loses, and to what.

    Args:
        analyzer: An analyzer whose reverse pass starts from the explained
            output's value (``lrp.*``, ``pattern.attribution``; also
            ``pattern.net``, ``deconvnet`` and ``guided_backprop``).
        x: A batch to explain, as for ``analyzer.analyze``.
        neuron_selection: As for ``analyzer.analyze``.

    Returns:
        A dict with, per sample (numpy float64 arrays of length ``n``):

        * ``"output"``: the explained output value (what the reverse pass starts from);
        * ``"input"``: the total relevance reaching the input(s);
        * ``"ops"``: one record per canonical op, output first, each a dict:
          ``name``; ``type`` (``"kernel"``, ``"activation"`` or the layer kind of
          :mod:`innv_pattern.kinds`); ``layer`` (the layer class, or the
          activation's name); ``received`` (summed over its outputs);
          ``passed`` (summed over what it gives its inputs); ``share``
          (``passed / received``, NaN where nothing arrives); ``closed_gates``
          (rectifiers: relevance arriving where the forward output is 0, else
          ``None``); ``to_bias`` (kernel ops with a z-rule: what the bias
          absorbs, else ``None``); ``to_degenerate`` and ``degenerate``
          (pattern analyzers' kernel ops: relevance arriving at, and the
          number of, neurons whose pattern is zero, else ``None``).

    Raises:
        ValueError: For an analyzer whose reverse pass starts from 1 (the
            gradient family), or a pattern analyzer without patterns.

    Example:
        >>> import keras, numpy as np
        >>> import innv_pattern as ip
        >>> inp = keras.Input((3,))
        >>> model = keras.Model(inp, keras.layers.Dense(2, name="d")(inp))
        >>> model.get_layer("d").set_weights([np.ones((3, 2), "float32"), np.ones(2, "float32")])
        >>> flow = relevance_flow(ip.create_analyzer("lrp.z", model), np.ones((1, 3), "float32"))
        >>> record = flow["ops"][0]
        >>> float(record["received"][0]), float(record["passed"][0]), float(record["to_bias"][0])
        (4.0, 3.0, 1.0)
    """
    _check_analyzer(analyzer)
    graph, rules, apply, values, start = _internals(analyzer, x, neuron_selection)
    relevance: dict[int, tf.Tensor] = {graph.outputs[0]: start}
    records = []
    for op in reversed(graph.ops):
        arriving = [relevance.get(k, tf.zeros_like(values[k])) for k in op.outputs]
        xs = [values[k] for k in op.inputs]
        given = _through_rule(apply, op, xs, arriving)
        for key, part in zip(op.inputs, given):
            relevance[key] = relevance[key] + part if key in relevance else part
        records.append(_record(op, rules[op.name], analyzer, values, arriving, given))
    reached = [relevance.get(k, tf.zeros_like(values[k])) for k in graph.inputs]
    return {"output": _per_sample(start), "input": sum(_per_sample(r) for r in reached),
            "ops": records}


def _check_analyzer(analyzer: Any) -> None:
    if not getattr(type(analyzer), "start_from_value", False):
        raise ValueError(
            f"relevance_flow follows relevance that starts from the explained output's value "
            f"(lrp.z, lrp.epsilon, pattern.attribution); analyzer "
            f"'{getattr(analyzer, 'name', type(analyzer).__name__)}' starts its reverse pass "
            "from 1, so what it propagates is a gradient, not relevance.")
    if hasattr(analyzer, "patterns") and analyzer.patterns is None:
        raise ValueError(f"'{analyzer.name}' has no patterns yet: fit or load them first "
                         "(analyzer.fit(data) or create_analyzer(..., patterns=...)).")


def _internals(analyzer: Any, x: Any, neuron_selection: Any) -> tuple[
        CanonicalGraph, dict[str, Any], Callable, dict[int, tf.Tensor], tf.Tensor]:
    """The analyzer's graph, bound rules, op-through-rule call, forward values and start.

    The only place that reads the analyzer's private attributes.
    """
    xs = [tf.convert_to_tensor(v) for v in analyzer._check_inputs(x)]
    xs = [v if v.dtype.is_floating else tf.cast(v, tf.float32) for v in xs]
    index = tf.constant(analyzer._check_selection(neuron_selection, int(xs[0].shape[0])))
    graph, rules = analyzer._graph, analyzer._rules
    apply = getattr(analyzer, "_call", None) or (lambda op, *a: rules[op.name](*a))
    outputs, values = graph.run(xs, call=apply, keep=True)
    out = outputs[0]
    start = analyzer._start(tf.reshape(out, [tf.shape(out)[0], -1]), index)
    return graph, rules, apply, values, tf.reshape(start, tf.shape(out))


def _through_rule(apply: Callable, op: Op, xs: list[tf.Tensor],
                  arriving: list[tf.Tensor]) -> list[tf.Tensor]:
    """What ``op``'s rule gives each input for the relevance ``arriving`` at its outputs."""
    floating = [x.dtype.is_floating for x in xs]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([x for x, f in zip(xs, floating) if f])
        outs = apply(op, *xs)
    grads = tape.gradient(outs, xs, output_gradients=arriving,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [g if f else tf.zeros_like(x, tf.float32) for x, g, f in zip(xs, grads, floating)]


def _per_sample(t: tf.Tensor) -> np.ndarray:
    """Sum over all but the batch axis, in float64."""
    v = np.asarray(t.numpy(), np.float64)
    return v.reshape(len(v), -1).sum(axis=1)


def _record(op: Op, rule: Any, analyzer: Any, values: dict[int, tf.Tensor],
            arriving: list[tf.Tensor], given: list[tf.Tensor]) -> dict[str, Any]:
    received = sum(_per_sample(r) for r in arriving)
    passed = sum(_per_sample(g) for g in given) if given else np.zeros_like(received)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(received != 0, passed / received, np.nan)
    record = {"name": op.name, "type": _op_type(op), "layer": _layer_name(op),
              "received": received, "passed": passed, "share": share,
              "closed_gates": None, "to_bias": None, "to_degenerate": None, "degenerate": None}
    if isinstance(op, ActivationOp) and op.activation in _GATED:
        closed = [tf.where(tf.equal(values[k], 0), r, tf.zeros_like(r))
                  for k, r in zip(op.outputs, arriving)]
        record["closed_gates"] = sum(_per_sample(c) for c in closed)
    if isinstance(op, KernelOp) and isinstance(rule, ZRule):
        record["to_bias"] = _to_bias(op, rule, values[op.outputs[0]], arriving[0])
    if isinstance(op, KernelOp) and getattr(analyzer, "patterns", None) is not None:
        record["degenerate"], record["to_degenerate"] = _to_degenerate(op, analyzer, arriving[0])
    return record


def _op_type(op: Op) -> str:
    if isinstance(op, KernelOp):
        return "kernel"
    if isinstance(op, ActivationOp):
        return "activation"
    return op.kind if isinstance(op, LayerOp) else type(op).__name__


def _layer_name(op: Op) -> str:
    return op.activation if isinstance(op, ActivationOp) else type(op.layer).__name__


def _to_bias(op: KernelOp, rule: ZRule, z: tf.Tensor, arriving: tf.Tensor) -> np.ndarray:
    """``sum_j R_j b_j / (z_j + epsilon sign z_j)``: the bias's share under the z-rule."""
    bias = op.get_bias()
    if bias is None:
        return np.zeros(int(z.shape[0]))
    epsilon = float(getattr(rule, "epsilon", 0.0))
    denominator = z + tf.where(z >= 0, epsilon, -epsilon) if epsilon else z
    share = tf.math.divide_no_nan(arriving * op.broadcast_bias(tf.cast(bias, z.dtype)),
                                  denominator)
    return _per_sample(share)


def _to_degenerate(op: KernelOp, analyzer: Any, arriving: tf.Tensor) -> tuple[int, np.ndarray]:
    """The number of neurons whose back-projection kernel is zero, and the relevance they get."""

    layout = op.layout
    pattern = np.asarray(analyzer.patterns[op.pattern_key], np.float64)
    if getattr(analyzer, "attribution", False):
        pattern = pattern * np.asarray(op.get_kernel().numpy(), np.float64)
    dead = np.all(pattern == 0, axis=layout.fan_in_axes).reshape(-1)
    mask = op.broadcast_bias(tf.constant(dead, arriving.dtype))
    return int(dead.sum()), _per_sample(arriving * mask)
