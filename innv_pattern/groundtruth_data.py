"""Data whose important features are known by construction, from the literature.

Re-exported by :mod:`innv_pattern.datasets`; every generator is seeded.

* :func:`xai_tris`: the tetromino images of XAI-TRIS (Clark, Wilming and
  Haufe, "XAI-TRIS: non-linear image benchmarks to quantify false positive
  post-hoc attribution of feature importance", Machine Learning 113, 2024;
  recipe and signal-to-noise levels as in the authors' repository,
  ``braindatalab/xai-tris``, ``data/data_config*.json``), 8x8 or 64x64, the
  scenarios LIN, MULT, RIGID and XOR on WHITE or CORR backgrounds.
* :func:`suppressor_data`: the two-feature suppressor example of Wilming et
  al. ("Scrutinizing XAI using linear ground-truth data with suppressor
  variables", Machine Learning 111, 2022; "Theoretical behavior of XAI methods
  in the presence of suppressor variables", ICML 2023).
* :func:`haufe_toy`: the 2-D example of Haufe et al. (NeuroImage 87, 2014) as
  Kindermans et al. (2018) and iNNvestigate 1.x's ``HaufePatternExample``
  test use it: ``x = y a_s + eps a_d`` with ``y, eps ~ U(0, 1)``.

Example:
    >>> data = xai_tris(8, "xor", "corr", seed=0)
    >>> data.x.shape, data.masks.shape, int(data.masks[0].sum())
    ((8, 8, 8, 1), (8, 8, 8), 8)
    >>> sorted(XAI_TRIS_SNR[8]["lin"].items())
    [('corr', 0.0125), ('white', 0.18)]
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from innv_pattern.datasets import ToyData

__all__ = [
    "SCENARIOS",
    "BACKGROUNDS",
    "SuppressorData",
    "XAI_TRIS_SNR",
    "XaiTris",
    "haufe_toy",
    "suppressor_data",
    "tetromino",
    "xai_tris",
]

SCENARIOS = ("lin", "mult", "rigid", "xor")
BACKGROUNDS = ("white", "corr")

# The signal-to-noise levels alpha the XAI-TRIS authors publish for each image
# size, scenario and background (their data_config files).
XAI_TRIS_SNR = {
    8: {"lin": {"white": 0.18, "corr": 0.0125}, "mult": {"white": 0.7, "corr": 0.1},
        "rigid": {"white": 0.65, "corr": 0.2}, "xor": {"white": 0.35, "corr": 0.15}},
    64: {"lin": {"white": 0.03, "corr": 0.02}, "mult": {"white": 0.2, "corr": 0.65},
         "rigid": {"white": 0.575, "corr": 0.375}, "xor": {"white": 0.35, "corr": 0.15}},
}
# Per size: background standard deviation, CORR smoothing sigma, tetromino cell
# size (RIGID's at 64x64 is 4), the two fixed positions (top-left corners).
_LAYOUT = {
    8: {"sigma": 3.0, "cell": 1, "rigid_cell": 1, "positions": ((1, 1), (4, 5))},
    64: {"sigma": 10.0, "cell": 8, "rigid_cell": 4, "positions": ((8, 8), (32, 40))},
}
_BACKGROUND_STD = 0.5
_SIGNAL_BLUR, _MASK_THRESHOLD = 1.5, 0.05


def tetromino(shape: str, cell: int = 1) -> np.ndarray:
    """The 3x2 tetromino ``"T"`` or ``"L"`` (ones and zeros), each cell ``cell`` pixels wide.

    Example:
        >>> tetromino("T").astype(int).tolist()
        [[1, 0], [1, 1], [1, 0]]
    """
    cells = {"T": [[1, 0], [1, 1], [1, 0]], "L": [[1, 0], [1, 0], [1, 1]]}
    if shape not in cells or cell < 1:
        raise ValueError(f"tetromino needs shape 'T' or 'L' and cell >= 1; received "
                         f"shape={shape!r}, cell={cell!r}.")
    return np.kron(np.asarray(cells[shape], np.float64), np.ones((cell, cell)))


@dataclasses.dataclass
class XaiTris:
    """An XAI-TRIS data set.

    Attributes:
        x: Images ``(n, size, size, 1)`` float32, scaled so that ``max |x| = 1``.
        labels: Class per image (0: T, 1: L; XOR: 0 where the two signs agree).
        signal: Each image's signal before mixing, ``(n, size, size)``: the
            tetromino(es) with their signs (blurred at 64x64, as published).
        noise: Each image's background ``B`` before mixing (smoothed for CORR).
        masks: The ground truth per image, ``(n, size, size)`` bool: the pixels
            with a statistical association to the label.  For LIN, MULT and XOR
            both fixed tetromino positions (the absence of the other shape is
            informative too); for RIGID where this image's tetromino lies.
        scenario: ``"lin"``, ``"mult"``, ``"rigid"`` or ``"xor"``.
        background: ``"white"`` or ``"corr"``.
        snr: The signal-to-noise level alpha used.
    """

    x: np.ndarray
    labels: np.ndarray
    signal: np.ndarray
    noise: np.ndarray
    masks: np.ndarray
    scenario: str
    background: str
    snr: float


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each image (scipy's ``gaussian_filter``, mirrored borders)."""
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(image, sigma) for image in images])


