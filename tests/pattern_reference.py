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


def patterns_from_samples(xs: np.ndarray, w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Eq. 3 and Eq. 7 for samples ``xs`` (n, F), filters ``w`` (F, N), bias ``b`` (N,).

    Returns ``{type: (F, N) pattern}``; a degenerate neuron gets NaN here (the
    tests check the library's zeros separately).
    """
    y = xs @ w
    pos = (y + b) > 0
    mean_y = y.mean(0)
    result = {}
    for kind, sel in (("linear", np.ones_like(pos)), ("relu.positive", pos),
                      ("relu.negative", ~pos)):
        count = sel.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            e_xy = (xs.T @ (y * sel)) / count
            e_x = (xs.T @ sel) / count
            if kind == "linear":
                num = ((xs - xs.mean(0)).T @ (y - mean_y)) / len(xs)
            else:
                num = e_xy - e_x * mean_y
            result[kind] = num / (w * num).sum(0)
    return result


def layer_input(model: keras.Model, layer: keras.layers.Layer, x: np.ndarray) -> np.ndarray:
    """``layer``'s input for the model input ``x``, in float64."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    sub = keras.Model(inputs, layer.input)
    return np.asarray(keras.ops.convert_to_numpy(sub(x, training=False)), np.float64)


def reference_patterns(model: keras.Model, layer: keras.layers.Layer,
                       x: np.ndarray) -> dict[str, np.ndarray]:
    """All pattern types of one Dense, Conv2D, DepthwiseConv2D or Conv1DTranspose layer."""
    inp = layer_input(model, layer, x)
    w = np.asarray(layer.kernel, np.float64)
    b = np.asarray(layer.bias, np.float64) if layer.use_bias else np.zeros(w.shape[-1])
    if isinstance(layer, keras.layers.Dense):
        return patterns_from_samples(inp, w, b)
    if isinstance(layer, keras.layers.Conv1DTranspose):
        p = transpose1d_patches(inp, layer.kernel_size[0], layer.strides[0])
        flat_w = np.transpose(w, (0, 2, 1)).reshape(-1, w.shape[1])
        found = patterns_from_samples(p.reshape(-1, flat_w.shape[0]), flat_w, b)
        k, out, c = w.shape
        return {t: np.transpose(a.reshape(k, c, out), (0, 2, 1)) for t, a in found.items()}
    p = conv_patches(inp, layer.kernel_size, layer.strides, layer.padding, layer.dilation_rate)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return _depthwise(p, w, b)
    groups = getattr(layer, "groups", 1)
    per_in, per_out = w.shape[2], w.shape[3] // groups
    result = {t: np.zeros_like(w) for t in ("linear", "relu.positive", "relu.negative")}
    for g in range(groups):
        xs = p[..., g * per_in:(g + 1) * per_in].reshape(-1, int(np.prod(w.shape[:3])))
        cols = slice(g * per_out, (g + 1) * per_out)
        found = patterns_from_samples(xs, w[..., cols].reshape(xs.shape[1], -1), b[cols])
        for t, a in found.items():
            result[t][..., cols] = a.reshape(w[..., cols].shape)
    return result


def _depthwise(p: np.ndarray, w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    kh, kw, cin, mult = w.shape
    result = {t: np.zeros_like(w) for t in ("linear", "relu.positive", "relu.negative")}
    for c in range(cin):
        xs = p[..., c].reshape(-1, kh * kw)
        found = patterns_from_samples(xs, w[:, :, c, :].reshape(kh * kw, mult),
                                      b[c * mult:(c + 1) * mult])
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
