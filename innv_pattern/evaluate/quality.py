"""Signal-estimator quality rho (Eq. 1 of the paper), per neuron and per layer.

``rho(S) = 1 - max_v corr(t, v^T (x - S(x)))``: how much of a neuron's output
``t`` a linear read-out can still find in the residual ``d = x - S(x)`` of a
signal estimator ``S``.  Higher is better; 1 means the residual holds no
linear trace of the output.  The estimators compared, as in Fig. 3:

* ``"random"``: ``S(x) = r y / (w^T r)`` with a random direction ``r``;
* ``"filter"``: ``S_w(x) = w y / (w^T w)`` (what DeConvNet, Guided BackProp
  and the gradient assume);
* ``"linear"``: ``S_a(x) = a y`` with the linear pattern (Eq. 3);
* ``"two_component"``: ``S_a+-(x) = a+ y`` where the neuron is active, else
  ``a- y`` (Eqs. 4-7).

``"linear"`` and ``"two_component"`` are the families of the estimators
declared in :data:`~innv_pattern.patterns.estimators.ESTIMATORS`: each stands
for the family's estimator whose patterns are given (the default one when
fitting), and an estimator's own name (``"relu_eq7"``) picks it.

All four are ``d = x - a+ y+ - a- y-`` (``y+ = y`` in the active regime, else
0; ``y- = y - y+``), linear in ``z = (x, y+, y-)``, and so is the target ``t``.
Hence the least-squares ``v`` and the correlation are closed forms of second
moments of ``z`` (:mod:`innv_pattern.evaluate.moments`): ``v`` solves
``(cov[d] + lambda I) v = cov[d, t]`` on the regression split (the paper's
second split; ``cov[d]`` is ``cov[x]`` plus a rank-6 term, so one Cholesky
factor of ``cov[x] + lambda I`` per layer serves every neuron and estimator
through the Woodbury identity), and the correlation of ``t`` with ``v^T d`` is
then measured on the evaluation split, from sums of the projections (one
``(m, D) x (D, estimators x neurons)`` product per batch, no ``D x D`` work).
Conv layers: every output position is a sample, its patch the input.

Cost: the regression split's ``cov[x]`` (``2 m D^2`` per batch of ``m``
samples) and one Cholesky factor per layer (``D^3 / 3``) dominate; for wide
layers ``max_neurons`` and ``max_positions`` sample neurons and positions.
The read-out is fitted on finite data: where samples are few relative to
``D`` (deep conv layers on small images, dense layers) it finds less of the
output than the population optimum would, so rho is biased *upwards* there;
``return_info=True`` reports the samples per layer.

**Which target** (``target=``).  With ``t = w^T x`` (``"linear"``), ``S_a``
and Eq. 7's ``S_a+-`` (``relu_eq7``) both leave ``cov[d, t] = 0`` exactly on
the data they were fitted on (each regime cancels its share), so on held-out
data rho is 1 up to estimation noise, and ``S_a+-``, with two patterns from
the same data, can only lose (the default ``relu`` cancels each regime's
*within-regime* covariance only and keeps the between-regime part
``E_r[x] - a_r E_r[y]`` times ``E_r[y] - E[y]``, so it scores lower still):
held-out data alone cannot give the paper's picture (``S_a`` well below 1 in the dense layers, ``S_a+-`` above it).  With
the neuron's rectified output ``t = relu(w^T x + b)`` (``"rectified"``, the
default; what a Lasagne layer outputs, and what the paper's remark that
otherwise "information about whether a neuron fired would be retained in
the distractor" is about), ``S_a`` falls below 1 wherever the input relates
to the output differently in the two regimes, which is what ``S_a+-``
models (``tests/test_evaluate_quality.py`` builds such data: ``S_a+-`` gets 1,
``S_a`` does not).  A layer that no ReLU follows keeps ``t = w^T x + b``.
``benchmarks/results/quality.md`` records both readings.  On held-out data
the correlation can come out negative (rho a little above 1): it is
reported as measured, not clipped, so that means over neurons are unbiased.
Measured on the data the patterns were fitted on, rho of ``S_a`` and
``S_a+-`` comes out well above 1 (1.1-1.4 on a digits CNN): there the residual
holds no linear trace of the output by construction, and the read-out fitted
on other data finds noise of the wrong sign.  :func:`signal_quality` warns when
a layer's mean rho exceeds :data:`RHO_WARNING` and when ``eval_data`` (arrays)
share samples with ``fit_data`` or ``regression_data``.

Example:
    >>> import keras, numpy as np
    >>> from innv_pattern.datasets import toy_data
    >>> toy = toy_data(40000, seed=0)
    >>> inp = keras.Input((2,))
    >>> model = keras.Model(inp, keras.layers.Dense(1, use_bias=False, name="w")(inp))
    >>> model.layers[1].set_weights([toy.w[:, None]])
    >>> patterns = {"linear": {"w": toy.a_s[:, None]}}   # the true pattern
    >>> rho = signal_quality(model, None, toy.x[:20000], toy.x[20000:],
    ...                      estimators=("filter", "linear"), patterns=patterns)
    >>> round(rho["linear"]["w"], 2), round(rho["filter"]["w"], 2)
    (1.0, 0.72)
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from innv_pattern.canonize import CanonicalGraph, canonize
from innv_pattern.evaluate._common import iter_batches
from innv_pattern.evaluate._layers import EvaluatedLayer, memory_estimate, select_layers
from innv_pattern.evaluate.moments import CoMoments, batch_comoments
from innv_pattern.patterns.estimators import ESTIMATORS as PATTERN_ESTIMATORS
from innv_pattern.patterns.estimators import Estimator, estimators_of_family

__all__ = ["ESTIMATORS", "signal_quality"]

#: Estimators that need no patterns.
BASELINES = ("random", "filter")
#: The paper's Fig. 3: the baselines and both families of fitted estimators.
ESTIMATORS = BASELINES + ("linear", "two_component")
TARGETS = ("rectified", "linear")
#: A layer's mean rho above this (for S_a or S_a+-) raises a warning: estimation noise stays below.
RHO_WARNING = 1.02


def _readouts(cov: Mapping[str, np.ndarray], estimators: Mapping[str, tuple],
              target: np.ndarray, ridge: float) -> dict[str, np.ndarray]:
    """The least-squares read-out ``v`` (D, N) of each estimator's residual.

    ``v`` solves ``(cov[d] + lambda I) v = cov[d, t]`` with ``cov[d] = cov[x] +
    U V^T`` (rank 6, per neuron), by the Woodbury identity around one Cholesky
    factor of ``cov[x] + lambda I`` shared by every neuron and estimator.

    Args:
        cov: :meth:`CoMoments.covariances` with extras ``e = (y+, y-, m)``.
        estimators: ``{name: (a+, a-)}``, each ``(D, N)``.
        target: ``(N, 3)``: ``t = target . e``.
        ridge: ``lambda = ridge * mean variance of x``.
    """
    import scipy.linalg

    cxe = cov["xe"]
    dim, n = cxe.shape[:2]
    factor = _cholesky(cov["xx"], ridge)
    arrays: list[np.ndarray] = []
    for a_pos, a_neg in estimators.values():
        arrays.extend([a_pos] if a_neg is a_pos else [a_pos, a_neg])
    solved = scipy.linalg.cho_solve(factor, np.concatenate(
        [cxe.reshape(dim, 3 * n)] + arrays, axis=1), check_finite=False)
    k_cxe, k_arrays = solved[:, :3 * n].reshape(dim, n, 3), np.split(
        solved[:, 3 * n:], len(arrays), axis=1)
    result, i = {}, 0
    for name, (a_pos, a_neg) in estimators.items():
        k_pos = k_arrays[i]
        k_neg = k_pos if a_neg is a_pos else k_arrays[i + 1]
        i += 1 if a_neg is a_pos else 2
        result[name] = _woodbury(k_cxe, k_pos, k_neg, a_pos, a_neg, cov, target)
    return result


def _woodbury(k_cxe: np.ndarray, k_pos: np.ndarray, k_neg: np.ndarray, a_pos: np.ndarray,
              a_neg: np.ndarray, cov: Mapping[str, np.ndarray], target: np.ndarray) -> np.ndarray:
    """``v = K b - K U (I + V^T K U)^-1 V^T K b`` per neuron (``K = (cov[x] + lambda I)^-1``).

    With ``A = (a+, a-, 0)`` (D, 3): ``cov[d] = cov[x] + U V^T``, ``U = (-A,
    A cov[e] - cov[x, e])``, ``V = (cov[x, e], A)``; ``b = cov[d, t] =
    cov[x, e] q - A cov[e] q``.  ``k_*`` are ``K`` applied to ``cov[x, e]``, a+, a-.
    """
    cxe, cee = cov["xe"], cov["ee"]
    zeros = np.zeros_like(a_pos)
    amat, k_a = np.stack([a_pos, a_neg, zeros], -1), np.stack([k_pos, k_neg, zeros], -1)
    cet = np.einsum("nkl,nl->nk", cee, target)
    k_b = np.einsum("dnk,nk->dn", k_cxe, target) - np.einsum("dnk,nk->dn", k_a, cet)
    k_u = np.concatenate([-k_a, np.einsum("dnk,nkl->dnl", k_a, cee) - k_cxe], axis=-1)
    vmat = np.concatenate([cxe, amat], axis=-1)
    m = np.eye(6) + np.einsum("dni,dnj->nij", vmat, k_u, optimize=True)
    r = np.einsum("dni,dn->ni", vmat, k_b)
    return k_b - np.einsum("dnj,nj->dn", k_u, np.linalg.solve(m, r[..., None])[..., 0])


def _cholesky(cxx: np.ndarray, ridge: float) -> Any:
    """Cholesky factor of ``cov[x] + lambda I``, ``lambda = ridge * mean variance``.

    Covariances summed from float32 batches can have tiny negative
    eigenvalues (relative to the largest one); where the factorization fails,
    lambda grows tenfold until it succeeds, with a warning.
    """
    import scipy.linalg

    lam = ridge * max(np.trace(cxx) / len(cxx), 1e-30)
    diagonal = np.diagonal(cxx).copy()
    for attempt in range(12):
        shifted = cxx.copy()
        shifted.flat[::len(cxx) + 1] = diagonal + lam
        try:
            factor = scipy.linalg.cho_factor(shifted, lower=True, overwrite_a=True,
                                             check_finite=False)
        except np.linalg.LinAlgError:
            lam *= 10.0
            continue
        if attempt:
            warnings.warn(f"cov[x] of a {len(cxx)}-dimensional input is not positive definite "
                          f"at ridge {ridge:g}; used {ridge * 10 ** attempt:g}.", stacklevel=3)
        return factor
    raise np.linalg.LinAlgError(f"cov[x] ({len(cxx)} dimensions) is not positive definite even "
                                f"with ridge {ridge * 1e11:g}: it has non-finite values.")


def _accumulate(graph: CanonicalGraph, layers: list[EvaluatedLayer], data: Any, batch_size: int,
                max_positions: int | None, seed: int,
                readouts: Mapping[str, tuple] | None = None) -> dict[str, CoMoments]:
    """One pass over ``data``: per layer, the co-moments of ``(x, e)``, or with
    ``readouts`` (``{layer: (v, a^T v, target)}``) those of the per-neuron
    ``(t, v_1^T d_1, ..., v_E^T d_E)`` for each of the E estimators."""

    def step(x: tf.Tensor, index: tf.Tensor, args: dict) -> dict[str, Any]:
        _, values = graph.run([x], keep=True)
        out = {}
        for layer in layers:
            flat, extras = layer.samples(values[layer.op.inputs[0]], max_positions,
                                         tf.stack([seed, index]))
            if readouts is not None:
                flat, extras = _projections(flat, extras, *args[layer.key])
            out[layer.key] = batch_comoments(flat, extras)
        return out

    fn = tf.function(step, reduce_retracing=True, autograph=False)
    args = {k: tuple(tf.constant(a, tf.float32) for a in v) for k, v in (readouts or {}).items()}
    moments: dict[str, CoMoments] = {}
    for index, batch in enumerate(iter_batches(data, batch_size)):
        x = tf.cast(tf.convert_to_tensor(batch), tf.float32)
        for name, stats in fn(x, tf.constant(index, tf.int32), args).items():
            if name not in moments:
                moments[name] = CoMoments(stats["xx"].shape[0], *stats["mean_e"].shape)
            moments[name].add({k: v.numpy() for k, v in stats.items()})
    if not moments or next(iter(moments.values())).count == 0:
        raise ValueError("The data yielded no samples; expected at least one batch.")
    return moments


def _projections(flat: tf.Tensor, extras: tf.Tensor, v: tf.Tensor, av: tf.Tensor,
                 target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(m, 0)`` and ``(m, N, 1 + E)``: the target and each read-out ``v^T d``.

    ``v^T d = v^T x - (a+^T v) y+ - (a-^T v) y-``; ``v`` is ``(D, E N)``, ``av``
    ``(E, N, 2)``.
    """
    estimators, neurons = av.shape[0], av.shape[1]
    p = tf.reshape(tf.matmul(flat, v), [-1, estimators, neurons])
    p -= tf.einsum("mnk,enk->men", extras[..., :2], av)
    t = tf.einsum("mnk,nk->mn", extras, target)
    stacked = tf.concat([t[:, None], p], axis=1)                      # (m, 1 + E, N)
    return flat[:, :0], tf.transpose(stacked, [0, 2, 1])