def _place(size: int, pattern: np.ndarray, corner: tuple[int, int]) -> np.ndarray:
    out = np.zeros((size, size))
    out[corner[0]:corner[0] + pattern.shape[0], corner[1]:corner[1] + pattern.shape[1]] = pattern
    return out


def _signals(scenario: str, size: int, labels: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(signal, mask)`` per image, before blurring, for the given labels."""
    layout = _LAYOUT[size]
    if scenario == "rigid":
        out = []
        for label in labels:
            shape = np.rot90(tetromino("TL"[label], layout["rigid_cell"]), rng.integers(4))
            corner = tuple(rng.integers(0, size - s + 1) for s in shape.shape)
            out.append(_place(size, shape, corner))
        signal = np.stack(out)
        return signal, signal != 0
    t, l_ = (_place(size, tetromino(s, layout["cell"]), p)
             for s, p in zip("TL", layout["positions"]))
    mask = np.broadcast_to((t + l_) != 0, (len(labels), size, size))
    if scenario == "xor":
        first = rng.choice([-1.0, 1.0], len(labels))
        second = np.where(labels == 0, first, -first)
        return first[:, None, None] * t + second[:, None, None] * l_, mask
    return np.where(labels[:, None, None] == 0, t, l_), mask


def _unit(images: np.ndarray) -> np.ndarray:
    """Each image divided by its Frobenius norm."""
    return images / np.linalg.norm(images.reshape(len(images), -1), axis=1)[:, None, None]


def xai_tris(n: int = 2000, scenario: str = "lin", background: str = "white",
             size: int = 8, snr: float | None = None, seed: int = 0) -> XaiTris:
    """XAI-TRIS tetromino images (Clark et al., 2024).

    A background ``B ~ N(0, 0.5^2)`` per pixel (WHITE), or that background
    Gaussian-smoothed with sigma 3 at 8x8 and 10 at 64x64 (CORR; the
    published values).  The signal ``P`` is a T (class 0) or an L (class 1),
    3x2 cells of 1 at fixed positions ((1, 1) and (4, 5) at 8x8; cells of 8
    pixels at (8, 8) and (32, 40) at 64x64, blurred with sigma 1.5 there, the
    mask being where the blurred signal reaches 0.05).  Scenarios, with alpha
    the signal-to-noise level (default: the published one, ``XAI_TRIS_SNR``):

    * LIN: ``x = alpha P / ||P|| + (1 - alpha) B / ||B||`` (norms per image);
    * MULT: ``x = (1 - alpha P) * B``;
    * RIGID: as LIN, the tetromino rotated by a random multiple of 90 degrees
      and placed at a random position (cells of 4 pixels at 64x64);
    * XOR: as LIN with both tetrominoes, ``P = s1 T + s2 L`` with random signs,
      class 0 where ``s1 == s2``.

    Finally the whole set is scaled so that ``max |x| = 1``.  Classes are
    balanced and shuffled.

    Args:
        n: Number of images (even).
        scenario: ``"lin"``, ``"mult"``, ``"rigid"`` or ``"xor"``.
        background: ``"white"`` or ``"corr"``.
        size: 8 or 64.
        snr: alpha in ``(0, 1]``; ``None`` for the published level.
        seed: Random seed.

    Example:
        >>> data = xai_tris(10, "lin", "white")
        >>> data.labels.tolist().count(0), data.snr, float(abs(data.x).max())
        (5, 0.18, 1.0)
    """
    if scenario not in SCENARIOS or background not in BACKGROUNDS or size not in _LAYOUT:
        raise ValueError(f"xai_tris needs scenario in {SCENARIOS}, background in {BACKGROUNDS} "
                         f"and size 8 or 64; received scenario={scenario!r}, "
                         f"background={background!r}, size={size!r}.")
    alpha = XAI_TRIS_SNR[size][scenario][background] if snr is None else float(snr)
    if n < 2 or n % 2 or not 0.0 < alpha <= 1.0:
        raise ValueError(f"xai_tris needs an even n >= 2 and 0 < snr <= 1; received n={n!r}, "
                         f"snr={snr!r}.")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1], n // 2))
    signal, mask = _signals(scenario, size, labels, rng)
    if size == 64:
        signal = _blur(signal, _SIGNAL_BLUR)
        mask = np.abs(signal) >= _MASK_THRESHOLD if scenario == "rigid" else np.broadcast_to(
            _blur(mask[:1].astype(np.float64), _SIGNAL_BLUR)[0] >= _MASK_THRESHOLD, mask.shape)
    noise = rng.normal(0.0, _BACKGROUND_STD, (n, size, size))
    if background == "corr":
        noise = _blur(noise, _LAYOUT[size]["sigma"])
    if scenario == "mult":
        x = (1.0 - alpha * signal) * noise
    else:
        x = alpha * _unit(signal) + (1.0 - alpha) * _unit(noise)
    x = x / np.abs(x).max()
    return XaiTris(x[..., None].astype(np.float32), labels.astype(np.int64),
                   signal.astype(np.float32), noise.astype(np.float32), np.array(mask, bool),
                   scenario, background, alpha)


@dataclasses.dataclass
class SuppressorData:
    """Two features, one carrying the class and noise, one carrying only noise.

    Attributes:
        x: ``(n, 2)`` float32: ``x = z a + eta``.
        labels: Class per sample (``z = 2 label - 1``).
        a: The signal pattern ``(1, 0)``: feature 1 is the suppressor.
        covariance: The noise covariance ``Sigma``.
        w: The Bayes-optimal linear filter ``Sigma^-1 a`` (both classes share
            ``Sigma``), scaled so that ``w^T a = 1``: it weighs the suppressor.
    """

    x: np.ndarray
    labels: np.ndarray
    a: np.ndarray
    covariance: np.ndarray
    w: np.ndarray


def suppressor_data(n: int = 2000, correlation: float = 0.8, noise: tuple[float, float] = (
                    1.0, 1.0), seed: int = 0) -> SuppressorData:
    """Wilming et al.'s suppressor example: ``x = z a + eta``, ``a = (1, 0)``.

    ``z = +-1`` (balanced), ``eta ~ N(0, Sigma)`` with standard deviations
    ``noise`` and correlation ``correlation``.  Feature 1 is independent of the
    class, yet the Bayes-optimal filter ``w ~ Sigma^-1 a = (1, -rho s1 / s2)``
    (up to scale) subtracts it to cancel the noise of feature 0; the pattern
    ``Cov(x) w`` is proportional to ``a``, zero on the suppressor.

    Args:
        n: Number of samples (even).
        correlation: Correlation of the two noise terms, in ``(-1, 1)``.
        noise: Standard deviations of the two noise terms.
        seed: Random seed.

    Example:
        >>> data = suppressor_data(1000, correlation=0.5)
        >>> data.w.round(3).tolist()
        [1.0, -0.5]
    """
    s = np.asarray(noise, np.float64)
    if n < 2 or n % 2 or not -1.0 < correlation < 1.0 or s.shape != (2,) or (s <= 0).any():
        raise ValueError(f"suppressor_data needs an even n >= 2, -1 < correlation < 1 and two "
                         f"positive noise levels; received n={n!r}, correlation={correlation!r},"
                         f" noise={noise!r}.")
    cov = np.array([[s[0] ** 2, correlation * s[0] * s[1]],
                    [correlation * s[0] * s[1], s[1] ** 2]])
    a = np.array([1.0, 0.0])
    w = np.linalg.solve(cov, a)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1], n // 2))
    x = np.outer(2.0 * labels - 1.0, a) + rng.multivariate_normal(np.zeros(2), cov, n)
    return SuppressorData(x.astype(np.float32), labels.astype(np.int64), a, cov, w / (w @ a))


def haufe_toy(n: int = 1000, seed: int = 0) -> "ToyData":
    """The 2-D example as iNNvestigate 1.x tests PatternNet: ``y, eps ~ U(0, 1)``.

    ``x = y a_s + eps a_d`` with ``a_s = (1, 0)``, ``a_d = (1, 1)``.  A linear
    regression of ``y`` on ``x`` has ``w = (1, -1)`` (``|w|`` is ``a_d``'s
    direction, perpendicular to it) and the linear pattern is ``a_s``.

    Example:
        >>> toy = haufe_toy(100)
        >>> float(toy.y.min()) >= 0, toy.w.tolist()
        (True, [1.0, -1.0])
    """
    from innv_pattern.datasets import _toy

    rng = np.random.default_rng(seed)
    return _toy(rng.uniform(0.0, 1.0, n), rng.uniform(0.0, 1.0, n), (1.0, 0.0), (1.0, 1.0))
