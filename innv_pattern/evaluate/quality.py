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

All four are ``d = x - a+ y+ - a- y-`` (``y+ = y`` in the active regime, else
0; ``y- = y - y+``), linear in ``z = (x, y+, y-)``, and so is the target ``t``.
Hence the least-squares ``v`` and the correlation are closed forms of second
moments of ``z`` (:mod:`innv_pattern.evaluate.moments`): ``v`` solves
``(cov[d] + lambda I) v = cov[d, t]`` on the regression split (the paper's
second split; ``cov[d]`` is ``cov[x]`` plus a rank-6 term, so one Cholesky
factor of ``cov[x]`` per layer serves every neuron through the Woodbury
identity), and the correlation is then measured on the evaluation split.

**Which target** (``target=``).  With ``t = w^T x`` (``"linear"``), ``S_a``
and ``S_a+-`` both leave ``cov[d, t] = 0`` exactly on the data they were
fitted on (each regime of ``S_a+-`` cancels its share, Eq. 7), so on held-out
data rho is 1 up to estimation noise, and ``S_a+-``, with two patterns from
the same data, can only lose: held-out data alone cannot give the paper's
picture (``S_a`` well below 1 in the dense layers, ``S_a+-`` above it).  With
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

import dataclasses
import time
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from innv_pattern.canonize import ActivationOp, CanonicalGraph, KernelOp, canonize
from innv_pattern.evaluate._common import figure_axes, iter_batches
from innv_pattern.evaluate.moments import CoMoments, batch_comoments

__all__ = ["ESTIMATORS", "plot_signal_quality", "rho_from_moments", "signal_quality"]

ESTIMATORS = ("random", "filter", "linear", "two_component")
TARGETS = ("rectified", "linear")
_SUPPORTED = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_UNSUPPORTED = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
                keras.layers.SeparableConv1D, keras.layers.SeparableConv2D,
                keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                keras.layers.Conv3DTranspose)
_SIGN_KEEPING = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
                 keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
                 keras.layers.Identity, keras.layers.ZeroPadding2D)