def _pattern_matrix(patterns: Any, concrete: str, layer: EvaluatedLayer) -> np.ndarray:
    """The ``(D, neurons)`` patterns of ``concrete`` for ``layer``."""
    by_layer = (patterns.for_type(concrete) if hasattr(patterns, "for_type")
                else patterns.get(concrete))
    key = layer.op.pattern_key if by_layer and layer.op.pattern_key in by_layer else layer.op.name
    if by_layer is None or key not in by_layer:
        held = sorted(patterns.types if hasattr(patterns, "types") else patterns or ())
        raise ValueError(f"No '{concrete}' pattern for layer '{key}' in the patterns given (types "
                         f"{held}); fit patterns of that estimator, or leave it out of "
                         "estimators.")
    return np.asarray(layer.columns(np.asarray(by_layer[key], np.float64)))


def _estimator_patterns(name: str, w: np.ndarray, layer: EvaluatedLayer, patterns: Any,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(a+, a-)`` of estimator ``name`` (``w^T a = 1`` for the baselines)."""
    if name == "random":
        a = _normalized(rng.normal(size=w.shape), w)
        return a, a
    if name == "filter":
        a = _normalized(w, w)
        return a, a
    estimator = _fitted_estimator(name, patterns)
    if not estimator.regimes:
        a = _normalized(_pattern_matrix(patterns, estimator.pattern(), layer), w)
        return a, a
    positive = _normalized(_pattern_matrix(patterns, estimator.pattern("positive"), layer), w)
    if not layer.gated:  # no rectifier after the layer: one regime, every sample
        return positive, positive
    return positive, _normalized(_pattern_matrix(patterns, estimator.pattern("negative"), layer),
                                 w)


def _fitted_estimator(name: str, patterns: Any = None) -> Estimator:
    """The estimator ``name`` names: itself, or its family's first whose patterns are given
    (the family's default one where none is, or when fitting)."""
    if name in PATTERN_ESTIMATORS:
        return PATTERN_ESTIMATORS[name]
    family = estimators_of_family(name)
    return next((e for e in family if patterns is not None and _holds(patterns, e)), family[0])


def _holds(patterns: Any, estimator: Estimator) -> bool:
    """Whether ``patterns`` (``ip.Patterns`` or ``{type: {layer: array}}``) has its types."""
    if hasattr(patterns, "has_type"):
        return patterns.has_type(estimator.name)
    return all(t in patterns for t in estimator.patterns)


def _normalized(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a / (w^T a)`` in float64, so that ``w^T d = 0`` holds to rounding.

    float32 patterns have ``w^T a = 1 +- 1e-7``: the residual then keeps
    ``1e-7 y`` along ``w``, which an unregularized read-out would find.
    All-zero (degenerate) patterns stay zero.
    """
    denominator = np.sum(w * a, axis=0)
    return np.where(denominator != 0, a / np.where(denominator != 0, denominator, 1.0), 0.0)


def _fit_patterns(model: keras.Model, fit_data: Any, estimators: Sequence[str],
                  batch_size: int) -> Any:
    from innv_pattern.patterns import PatternComputer

    types = tuple(dict.fromkeys(_fitted_estimator(e).name for e in estimators
                                if e not in BASELINES))
    if fit_data is None:
        raise ValueError("signal_quality needs fit_data to fit the 'linear' and "
                         "'two_component' estimators, or patterns=...")
    arrays = isinstance(fit_data, np.ndarray)
    return PatternComputer(model, pattern_type=types).compute(
        fit_data, batch_size=batch_size if arrays else None, verbose=0)


def signal_quality(model: keras.Model, fit_data: Any, regression_data: Any, eval_data: Any,
                   estimators: Sequence[str] = ESTIMATORS, *, target: str = "rectified",
                   per_neuron: bool = False, patterns: Any = None,
                   layers: Sequence[str] | None = None, max_neurons: int | None = 256,
                   max_positions: int | None = None, ridge: float = 1e-4,
                   batch_size: int = 64, seed: int = 0, return_info: bool = False,
                   max_memory: float | None = None) -> Any:
    """rho (Eq. 1) of each signal estimator for every kernel layer of ``model``.

    As in the paper, the estimators are fitted on ``fit_data``, the read-out
    ``v`` on ``regression_data``, and the correlation is measured on
    ``eval_data``.  Every conv output position is a sample.

    Args:
        model: A Keras model (a final softmax is stripped).
        fit_data: Data to fit the ``linear``/``two_component`` patterns
            (with ``ip.PatternComputer``); unused where ``patterns`` is given.
        regression_data: Data to fit ``v``.
        eval_data: Data to measure the correlation on.
        estimators: Any of ``"random"``, ``"filter"``, ``"linear"``,
            ``"two_component"``, or an estimator's name (``"relu"``,
            ``"relu_eq7"``).
        target: ``"rectified"`` (``relu(w^T x + b)`` where a ReLU follows, the
            reading that reproduces the paper) or ``"linear"`` (``w^T x``).
        per_neuron: Return each evaluated neuron's rho instead of the mean.
        patterns: Fitted patterns (``ip.Patterns`` of types ``("linear",
            "relu")``, or ``{type: {layer: array}}``).
        layers: Names of the kernel layers to evaluate (default: all).
        max_neurons: Evaluate a random subset of at most this many neurons
            per layer (``None``: all).
        max_positions: Use at most this many random output positions per
            image in conv layers (``None``: all).
        ridge: Relative ridge of the regression for ``v``.
        batch_size: Batch size for arrays.
        seed: Seed of the neuron/position subsets and of the random directions.
        max_memory: Bytes the covariances may take (default: half the
            machine's memory); layers that would need more are named, before
            any work, in a ``ValueError`` (a dense layer with 131072 inputs
            asks for a 131072 x 131072 covariance).
        return_info: Also return ``{layer: details}`` (input size, neurons
            evaluated and in all, target, samples of the regression and
            evaluation splits, neurons whose rho is undefined because their
            target does not vary) and ``"_seconds"`` (time per stage).

    Returns:
        ``{estimator: {layer: mean rho}}`` (mean over the neurons whose rho
        is defined), per-neuron arrays with ``per_neuron=True``; and the
        details with ``return_info=True``.
    """
    _check_arguments(estimators, target, max_neurons, max_positions, ridge)
    start = time.perf_counter()
    graph = canonize(model)
    if len(graph.inputs) != 1:
        raise ValueError(f"signal_quality handles models with one input; model '{model.name}' "
                         f"has {len(graph.inputs)}.")
    chosen = select_layers(graph, layers, max_neurons, target, seed)
    _check_memory(chosen, len(estimators), max_memory)
    fitted = patterns is None and any(e not in BASELINES for e in estimators)
    _warn_if_shared(eval_data, {"fit_data": fit_data if fitted else None,
                                "regression_data": regression_data})
    if fitted:
        patterns = _fit_patterns(model, fit_data, estimators, batch_size)
    times = {"fit": time.perf_counter() - start}
    regression = _accumulate(graph, chosen, regression_data, batch_size, max_positions, seed)
    times["regression_moments"] = time.perf_counter() - start - sum(times.values())
    rng = np.random.default_rng(seed)
    readouts = {layer.key: _layer_readouts(layer, estimators, patterns,
                                           regression[layer.key].covariances(), ridge, rng)
                for layer in chosen}
    times["readouts"] = time.perf_counter() - start - sum(times.values())
    evaluation = _accumulate(graph, chosen, eval_data, batch_size, max_positions, seed + 1,
                             readouts)
    times["evaluation"] = time.perf_counter() - start - sum(times.values())
    rho, info = _collect(chosen, estimators, regression, evaluation, per_neuron)
    _warn_if_above_one(rho)
    info["_seconds"] = times
    return (rho, info) if return_info else rho


def _check_arguments(estimators: Sequence[str], target: str, max_neurons: int | None,
                     max_positions: int | None, ridge: float) -> None:
    known = ESTIMATORS + tuple(PATTERN_ESTIMATORS)
    unknown = [e for e in estimators if e not in known]
    if unknown or target not in TARGETS or not estimators:
        raise ValueError(f"estimators must be a non-empty subset of {known} and target one "
                         f"of {TARGETS}; received estimators={estimators!r}, target={target!r}.")
    if any(v is not None and int(v) < 1 for v in (max_neurons, max_positions)) or ridge <= 0:
        raise ValueError(f"max_neurons and max_positions must be None or >= 1 and ridge > 0; "
                         f"received {max_neurons!r}, {max_positions!r}, {ridge!r}.")


def _warn_if_shared(eval_data: Any, others: Mapping[str, Any]) -> None:
    """Warns when arrays ``eval_data`` and ``others`` hold the same samples."""
    if not isinstance(eval_data, np.ndarray) or eval_data.ndim < 1:
        return
    seen = {hash(row.tobytes()) for row in np.ascontiguousarray(eval_data)}
    for name, data in others.items():
        if not isinstance(data, np.ndarray) or data.shape[1:] != eval_data.shape[1:]:
            continue
        shared = sum(hash(row.tobytes()) in seen for row in np.ascontiguousarray(data))
        if shared:
            warnings.warn(f"{shared} of the {len(data)} samples of {name} are also in eval_data: "
                          "rho is measured on held-out data (the paper's three splits); on "
                          "overlapping splits it is biased (above 1 on the fitting data).",
                          stacklevel=3)


def _warn_if_above_one(rho: Mapping[str, Mapping[str, Any]]) -> None:
    """Warns about layers whose mean rho of S_a or S_a+- exceeds :data:`RHO_WARNING`."""
    high = [f"{name} '{layer}' {float(np.nanmean(value)):.2f}"
            for name in rho if name not in BASELINES for layer, value in rho[name].items()
            if np.nanmean(value) > RHO_WARNING]
    if high:
        warnings.warn(f"rho above 1 ({', '.join(high)}): the read-out correlates negatively "
                      "with the output on eval_data. This is what data the patterns were fitted "
                      "on give (the residual holds no linear trace of the output there); "
                      "measure rho on data the patterns were not fitted on. Few samples per "
                      "input dimension (return_info=True) also bias rho upwards.", stacklevel=3)


def _collect(chosen: list[EvaluatedLayer], estimators: Sequence[str],
             regression: Mapping[str, CoMoments], evaluation: Mapping[str, CoMoments],
             per_neuron: bool) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """rho per estimator and op from the evaluation pass (a depthwise op's channels
    together), and the details."""
    values: dict[str, list[np.ndarray]] = {}
    info: dict[str, Any] = {}
    for layer in chosen:
        cov = evaluation[layer.key].covariances()["ee"]      # (N, 1 + E, 1 + E): t, v^T d
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = cov[:, 0, 1:] / np.sqrt(cov[:, 0, :1] * np.diagonal(cov, 0, 1, 2)[:, 1:])
        name = layer.op.name
        values.setdefault(name, []).append(1.0 - corr)
        entry = info.setdefault(name, {
            "input_dim": layer.dim, "neurons": 0, "target": "rectified" if layer.rectified
            else "linear", "samples": [regression[layer.key].count, evaluation[layer.key].count],
            "undefined": 0,
            "neurons_total": int(np.prod([layer.op.kernel_shape[a]
                                          for a in layer.op.layout.neuron_axes]))})
        entry["neurons"] += len(layer.neurons)
        entry["undefined"] += int(np.sum(~np.isfinite(corr[:, 0])))
    rho: dict[str, dict[str, Any]] = {e: {} for e in estimators}
    for name, parts in values.items():
        joined = np.concatenate(parts)
        for i, estimator in enumerate(estimators):
            rho[estimator][name] = (joined[:, i] if per_neuron
                                    else float(np.nanmean(joined[:, i])))
    return rho, info


def _check_memory(chosen: list[EvaluatedLayer], estimators: int, max_memory: float | None) -> None:
    """Refuses, before any work, layers whose covariances exceed the memory budget."""
    import os

    if max_memory is None:
        max_memory = 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    need = memory_estimate(chosen, estimators)
    total = sum(kept for kept, _ in need.values()) + max(
        (transient for _, transient in need.values()), default=0.0)
    if total <= max_memory:
        return
    dims = {layer.op.name: layer.dim for layer in chosen}
    worst = sorted(need, key=lambda n: -sum(need[n]))
    large = [n for n in worst if sum(need[n]) > max_memory / 4] or worst[:1]
    rest = [n for n in dims if n not in large]
    raise ValueError(
        "signal_quality would need about " + _gib(total) + f" (budget {_gib(max_memory)}): "
        + "; ".join(f"'{n}' {_gib(sum(need[n]))} ({dims[n]} inputs: a {dims[n]}x{dims[n]} "
                    "covariance)" for n in large)
        + f". Leave {'them' if len(large) > 1 else 'it'} out with layers={rest} (on the "
        f"command line: --layers {' '.join(rest) or '...'}), or raise max_memory.")


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


def _layer_readouts(layer: EvaluatedLayer, estimators: Sequence[str], patterns: Any,
                    cov: Mapping[str, np.ndarray], ridge: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(v (D, E N), a^T v (E, N, 2), target (N, 3))`` of one layer for the evaluation pass."""
    w = layer.kernel_matrix().numpy().astype(np.float64)
    target = layer.target()
    chosen = {name: _estimator_patterns(name, w, layer, patterns, rng) for name in estimators}
    vs = _readouts(cov, chosen, target, ridge)
    av = np.stack([np.stack([np.sum(a_pos * vs[k], 0), np.sum(a_neg * vs[k], 0)], -1)
                   for k, (a_pos, a_neg) in chosen.items()])
    return np.concatenate([vs[k] for k in estimators], axis=1), av, target
