"""Mergeable float64 first and second moments of a layer's inputs and neurons.

For the quality measure rho (Eq. 1) of a *linear* or *two-component* signal
estimator, everything follows from second moments of ``z = (x, e_j)``: the
layer input ``x`` (a Dense input or a convolution patch, ``D`` values) and,
per neuron ``j``, a few scalars ``e_j`` (``y+``, ``y-`` and the regime
indicator).  :class:`CoMoments` keeps the means and the *centred* co-moment
sums of ``x`` with itself, of ``x`` with each ``e_j`` and of each ``e_j``
with itself (never across neurons), in float64.

Each batch is centred on its own float32 mean on the device
(:func:`batch_comoments`) and the batches are combined on the host with the
exact pairwise update of Chan, Golub and LeVeque (1979), so inputs whose mean
is far larger than their spread keep their covariance.

These statistics overlap with :mod:`innv_pattern.patterns.estimators` (which
keeps raw cross sums but never the input's own covariance ``cov[x, x]``, which
rho needs); they are kept here, self-contained, and could move there.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, e = rng.normal(size=(100, 3)), rng.normal(size=(100, 2, 1))
    >>> a, b = CoMoments(3, 2, 1), CoMoments(3, 2, 1)
    >>> a.add(batch_comoments(x[:30], e[:30])); b.add(batch_comoments(x[30:], e[30:]))
    >>> bool(np.allclose(a.merge(b).covariances()["xx"], np.cov(x.T, bias=True)))
    True
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["CoMoments", "batch_comoments"]

_NAMES = ("count", "mean_x", "mean_e", "xx", "xe", "ee")


def batch_comoments(x: Any, e: Any) -> dict[str, Any]:
    """One batch's means and centred co-moment sums (TensorFlow or numpy).

    Args:
        x: ``(n, D)`` layer inputs (one row per sample: image and position).
        e: ``(n, N, k)`` per-neuron extras.

    Returns:
        ``count``, ``mean_x`` (D), ``mean_e`` (N, k), ``xx`` (D, D),
        ``xe`` (D, N, k), ``ee`` (N, k, k), as tensors of ``x``'s dtype.
    """
    import tensorflow as tf

    x, e = tf.convert_to_tensor(x), tf.convert_to_tensor(e)
    e = tf.cast(e, x.dtype)
    mean_x, mean_e = tf.reduce_mean(x, 0), tf.reduce_mean(e, 0)
    xc, ec = x - mean_x, e - mean_e
    n, neurons, k = tf.shape(e)[0], tf.shape(e)[1], tf.shape(e)[2]
    xe = tf.matmul(xc, tf.reshape(ec, [n, neurons * k]), transpose_a=True)
    return {"count": tf.cast(n, tf.float64), "mean_x": mean_x, "mean_e": mean_e,
            "xx": tf.matmul(xc, xc, transpose_a=True),
            "xe": tf.reshape(xe, [-1, neurons, k]),
            "ee": tf.einsum("nja,njb->jab", ec, ec)}


class CoMoments:
    """Float64 means and centred co-moments of ``x`` (D) and per-neuron ``e`` (N, k).

    Batches are combined with Chan's update, ``M = M_a + M_b + f dx dx^T``
    (``f = n_a n_b / n``, ``dx`` the difference of the means); the rank-one
    terms are collected and applied together, in one matrix product, when the
    covariances are read, so adding a batch costs one pass over its sums.

    Args:
        dim: ``D``, the size of ``x`` (0 for per-neuron values only).
        neurons: ``N``, the number of neurons.
        extras: ``k``, the scalars per neuron.
    """

    def __init__(self, dim: int, neurons: int, extras: int) -> None:
        self.shape = (int(dim), int(neurons), int(extras))
        d, n, k = self.shape
        self.count = 0.0
        self.mean_x, self.mean_e = np.zeros(d), np.zeros((n, k))
        self.xx, self.xe, self.ee = np.zeros((d, d)), np.zeros((d, n, k)), np.zeros((n, k, k))
        self._pending: list[tuple[float, np.ndarray, np.ndarray]] = []

    def add(self, batch: Mapping[str, Any]) -> None:
        """Adds a batch's statistics (:func:`batch_comoments`) in place."""
        values = {name: np.asarray(batch[name]) for name in _NAMES}
        for name in _NAMES[1:]:
            if values[name].shape != getattr(self, name).shape:
                raise ValueError(f"Batch statistic '{name}' has shape {values[name].shape}; "
                                 f"expected {getattr(self, name).shape}.")
        n_b = float(values["count"])
        if n_b == 0:
            return
        n = self.count + n_b
        dx, de = values["mean_x"] - self.mean_x, values["mean_e"] - self.mean_e
        if self.count > 0:
            self._pending.append((self.count * n_b / n, dx, de))
        for name in ("xx", "xe", "ee"):
            np.add(getattr(self, name), values[name], out=getattr(self, name))
        self.mean_x = self.mean_x + dx * (n_b / n)
        self.mean_e = self.mean_e + de * (n_b / n)
        self.count = n

    def _flush(self) -> None:
        """Applies the collected rank-one terms of Chan's update."""
        if not self._pending:
            return
        f = np.array([p[0] for p in self._pending])
        dx = np.stack([p[1] for p in self._pending])
        de = np.stack([p[2] for p in self._pending])
        self.xx += (dx * f[:, None]).T @ dx
        self.xe += ((dx * f[:, None]).T @ de.reshape(len(f), -1)).reshape(self.xe.shape)
        self.ee += np.einsum("b,bna,bnc->nac", f, de, de)
        self._pending = []

    def merge(self, other: "CoMoments") -> "CoMoments":
        """The statistics of the samples of ``self`` and ``other`` together."""
        if not isinstance(other, CoMoments) or other.shape != self.shape:
            received = other.shape if isinstance(other, CoMoments) else type(other).__name__
            raise ValueError(f"Cannot merge co-moments of shape {self.shape} with {received}.")
        out = CoMoments(*self.shape)
        for part in (self, other):
            part._flush()
            out.add({"count": part.count, "mean_x": part.mean_x, "mean_e": part.mean_e,
                     "xx": part.xx, "xe": part.xe, "ee": part.ee})
        out._flush()
        return out

    def covariances(self) -> dict[str, np.ndarray]:
        """Population covariances ``xx`` (D, D), ``xe`` (D, N, k), ``ee`` (N, k, k)."""
        if self.count == 0:
            raise ValueError("No samples were added: covariances are undefined.")
        self._flush()
        return {"xx": self.xx / self.count, "xe": self.xe / self.count,
                "ee": self.ee / self.count, "mean_x": self.mean_x, "mean_e": self.mean_e}