def rho_from_moments(w: np.ndarray, a_pos: np.ndarray, a_neg: np.ndarray,
                     regression: Mapping[str, np.ndarray], evaluation: Mapping[str, np.ndarray],
                     target: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """rho per neuron in closed form, from the covariances of two splits.

    Args:
        w: ``(D, N)`` filters (only checked against the other shapes: the
            estimator is given by its patterns).
        a_pos, a_neg: ``(D, N)`` patterns of the active and inactive regime
            (equal for a linear estimator).
        regression: :meth:`CoMoments.covariances` of the split ``v`` is fitted
            on, with extras ``e = (y+, y-, m)`` per neuron (``m`` the regime).
        evaluation: The same for the split the correlation is measured on.
        target: ``(N, 3)``: ``t = target . e`` (``(1, 1, 0)``: ``w^T x``;
            ``(1, 0, b)``: ``relu(w^T x + b)``).
        ridge: ``lambda = ridge * trace(cov[x]) / D`` stabilizes the regression
            (``cov[d]`` is singular: ``w^T d = 0``).

    Returns:
        ``(N,)`` rho; NaN where the target or the read-out has no variance.
    """
    import scipy.linalg

    dim, n = a_pos.shape
    if w.shape != (dim, n) or a_neg.shape != (dim, n) or target.shape != (n, 3):
        raise ValueError(f"Shapes do not match: w {w.shape}, a_pos {a_pos.shape}, a_neg "
                         f"{a_neg.shape}, target {target.shape}; expected (D, N) and (N, 3).")
    amat = np.stack([a_pos, a_neg, np.zeros_like(a_pos)], axis=-1)
    cxx, cxe, cee = regression["xx"], regression["xe"], regression["ee"]
    lam = ridge * max(np.trace(cxx) / dim, 1e-30)
    factor = scipy.linalg.cho_factor(cxx + lam * np.eye(dim), lower=True, check_finite=False)
    solved = scipy.linalg.cho_solve(factor, np.concatenate(
        [a_pos, a_neg, cxe.reshape(dim, 3 * n)], axis=1), check_finite=False)
    k_a = np.stack([solved[:, :n], solved[:, n:2 * n], np.zeros((dim, n))], axis=-1)
    k_cxe = solved[:, 2 * n:].reshape(dim, n, 3)
    cet = np.einsum("nkl,nl->nk", cee, target)
    k_b = np.einsum("dnk,nk->dn", k_cxe, target) - np.einsum("dnk,nk->dn", k_a, cet)
    k_u = np.concatenate([-k_a, np.einsum("dnk,nkl->dnl", k_a, cee) - k_cxe], axis=-1)
    vmat = np.concatenate([cxe, amat], axis=-1)
    m = np.eye(6) + np.einsum("dni,dnj->nij", vmat, k_u, optimize=True)
    r = np.einsum("dni,dn->ni", vmat, k_b)
    v = k_b - np.einsum("dnj,nj->dn", k_u, np.linalg.solve(m, r[..., None])[..., 0])
    return 1.0 - _correlation(v, amat, evaluation, target)


def _correlation(v: np.ndarray, amat: np.ndarray, cov: Mapping[str, np.ndarray],
                 target: np.ndarray) -> np.ndarray:
    """``corr(t, v^T d)`` per neuron under the covariances ``cov``."""
    cxx, cxe, cee = cov["xx"], cov["xe"], cov["ee"]
    av = np.einsum("dnk,dn->nk", amat, v)
    cdt = np.einsum("dnk,nk->dn", cxe, target) - np.einsum(
        "dnk,nk->dn", amat, np.einsum("nkl,nl->nk", cee, target))
    var_d = (np.einsum("dn,dn->n", v, cxx @ v)
             - 2.0 * np.einsum("nk,nk->n", av, np.einsum("dnk,dn->nk", cxe, v))
             + np.einsum("nk,nkl,nl->n", av, cee, av))
    var_t = np.einsum("nk,nkl,nl->n", target, cee, target)
    scale = np.sqrt(np.clip(var_d, 0.0, None) * np.clip(var_t, 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.einsum("dn,dn->n", v, cdt) / scale
    return np.where(scale > 1e-12 * (np.abs(np.einsum("dn,dn->n", v, cdt)) + 1e-300), corr,
                    np.nan)


@dataclasses.dataclass
class _Layer:
    """One evaluated kernel op: its neurons, how to get its inputs, its target."""

    op: KernelOp
    neurons: np.ndarray
    rectified: bool
    dim: int

    def kernel_matrix(self) -> tf.Tensor:
        k = tf.reshape(self.op.get_kernel(), [self.dim, -1])
        return tf.gather(k, self.neurons, axis=1)

    def bias(self) -> tf.Tensor:
        b = self.op.get_bias()
        n = len(self.neurons)
        return tf.zeros([n]) if b is None else tf.gather(tf.reshape(b, [-1]), self.neurons)

    def patches(self, x: tf.Tensor) -> tf.Tensor:
        """The op's inputs as ``(batch, positions, D)``: one row per output position."""
        layer, dim = self.op.layer, self.dim
        if isinstance(layer, keras.layers.Dense):
            return tf.reshape(x, [tf.shape(x)[0], -1, dim])
        if (isinstance(layer, keras.layers.Conv2D) and layer.data_format == "channels_last"
                and layer.padding in ("same", "valid")):
            kh, kw = layer.kernel_size
            p = tf.image.extract_patches(
                x, [1, kh, kw, 1], [1, *layer.strides, 1], [1, *layer.dilation_rate, 1],
                layer.padding.upper())
            return tf.reshape(p, [tf.shape(x)[0], -1, dim])
        eye = tf.reshape(tf.eye(dim, dtype=x.dtype), tuple(self.op.kernel_shape[:-1]) + (dim,))
        out = self.op.linear(x, eye)
        axis = self.op.channel_axis % len(out.shape)
        perm = [i for i in range(len(out.shape)) if i != axis] + [axis]
        return tf.reshape(tf.transpose(out, perm), [tf.shape(x)[0], -1, dim])


def _followed_by_relu(graph: CanonicalGraph, op: KernelOp) -> bool:
    """Whether a ReLU rectifies ``op``'s output (through max-pooling or reshapes)."""
    key = op.outputs[0]
    while True:
        readers = [o for o in graph.ops if key in o.inputs]
        if len(readers) != 1 or key in graph.outputs:
            return False
        reader = readers[0]
        if isinstance(reader, ActivationOp):
            return reader.activation == "relu"
        if not isinstance(reader.layer, _SIGN_KEEPING):
            return False
        key = reader.outputs[0]


def _select_layers(graph: CanonicalGraph, layers: Sequence[str] | None, max_neurons: int | None,
                   target: str, seed: int) -> list[_Layer]:
    ops = graph.kernel_ops
    names = [op.name for op in ops]
    if layers is not None:
        missing = [n for n in layers if n not in names]
        if missing:
            raise ValueError(f"Unknown layer(s) {missing}; the model's kernel layers are {names}.")
        ops = [op for op in ops if op.name in layers]
    bad = [op.name for op in ops if isinstance(op.layer, _UNSUPPORTED)
           or not isinstance(op.layer, _SUPPORTED) or getattr(op.layer, "groups", 1) != 1]
    if bad:
        raise ValueError(f"signal_quality supports Dense and Conv1D/2D/3D layers (groups=1); "
                         f"received {bad}. Pass layers=[...] to leave them out.")
    rng = np.random.default_rng(seed)
    result = []
    for op in ops:
        total = int(op.kernel_shape[-1])
        neurons = np.arange(total)
        if max_neurons is not None and total > max_neurons:
            neurons = np.sort(rng.choice(total, int(max_neurons), replace=False))
        rectified = target == "rectified" and _followed_by_relu(graph, op)
        result.append(_Layer(op, neurons, rectified, int(np.prod(op.kernel_shape[:-1]))))
    return result


def _accumulate(graph: CanonicalGraph, layers: list[_Layer], data: Any, batch_size: int,
                max_positions: int | None, seed: int) -> dict[str, CoMoments]:
    """One pass over ``data``: the co-moments of every evaluated layer."""

    def step(x: tf.Tensor, index: tf.Tensor) -> dict[str, Any]:
        _, values = graph.run([x], keep=True)
        out = {}
        for layer in layers:
            patches = layer.patches(values[layer.op.inputs[0]])
            positions = patches.shape[1]
            if max_positions is not None and positions > max_positions:
                noise = tf.random.stateless_uniform([positions], seed=tf.stack([seed, index]))
                patches = tf.gather(patches, tf.argsort(noise)[:max_positions], axis=1)
            flat = tf.reshape(patches, [-1, layer.dim])
            y = tf.matmul(flat, layer.kernel_matrix())
            mask = tf.cast(y + layer.bias() > 0, y.dtype)
            extras = tf.stack([y * mask, y * (1.0 - mask), mask], axis=-1)
            out[layer.op.name] = batch_comoments(flat, extras)
        return out

    fn = tf.function(step, reduce_retracing=True, autograph=False)
    moments = {layer.op.name: CoMoments(layer.dim, len(layer.neurons), 3) for layer in layers}
    for index, batch in enumerate(iter_batches(data, batch_size)):
        x = tf.cast(tf.convert_to_tensor(batch), tf.float32)
        for name, stats in fn(x, tf.constant(index, tf.int32)).items():
            moments[name].add({k: v.numpy() for k, v in stats.items()})
    if not moments or next(iter(moments.values())).count == 0:
        raise ValueError("The data yielded no samples; expected at least one batch.")
    return moments


def _pattern_matrix(patterns: Any, kind: str, layer: _Layer) -> np.ndarray:
    """The ``(D, neurons)`` patterns of ``kind`` for ``layer``."""
    by_layer = patterns.for_type(kind) if hasattr(patterns, "for_type") else patterns.get(kind)
    key = layer.op.pattern_key if by_layer and layer.op.pattern_key in by_layer else layer.op.name
    if by_layer is None or key not in by_layer:
        raise ValueError(f"No '{kind}' pattern for layer '{key}' in the patterns given; "
                         f"expected types 'linear', 'relu.positive' and 'relu.negative'.")
    return np.asarray(by_layer[key], np.float64).reshape(layer.dim, -1)[:, layer.neurons]


def _estimator_patterns(kind: str, w: np.ndarray, layer: _Layer, patterns: Any,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(a+, a-)`` of estimator ``kind`` (``w^T a = 1`` for the baselines)."""
    if kind == "random":
        a = _normalized(rng.normal(size=w.shape), w)
        return a, a
    if kind == "filter":
        a = _normalized(w, w)
        return a, a
    if kind == "linear":
        a = _normalized(_pattern_matrix(patterns, "linear", layer), w)
        return a, a
    return (_normalized(_pattern_matrix(patterns, "relu.positive", layer), w),
            _normalized(_pattern_matrix(patterns, "relu.negative", layer), w))


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

    types = tuple(t for e, t in (("linear", "linear"), ("two_component", "relu"))
                  if e in estimators)
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
                   max_positions: int | None = None, ridge: float = 1e-6,
                   batch_size: int = 64, seed: int = 0, return_info: bool = False) -> Any:
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
            ``"two_component"``.
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
        return_info: Also return ``{layer: details}`` (neurons, samples, time).

    Returns:
        ``{estimator: {layer: mean rho}}`` (NaN-free mean over neurons whose
        target varies), per-neuron arrays with ``per_neuron=True``; and the
        details with ``return_info=True``.
    """
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or target not in TARGETS or not estimators:
        raise ValueError(f"estimators must be a non-empty subset of {ESTIMATORS} and target one "
                         f"of {TARGETS}; received estimators={estimators!r}, target={target!r}.")
    start = time.perf_counter()
    graph = canonize(model)
    chosen = _select_layers(graph, layers, max_neurons, target, seed)
    if patterns is None and {"linear", "two_component"} & set(estimators):
        patterns = _fit_patterns(model, fit_data, estimators, batch_size)
    fitted = time.perf_counter()
    splits = [_accumulate(graph, chosen, d, batch_size, max_positions, seed + i)
              for i, d in enumerate((regression_data, eval_data))]
    accumulated = time.perf_counter()
    rho: dict[str, dict[str, Any]] = {e: {} for e in estimators}
    info: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for layer in chosen:
        name = layer.op.name
        w = layer.kernel_matrix().numpy().astype(np.float64)
        b = layer.bias().numpy().astype(np.float64)
        tcoef = np.stack([np.ones_like(b), np.zeros_like(b), b], -1) if layer.rectified else \
            np.tile([1.0, 1.0, 0.0], (len(b), 1))
        reg, ev = splits[0][name].covariances(), splits[1][name].covariances()
        for kind in estimators:
            a_pos, a_neg = _estimator_patterns(kind, w, layer, patterns, rng)
            values = rho_from_moments(w, a_pos, a_neg, reg, ev, tcoef, ridge)
            rho[kind][name] = values if per_neuron else float(np.nanmean(values))
        info[name] = {"input_dim": layer.dim, "neurons": len(layer.neurons),
                      "neurons_total": int(layer.op.kernel_shape[-1]),
                      "target": "rectified" if layer.rectified else "linear",
                      "samples": [splits[0][name].count, splits[1][name].count]}
    info["_seconds"] = {"fit": fitted - start, "moments": accumulated - fitted,
                        "closed_form": time.perf_counter() - accumulated}
    return (rho, info) if return_info else rho


def plot_signal_quality(rho: Mapping[str, Mapping[str, Any]], ax: Any = None,
                        title: str | None = None) -> Any:
    """Draws rho per layer for each estimator, as the paper's Fig. 3.

    Args:
        rho: :func:`signal_quality`'s result (means, or per-neuron arrays,
            which are averaged).
        ax: Matplotlib axes to draw into (default: a new figure).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    fig, ax = figure_axes(ax, (7.0, 3.8))
    labels = {"random": "random", "filter": "$S_w$ (filter)", "linear": "$S_a$ (linear)",
              "two_component": "$S_{a+-}$ (two-component)"}
    layers = list(next(iter(rho.values())))
    x = np.arange(len(layers))
    width = 0.8 / max(len(rho), 1)
    for i, (kind, by_layer) in enumerate(rho.items()):
        values = [float(np.nanmean(by_layer[name])) for name in layers]
        ax.bar(x + (i - (len(rho) - 1) / 2) * width, values, width, label=labels.get(kind, kind))
    ax.set_xticks(x, layers, rotation=45, ha="right")
    ax.set_ylabel(r"$\rho(S)$")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig
