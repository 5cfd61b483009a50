"""An independent float64 numpy reference for the pattern estimators.

It materializes every receptive field (explicit patches) and applies the
paper's formulas literally, so it shares nothing with the library's
patch-free kernel-gradient sums, shifts and padding corrections: agreement
means the library computes Eq. 3 and Eq. 7.  Layer inputs come from Keras
sub-models (not from the library's graph walk).
"""

from __future__ import annotations

import keras
import numpy as np


def same_pad(size: int, k: int, s: int, d: int = 1) -> tuple[int, int, int]:
    """TensorFlow's 'same' padding: (before, after, output size)."""
    eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2, out


def conv_patches(x: np.ndarray, kernel_size: tuple, strides: tuple, padding: str,
                 dilation: tuple = (1, 1)) -> np.ndarray:
    """(n, oh, ow, kh, kw, c): every receptive field of an NHWC batch."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, strides, dilation
    if padding == "same":
        t, b, oh = same_pad(x.shape[1], kh, sh, dh)
        left, right, ow = same_pad(x.shape[2], kw, sw, dw)
        x = np.pad(x, ((0, 0), (t, b), (left, right), (0, 0)))
    else:
        oh = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
        ow = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, kh, kw, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            rows = i * sh + dh * np.arange(kh)
            cols = j * sw + dw * np.arange(kw)
            out[:, i, j] = x[:, rows][:, :, cols]
    return out


def transpose1d_patches(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """(n, out, k, c) for a 'valid' Conv1DTranspose: tap t of output o reads x[i], o = i*s + t."""
    n, length, c = x.shape
    out = np.zeros((n, (length - 1) * stride + k, k, c))
    for i in range(length):
        for t in range(k):
            out[:, i * stride + t, t] = x[:, i]
    return out


TYPES = ("linear", "relu.positive", "relu.negative", "relu_eq7.positive", "relu_eq7.negative")


def patterns_from_samples(xs: np.ndarray, w: np.ndarray, b: np.ndarray, gated: bool = True,
                          regime: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Eq. 3 and both two-component forms for samples ``xs`` (n, F), filters ``w`` (F, N).

    ``relu.*``: every statistic within the regime, ``cov_r[x, y] / var_r[y]``
    (iNNvestigate 1.x); ``relu_eq7.*``: Eq. 7 as printed, ``E_r[x y] - E_r[x] E[y]``
    with ``E[y]`` over all samples.  The regime is ``y + b > 0`` when a ReLU
    gates the layer (``gated``), else every sample (the negative regime is
    then empty); ``regime``, an ``(n, N)`` boolean mask, overrides both (the
    sign of the ReLU input that gates the layer through an ``Add``).  Returns
    ``{type: (F, N) pattern}``; a degenerate neuron gets NaN here (the tests
    check the library's zeros separately).
    """
    y = xs @ w
    pos = (y + b) > 0 if gated else np.ones(y.shape, bool)
    pos = pos if regime is None else regime
    result = {}
    for kind, sel in (("linear", np.ones_like(pos)), ("positive", pos), ("negative", ~pos)):
        with np.errstate(invalid="ignore", divide="ignore"):
            numerators = {}
            for i in range(w.shape[1]):  # per neuron: its regime's samples, explicitly
                xr, yr = xs[sel[:, i]], y[sel[:, i], i]
                within = (xr - xr.mean(0)).T @ (yr - yr.mean()) / len(yr)
                global_mean = (xr.T @ yr) / len(yr) - xr.mean(0) * y[:, i].mean()
                numerators.setdefault("relu", []).append(within)
                numerators.setdefault("relu_eq7", []).append(global_mean)
            for family, columns in numerators.items():
                num = np.stack(columns, axis=1)
                name = "linear" if kind == "linear" else f"{family}.{kind}"
                result[name] = num / (w * num).sum(0)
    return result


