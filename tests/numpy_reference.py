"""An independent float64 numpy implementation of every reverse rule.

Convolutions use explicit patches (im2col), pooling explicit windows: nothing
here shares code with the library.  A network is a list of layer dicts; see
:func:`from_keras` for the Keras models the tests build.
"""

from __future__ import annotations

import numpy as np


def _pad(x: np.ndarray, kh: int, kw: int, stride: int, padding: str) -> tuple[np.ndarray, int, int]:
    n, h, w, c = x.shape
    if padding == "valid":
        return x, (h - kh) // stride + 1, (w - kw) // stride + 1
    oh, ow = -(-h // stride), -(-w // stride)
    ph = max((oh - 1) * stride + kh - h, 0)
    pw = max((ow - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    return xp, oh, ow


def patches(x: np.ndarray, kh: int, kw: int, stride: int = 1, padding: str = "valid") -> np.ndarray:
    """(n, oh, ow, kh, kw, c): every receptive field, materialized."""
    xp, oh, ow = _pad(x, kh, kw, stride, padding)
    out = np.empty((x.shape[0], oh, ow, kh, kw, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
    return out


def patches_transpose(gp: np.ndarray, x_shape: tuple, stride: int, padding: str) -> np.ndarray:
    """Adjoint of :func:`patches`: scatter-adds patch gradients into the input."""
    n, oh, ow, kh, kw, c = gp.shape
    xp, _, _ = _pad(np.zeros(x_shape), kh, kw, stride, padding)
    out = np.zeros_like(xp)
    for i in range(oh):
        for j in range(ow):
            out[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :] += gp[:, i, j]
    h, w = x_shape[1], x_shape[2]
    top, left = (xp.shape[1] - h) // 2, (xp.shape[2] - w) // 2
    return out[:, top:top + h, left:left + w, :]


class Net:
    """A chain of layers in float64 with a forward pass and modified backward passes."""

    def __init__(self, layers: list[dict]) -> None:
        self.layers = layers

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        acts = [x.astype(np.float64)]
        for layer in self.layers:
            acts.append(self._fwd(layer, acts[-1]))
        return acts

    def _fwd(self, layer: dict, x: np.ndarray) -> np.ndarray:
        kind = layer["kind"]
        if kind == "dense":
            return x @ layer["W"] + layer["b"]
        if kind == "conv":
            k = layer["W"]
            p = patches(x, k.shape[0], k.shape[1], layer["stride"], layer["padding"])
            return np.einsum("nijabc,abcd->nijd", p, k) + layer["b"]
        if kind == "relu":
            return np.maximum(x, 0)
        if kind in ("maxpool", "avgpool"):
            s = layer["size"]
            p = patches(x, s, s, s, "valid")
            return p.max(axis=(3, 4)) if kind == "maxpool" else p.mean(axis=(3, 4))
        if kind == "flatten":
            return x.reshape(len(x), -1)
        raise ValueError(kind)

    def reverse(self, x: np.ndarray, method: str, index: np.ndarray, patterns: list | None = None,
                epsilon: float = 0.0) -> np.ndarray:
        """The analysis of ``method`` for the output neurons ``index``."""
        acts = self.forward(x)
        out = acts[-1]
        g = np.zeros_like(out)
        rows = np.arange(len(out))
        start_value = method not in ("gradient", "input_t_gradient")
        g[rows, index] = out[rows, index] if start_value else 1.0
        for i in reversed(range(len(self.layers))):
            g = self._bwd(self.layers[i], acts[i], acts[i + 1], g, method,
                          None if patterns is None else patterns[i], epsilon)
        return g * x if method == "input_t_gradient" else g

    def _bwd(self, layer: dict, x: np.ndarray, y: np.ndarray, g: np.ndarray, method: str,
             pattern: np.ndarray | None, epsilon: float) -> np.ndarray:
        kind = layer["kind"]
        lrp = method.startswith("lrp")
        if kind == "relu":
            if method == "deconvnet":
                return np.maximum(g, 0)
            if method == "guided_backprop":
                return np.maximum(g, 0) * (x > 0)
            return g if lrp else g * (x > 0)
        if kind == "flatten":
            return g.reshape(x.shape)
        if lrp and kind in ("dense", "conv", "avgpool"):
            z = y + epsilon * np.where(y >= 0, 1.0, -1.0)
            s = np.divide(g, z, out=np.zeros_like(g), where=z != 0)
            return x * self._linear_t(layer, x, s, None)
        kernel = None
        if pattern is not None:
            kernel = pattern * layer["W"] if method == "pattern.attribution" else pattern
        return self._linear_t(layer, x, g, kernel)

    def _linear_t(self, layer: dict, x: np.ndarray, g: np.ndarray, kernel: np.ndarray | None) -> np.ndarray:
        """Transpose of the layer's (linear part's) Jacobian applied to ``g``."""
        kind = layer["kind"]
        k = layer["W"] if kernel is None and "W" in layer else kernel
        if kind == "dense":
            return g @ k.T
        if kind == "conv":
            gp = np.einsum("nijd,abcd->nijabc", g, k)
            return patches_transpose(gp, x.shape, layer["stride"], layer["padding"])
        s = layer["size"]
        p = patches(x, s, s, s, "valid")
        if kind == "avgpool":
            w = np.full(p.shape, 1.0 / (s * s))
        else:  # max pooling: the first maximum of each window wins (TensorFlow's choice)
            flat = p.reshape(p.shape[:3] + (-1, p.shape[-1]))
            w = np.zeros_like(flat)
            idx = flat.argmax(axis=3)
            np.put_along_axis(w, idx[:, :, :, None, :], 1.0, axis=3)
            w = w.reshape(p.shape)
        gp = w * g[:, :, :, None, None, :]
        return patches_transpose(gp, x.shape, s, "valid")


def from_keras(model) -> Net:
    """The :class:`Net` of a Sequential-style Keras chain (softmax dropped)."""
    layers: list[dict] = []
    for layer in model.layers:
        name = type(layer).__name__
        if name == "InputLayer":
            continue
        if name in ("Dense", "Conv2D"):
            W, b = (np.asarray(v, np.float64) for v in layer.get_weights())
            entry = {"kind": "dense" if name == "Dense" else "conv", "W": W, "b": b}
            if name == "Conv2D":
                entry.update(stride=layer.strides[0], padding=layer.padding)
            layers.append(entry)
            act = layer.activation.__name__
            if act == "relu":
                layers.append({"kind": "relu"})
            elif act not in ("linear", "softmax"):
                raise ValueError(act)
        elif name in ("MaxPooling2D", "AveragePooling2D"):
            layers.append({"kind": "maxpool" if name.startswith("Max") else "avgpool",
                           "size": layer.pool_size[0]})
        elif name == "Flatten":
            layers.append({"kind": "flatten"})
        elif name == "ReLU":
            layers.append({"kind": "relu"})
        else:
            raise ValueError(name)
    return Net(layers)


# --------------------------------------------------------------------------
# Single-layer LRP rules, from each connection's contribution.
# --------------------------------------------------------------------------
def _contributions(rule: str, p: np.ndarray, ones: np.ndarray, w: np.ndarray,
                   settings: dict) -> list[tuple[float, np.ndarray, bool]]:
    """``[(weight, c, with_bias)]``: c[..., k, d] is what input k gives output d in a group."""
    if rule in ("w_square", "flat"):
        kernel = w ** 2 if rule == "w_square" else np.ones_like(w)
        return [(1.0, ones[..., :, None] * kernel, False)]
    if rule == "z_plus_fast":
        return [(1.0, p[..., :, None] * np.maximum(w, 0), False)]
    if rule == "z_box":
        low = np.broadcast_to(settings["low"], p.shape)[..., :, None]
        high = np.broadcast_to(settings["high"], p.shape)[..., :, None]
        c = p[..., :, None] * w - low * np.maximum(w, 0) - high * np.minimum(w, 0)
        return [(1.0, c * (ones[..., :, None] != 0), False)]  # padding contributes nothing
    c = p[..., :, None] * w                                    # alpha-beta: by sign of x w
    bias = settings.get("bias", True)
    return [(settings["alpha"], np.maximum(c, 0), bias),
            (-settings["beta"], np.minimum(c, 0), bias)]


def rule_backward(rule: str, p: np.ndarray, ones: np.ndarray, w: np.ndarray, b: np.ndarray,
                  r: np.ndarray, **settings) -> np.ndarray:
    """Relevance of the inputs ``p`` (..., K) of ``y = p w + b`` given ``r`` (..., D).

    ``ones`` marks real inputs (1) and padding (0) like ``p``. Each group's
    denominator is the sum of its contributions (plus ``b``); a zero
    denominator passes nothing.
    """
    total = np.zeros(p.shape)
    for weight, c, with_bias in _contributions(rule, p, ones, w, settings):
        z = c.sum(axis=-2) + (b if with_bias else 0.0)
        s = np.divide(r, z, out=np.zeros_like(r), where=z != 0)
        total += weight * (c * s[..., None, :]).sum(axis=-1)
    return total


def dense_rule(rule: str, x: np.ndarray, w: np.ndarray, b: np.ndarray, r: np.ndarray,
               **settings) -> np.ndarray:
    """A Dense layer's input relevance under ``rule`` (float64)."""
    x = x.astype(np.float64)
    return rule_backward(rule, x, np.ones_like(x), w.astype(np.float64),
                         b.astype(np.float64), r.astype(np.float64), **settings)


def conv_rule(rule: str, x: np.ndarray, w: np.ndarray, b: np.ndarray, r: np.ndarray,
              stride: int, padding: str, **settings) -> np.ndarray:
    """A Conv2D layer's input relevance under ``rule``, with explicit patches (float64)."""
    x = x.astype(np.float64)
    kh, kw, c, d = w.shape
    p = patches(x, kh, kw, stride, padding)
    ones = patches(np.ones_like(x), kh, kw, stride, padding)
    flat = p.shape[:3] + (kh * kw * c,)
    if "low" in settings:  # bounds shaped like x become patches of bounds
        settings = {k: patches(np.broadcast_to(v, x.shape).astype(np.float64), kh, kw, stride,
                               padding).reshape(flat) for k, v in settings.items()}
    got = rule_backward(rule, p.reshape(flat), ones.reshape(flat), w.reshape(-1, d).astype(
        np.float64), b.astype(np.float64), r.astype(np.float64), **settings)
    return patches_transpose(got.reshape(p.shape), x.shape, stride, padding)
