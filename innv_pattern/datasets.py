"""Data with known signals, and sklearn's digits: for tests, demos and benchmarks.

* :func:`toy_data`: the paper's Section 2 example, ``x = a_s y + a_d eps``.
* :func:`ground_truth_images`: the toy example generalised to images, in the
  spirit of the suppressor-variable benchmarks of Haufe's group (Wilming et
  al., 2022): a class signal in one block, a distractor that covers the
  signal block *and* a block that carries no class information (the
  suppressor).  A good filter must use the suppressor to cancel the
  distractor, so explanations that show the weights light up a block where
  there is no signal.  ``kind="xor"`` needs a nonlinear model.
* :func:`load_digits`: sklearn's 8x8 digits (shipped with sklearn, no
  download) as float32 images, optionally upscaled and with colour channels.
* :func:`train_digits_cnn`: a small ReLU CNN that trains on digits in seconds.
* From :mod:`innv_pattern.groundtruth_data` (the literature's ground truths):
  :func:`xai_tris` (tetromino images, Clark et al., 2024),
  :func:`suppressor_data` (Wilming et al., 2022 and 2023) and :func:`haufe_toy`
  (Haufe et al., 2014, as iNNvestigate 1.x tests it).

Example:
    >>> toy = toy_data(1000, seed=0)
    >>> toy.x.shape, toy.x.dtype, toy.w.tolist()
    ((1000, 2), dtype('float32'), [1.0, -1.0])
    >>> gt = ground_truth_images(10, size=8)
    >>> gt.x.shape, int(gt.signal_mask.sum())
    ((10, 8, 8, 1), 4)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from innv_pattern.groundtruth_data import (BACKGROUNDS, SCENARIOS, XAI_TRIS_SNR, SuppressorData,
                                           XaiTris, haufe_toy, suppressor_data, tetromino,
                                           xai_tris)

__all__ = [
    "BACKGROUNDS",
    "GroundTruth",
    "SCENARIOS",
    "SuppressorData",
    "ToyData",
    "XAI_TRIS_SNR",
    "XaiTris",
    "digits_cnn",
    "ground_truth_images",
    "haufe_toy",
    "load_digits",
    "suppressor_data",
    "tetromino",
    "toy_data",
    "train_digits_cnn",
    "xai_tris",
]


@dataclasses.dataclass
class ToyData:
    """The Section 2 example: ``x = s + d``, ``s = a_s y``, ``d = a_d eps``.

    Attributes:
        x: Inputs, ``(n, 2)`` float32.
        y: The signal's amplitude (the regression target), ``(n,)``.
        signal: ``a_s y``, ``(n, 2)``.
        distractor: ``a_d eps``, ``(n, 2)``.
        a_s: The signal direction (the pattern).
        a_d: The distractor direction.
        w: The optimal filter: ``w^T a_s = 1``, ``w^T a_d = 0``.
    """

    x: np.ndarray
    y: np.ndarray
    signal: np.ndarray
    distractor: np.ndarray
    a_s: np.ndarray
    a_d: np.ndarray
    w: np.ndarray


def toy_data(n: int = 1000, mu: float = 0.0, sigma: float = 1.0,
             a_s: tuple[float, float] = (1.0, 0.0), a_d: tuple[float, float] = (1.0, 1.0),
             seed: int = 0) -> ToyData:
    """The paper's toy data: ``y ~ U[-1, 1]``, ``eps ~ N(mu, sigma^2)``.

    Args:
        n: Number of samples.
        mu: Mean of the distractor's amplitude.
        sigma: Standard deviation of the distractor's amplitude.
        a_s: Signal direction (the paper's ``(1, 0)``).
        a_d: Distractor direction (the paper's ``(1, 1)``).
        seed: Random seed.

    Example:
        >>> toy = toy_data(5000, seed=1)
        >>> bool(np.allclose(toy.x @ toy.w, toy.y, atol=1e-5))   # w extracts y
        True
    """
    if n < 1 or not sigma >= 0:
        raise ValueError(f"toy_data needs n >= 1 and sigma >= 0; received n={n!r}, "
                         f"sigma={sigma!r}.")
    rng = np.random.default_rng(seed)
    return _toy(rng.uniform(-1.0, 1.0, n), rng.normal(mu, sigma, n), a_s, a_d)


def _toy(y: np.ndarray, eps: np.ndarray, a_s: tuple[float, float],
         a_d: tuple[float, float]) -> ToyData:
    """``x = y a_s + eps a_d`` as :class:`ToyData`, with the filter ``w``."""
    s_dir, d_dir = np.asarray(a_s, np.float64), np.asarray(a_d, np.float64)
    basis = np.stack([s_dir, d_dir])
    if s_dir.shape != (2,) or d_dir.shape != (2,) or abs(np.linalg.det(basis)) < 1e-12:
        raise ValueError(f"a_s and a_d must be two linearly independent 2-vectors; received "
                         f"a_s={a_s!r}, a_d={a_d!r}.")
    signal, distractor = np.outer(y, s_dir), np.outer(eps, d_dir)
    w = np.linalg.solve(basis, [1.0, 0.0])
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return ToyData(f32(signal + distractor), f32(y), f32(signal), f32(distractor),
                   f32(s_dir), f32(d_dir), f32(w))


@dataclasses.dataclass
class GroundTruth:
    """Images whose class signal and distractor are known by construction.

    Attributes:
        x: Images ``(n, size, size, 1)`` float32: signal + distractor + noise.
        labels: Class per image (0 or 1), int64.
        signal: The class-dependent part of each image, like ``x``.
        distractor: The distractor part of each image, like ``x``.
        signal_mask: ``(size, size)`` bool, where any signal pattern is non-zero.
        signal_patterns: ``(k, size, size)``: the signal directions.
        distractor_pattern: ``(size, size)``: the distractor direction.
        suppressor_mask: ``(size, size)`` bool, distractor without signal.
    """

    x: np.ndarray
    labels: np.ndarray
    signal: np.ndarray
    distractor: np.ndarray
    signal_mask: np.ndarray
    signal_patterns: np.ndarray
    distractor_pattern: np.ndarray
    suppressor_mask: np.ndarray


def _block(size: int, quadrant: str) -> np.ndarray:
    """A square of side ``size // 4`` centred in a quadrant ('tl', 'tr', 'bl', 'br')."""
    side, half = max(size // 4, 1), size // 2
    mask = np.zeros((size, size), bool)
    r0 = (half - side) // 2 + (half if quadrant[0] == "b" else 0)
    c0 = (half - side) // 2 + (half if quadrant[1] == "r" else 0)
    mask[r0:r0 + side, c0:c0 + side] = True
    return mask


def ground_truth_images(n: int = 2000, size: int = 16, kind: str = "linear",
                        signal_scale: float = 1.0, distractor_scale: float = 2.0,
                        noise: float = 0.1, seed: int = 0) -> GroundTruth:
    """Two-class images with a known signal and a correlated distractor.

    ``kind="linear"``: ``x = z a_s + eps a_d + noise`` with ``z = +-1`` the class
    (label ``(z + 1) / 2``), ``a_s`` a block in the top-left quadrant and
    ``a_d`` that block plus one in the bottom-right quadrant (the suppressor).
    ``kind="xor"``: ``x = z1 a_1 + z2 a_2 + eps a_d + noise`` with blocks
    ``a_1`` (top-left) and ``a_2`` (top-right), label 1 where ``z1 == z2``:
    no linear model separates the classes; ``a_d`` covers both signal
    blocks and the bottom-right one.  ``eps ~ N(0, distractor_scale^2)``,
    noise white with standard deviation ``noise``.

    Args:
        n: Number of images.
        size: Side of the images (at least 4).
        kind: ``"linear"`` or ``"xor"``.
        signal_scale: Amplitude of the signal patterns.
        distractor_scale: Standard deviation of the distractor's amplitude.
        noise: Standard deviation of the white noise.
        seed: Random seed.

    Example:
        >>> gt = ground_truth_images(4, size=8, kind="xor")
        >>> gt.signal_patterns.shape, int(gt.suppressor_mask.sum())
        ((2, 8, 8), 4)
    """
    if kind not in ("linear", "xor") or size < 4 or n < 1:
        raise ValueError(f"ground_truth_images needs kind 'linear' or 'xor', size >= 4 and "
                         f"n >= 1; received kind={kind!r}, size={size!r}, n={n!r}.")
    quads = ("tl",) if kind == "linear" else ("tl", "tr")
    patterns = np.stack([_block(size, q) for q in quads]).astype(np.float64) * signal_scale
    suppressor = _block(size, "br")
    d_pattern = (patterns.sum(0) != 0) | suppressor
    rng = np.random.default_rng(seed)
    z = rng.choice([-1.0, 1.0], size=(n, len(quads)))
    labels = (z[:, 0] > 0) if kind == "linear" else (z[:, 0] == z[:, 1])
    signal = np.einsum("nk,khw->nhw", z, patterns)
    distractor = rng.normal(0.0, distractor_scale, (n, 1, 1)) * d_pattern
    x = signal + distractor + rng.normal(0.0, noise, signal.shape)
    f32 = lambda a: np.asarray(a, np.float32)[..., None]  # noqa: E731
    return GroundTruth(f32(x), labels.astype(np.int64), f32(signal), f32(distractor),
                       patterns.sum(0) != 0, patterns.astype(np.float32),
                       d_pattern.astype(np.float32), suppressor)


def load_digits(size: int | None = None, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits (1,797 images, shipped with sklearn) as float32 images.

    Args:
        size: Side to resize the 8x8 images to (bilinear), or ``None``.
        channels: Copies of the grey channel (3 for ImageNet-shaped models).

    Returns:
        ``(x, y)``: ``x`` of shape ``(1797, s, s, channels)`` with values in
        ``[0, 1]``, ``y`` the digit (int64).

    Example:
        >>> x, y = load_digits()
        >>> x.shape, x.dtype, float(x.max()), int(y[0])
        ((1797, 8, 8, 1), dtype('float32'), 1.0, 0)
    """
    from sklearn.datasets import load_digits as _sk_digits

    if channels < 1 or (size is not None and size < 1):
        raise ValueError(f"load_digits needs channels >= 1 and size >= 1 or None; received "
                         f"size={size!r}, channels={channels!r}.")
    bunch = _sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    if size is not None and size != 8:
        import tensorflow as tf

        x = tf.image.resize(x, (size, size), method="bilinear").numpy()
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    return np.repeat(x, channels, axis=-1), bunch.target.astype(np.int64)


def digits_cnn(input_shape: tuple[int, ...] = (8, 8, 1), classes: int = 10) -> Any:
    """A small ReLU CNN for digit-sized images (softmax output).

    Three 3x3 convolutions (16, 32, 32 filters, two 2x2 max-poolings) and two
    dense layers (64 ReLU units, then ``classes``).

    Example:
        >>> [layer.name for layer in digits_cnn().layers if layer.weights]
        ['conv1', 'conv2', 'conv3', 'dense1', 'dense2']
    """
    import keras

    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(64, activation="relu", name="dense1"),
        layers.Dense(classes, activation="softmax", name="dense2"),
    ], name="digits_cnn")


def train_digits_cnn(x: np.ndarray | None = None, y: np.ndarray | None = None,
                     epochs: int = 15, seed: int = 0, verbose: int = 0) -> Any:
    """Trains :func:`digits_cnn` (Adam, cross-entropy) in a few seconds on a CPU.

    Args:
        x: Training images; default: all of :func:`load_digits`.
        y: Their labels (ints).
        epochs: Passes over the data (batches of 64).
        seed: Seed of the initialisation and the shuffling.
        verbose: Keras' ``fit`` verbosity.

    Returns:
        The trained model (about 97% training accuracy on digits).

    Example:
        >>> x, y = load_digits()
        >>> model = train_digits_cnn(x[:200], y[:200], epochs=1)
        >>> model.output_shape
        (None, 10)
    """
    import keras

    if x is None:
        x, y = load_digits()
    if y is None or len(x) != len(y):
        raise ValueError(f"train_digits_cnn needs labels y, one per image; received "
                         f"{len(x)} images and {None if y is None else len(y)} labels.")
    keras.utils.set_random_seed(seed)
    model = digits_cnn(tuple(x.shape[1:]), int(np.max(y)) + 1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=verbose, shuffle=True)
    return model