def layer_input(model: keras.Model, layer: keras.layers.Layer, x: np.ndarray) -> np.ndarray:
    """``layer``'s input for the model input ``x``, in float64."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    sub = keras.Model(inputs, layer.input)
    return np.asarray(keras.ops.convert_to_numpy(sub(x, training=False)), np.float64)


def reference_patterns(model: keras.Model, layer: keras.layers.Layer, x: np.ndarray,
                       gated: bool | None = None) -> dict[str, np.ndarray]:
    """All pattern types of one Dense, Conv2D, DepthwiseConv2D or Conv1DTranspose layer.

    ``gated``: whether a ReLU follows the layer; by default, whether the layer's
    own activation is a ReLU.
    """
    if gated is None:
        gated = getattr(layer, "activation", None) is keras.activations.relu
    inp = layer_input(model, layer, x)
    w = np.asarray(layer.kernel, np.float64)
    b = np.asarray(layer.bias, np.float64) if layer.use_bias else np.zeros(w.shape[-1])
    if isinstance(layer, keras.layers.Dense):
        return patterns_from_samples(inp, w, b, gated)
    if isinstance(layer, keras.layers.Conv1DTranspose):
        p = transpose1d_patches(inp, layer.kernel_size[0], layer.strides[0])
        flat_w = np.transpose(w, (0, 2, 1)).reshape(-1, w.shape[1])
        found = patterns_from_samples(p.reshape(-1, flat_w.shape[0]), flat_w, b, gated)
        k, out, c = w.shape
        return {t: np.transpose(a.reshape(k, c, out), (0, 2, 1)) for t, a in found.items()}
    p = conv_patches(inp, layer.kernel_size, layer.strides, layer.padding, layer.dilation_rate)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return _depthwise(p, w, b, gated)
    groups = getattr(layer, "groups", 1)
    per_in, per_out = w.shape[2], w.shape[3] // groups
    result = {t: np.zeros_like(w) for t in TYPES}
    for g in range(groups):
        xs = p[..., g * per_in:(g + 1) * per_in].reshape(-1, int(np.prod(w.shape[:3])))
        cols = slice(g * per_out, (g + 1) * per_out)
        found = patterns_from_samples(xs, w[..., cols].reshape(xs.shape[1], -1), b[cols],
                                      gated)
        for t, a in found.items():
            result[t][..., cols] = a.reshape(w[..., cols].shape)
    return result


def _depthwise(p: np.ndarray, w: np.ndarray, b: np.ndarray,
               gated: bool) -> dict[str, np.ndarray]:
    kh, kw, cin, mult = w.shape
    result = {t: np.zeros_like(w) for t in TYPES}
    for c in range(cin):
        xs = p[..., c].reshape(-1, kh * kw)
        found = patterns_from_samples(xs, w[:, :, c, :].reshape(kh * kw, mult),
                                      b[c * mult:(c + 1) * mult], gated)
        for t, a in found.items():
            result[t][:, :, c, :] = a.reshape(kh, kw, mult)
    return result


def balance_biases(model: keras.Model, x: np.ndarray) -> keras.Model:
    """Sets every bias to minus the median pre-activation: half the samples in each regime.

    Patterns of neurons with few samples in a regime are ill-conditioned (the
    ratio of Eq. 7 amplifies float32 rounding), which tests of exact equality
    between two float32 computations must avoid.
    """
    for layer in model.layers:
        if getattr(layer, "bias", None) is None:
            continue
        inp = layer_input(model, layer, x).astype("float32")
        activation, layer.activation = layer.activation, keras.activations.linear
        layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
        pre = keras.ops.convert_to_numpy(layer(inp))
        layer.activation = activation
        ordered = np.sort(pre.reshape(-1, pre.shape[-1]), axis=0)
        middle = len(ordered) // 2  # halfway between two samples: no sample near the threshold
        layer.bias.assign((-(ordered[middle - 1] + ordered[middle]) / 2).astype("float32"))
    return model
