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
