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

    Args:
        dim: ``D``, the size of ``x``.
        neurons: ``N``, the number of neurons.
        extras: ``k``, the scalars per neuron.
    """

    def __init__(self, dim: int, neurons: int, extras: int) -> None:
        self.shape = (int(dim), int(neurons), int(extras))
        d, n, k = self.shape
        self.count = 0.0
        self.mean_x, self.mean_e = np.zeros(d), np.zeros((n, k))
        self.xx, self.xe, self.ee = np.zeros((d, d)), np.zeros((d, n, k)), np.zeros((n, k, k))

    def add(self, batch: Mapping[str, Any]) -> None:
        """Adds a batch's statistics (:func:`batch_comoments`) in place."""
        other = CoMoments(*self.shape)
        for name in _NAMES:
            value = np.asarray(batch[name], np.float64)
            if name != "count" and value.shape != getattr(other, name).shape:
                raise ValueError(f"Batch statistic '{name}' has shape {value.shape}; expected "
                                 f"{getattr(other, name).shape}.")
            setattr(other, name, value if name != "count" else float(value))
        merged = self.merge(other)
        for name in _NAMES:
            setattr(self, name, getattr(merged, name))

    def merge(self, other: "CoMoments") -> "CoMoments":
        """The statistics of the samples of ``self`` and ``other`` together."""
        if not isinstance(other, CoMoments) or other.shape != self.shape:
            received = other.shape if isinstance(other, CoMoments) else type(other).__name__
            raise ValueError(f"Cannot merge co-moments of shape {self.shape} with {received}.")
        out = CoMoments(*self.shape)
        n = self.count + other.count
        if n == 0:
            return out
        f = self.count * other.count / n
        dx, de = other.mean_x - self.mean_x, other.mean_e - self.mean_e
        out.count = n
        out.mean_x = self.mean_x + dx * (other.count / n)
        out.mean_e = self.mean_e + de * (other.count / n)
        out.xx = self.xx + other.xx + f * np.outer(dx, dx)
        out.xe = self.xe + other.xe + f * dx[:, None, None] * de[None]
        out.ee = self.ee + other.ee + f * de[:, :, None] * de[:, None, :]
        return out

    def covariances(self) -> dict[str, np.ndarray]:
        """Population covariances ``xx`` (D, D), ``xe`` (D, N, k), ``ee`` (N, k, k)."""
        if self.count == 0:
            raise ValueError("No samples were added: covariances are undefined.")
        return {"xx": self.xx / self.count, "xe": self.xe / self.count,
                "ee": self.ee / self.count, "mean_x": self.mean_x, "mean_e": self.mean_e}
