"""Signal estimators of the paper as mergeable float64 sufficient statistics.

Pure numpy, independent of Keras.  For one kernel layer with kernel ``w``
(one column ``w_j`` per output neuron ``j``) every sample gives an input
vector ``x`` (a Dense input, or a convolution patch), the output
``y_j = w_j^T x`` *without* the bias, and the regime ``y_j + b_j > 0``.
:class:`PatternStatistics` keeps, per neuron, the count of samples ``n`` and
of positive-regime samples ``n+``, and the sums of ``x``, ``y`` and ``x y``
over all samples and over the positive regime (negative-regime sums are the
totals minus the positive ones).  From these, :meth:`PatternStatistics.finalize`
computes the patterns of each estimator declared in :data:`ESTIMATORS`:

* ``"linear"`` (Eq. 3): ``a = cov[x, y] / (w^T cov[x, y])``;
* ``"relu"``, the two-component estimator with every statistic taken within
  the regime (iNNvestigate 1.x, whose VGG16 heat maps are the published
  ones): ``a+ = cov+[x, y] / var+[y]``, that is ``(E+[x y] - E+[x] E+[y]) /
  w^T (E+[x y] - E+[x] E+[y])`` (``"relu.positive"``), and ``"relu.negative"``
  the same with ``E-``;
* ``"relu_eq7"``, the two-component estimator as Eq. 7 prints it and the
  paper's code (nn-patterns) computes it: ``a+ = (E+[x y] - E+[x] E[y]) /
  w^T (E+[x y] - E+[x] E[y])`` with ``E[y]`` over all samples
  (``"relu_eq7.positive"``, ``"relu_eq7.negative"``).

Both two-component forms reduce to the linear estimator when a regime holds
every sample.  Only ``"relu"`` is invariant to a shift of the input's mean
(compensated by the bias, Kindermans et al., 2017): Eq. 7's numerator is
``cov+[x, y] + E+[x] (E+[y] - E[y])``, and a shift moves ``E+[y] - E[y]``.
On trained networks with BatchNormalization the difference is large
(``benchmarks/trained_networks.py``), so ``"relu"`` is the default.  A neuron
whose regime has fewer samples than its numerator needs
(:attr:`Estimator.min_samples`: a covariance of one sample is zero), or whose
denominator vanishes (to within :data:`DEGENERATE_RTOL` of ``sum_f |w_f
num_f|``: rounding noise), is *degenerate*: its pattern is all zeros (it
contributes nothing to a PatternNet or PatternAttribution backward pass) and
it is counted.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y, eps = rng.uniform(-1, 1, 1000), rng.normal(0, 1, 1000)
    >>> x = np.outer(y, [1.0, 0.0]) + np.outer(eps, [1.0, 1.0])   # Section 2
    >>> w = np.array([[1.0], [-1.0]])
    >>> y = x @ w
    >>> stats = PatternStatistics((2, 1), neuron_axes=(1,), regimes=False)
    >>> stats.update({"count": len(x), "sum_x": x.sum(0)[:, None],
    ...               "sum_y": y.sum(0)[None], "sum_xy": x.T @ y})
    >>> patterns, degenerate = stats.finalize(w, ("linear",))
    >>> np.allclose(patterns["linear"][:, 0], [1.0, 0.0], atol=0.05)   # a_s, not w
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = [
    "DEFAULT_ESTIMATOR",
    "DEGENERATE_RTOL",
    "ESTIMATORS",
    "Estimator",
    "PATTERN_TYPES",
    "POSITIVE",
    "PatternStatistics",
    "estimators_of_family",
    "expand_pattern_type",
    "parse_pattern",
    "regimes_of",
    "state_shapes",
]

#: The regimes of a two-component estimator: a ReLU's active and inactive sides.
REGIMES = ("positive", "negative")


@dataclasses.dataclass(frozen=True)
class Estimator:
    """One signal estimator, declared once for the computer, the fitter's sums, pattern
    files, evaluation and the command line (its numerator: :meth:`PatternStatistics._numerator`).

    Attributes:
        name: The ``pattern_type`` users pass (``"relu"``).
        family: The paper's estimator it is: ``"linear"`` (``S_a``, Eq. 3) or
            ``"two_component"`` (``S_a+-``, Eqs. 4-7); the names
            :func:`~innv_pattern.evaluate.signal_quality` compares.
        regimes: The regimes with a pattern each (``()``: one, named ``name``).
        within_regime_mean: The numerator's mean of ``y`` is the regime's
            (``cov_r[x, y]``), not all samples' (Eq. 7).
        summary: One line for help texts and messages.

    Example:
        >>> ESTIMATORS["relu"].patterns, ESTIMATORS["linear"].patterns
        (('relu.positive', 'relu.negative'), ('linear',))
    """

    name: str
    family: str
    regimes: tuple[str, ...]
    within_regime_mean: bool
    summary: str

    @property
    def min_samples(self) -> int:
        """Samples a regime needs for a pattern: a covariance of one sample is exactly
        zero (what finalizing it would divide is rounding noise); Eq. 7's regime
        numerator ``E_r[x] (y - E[y])`` is defined from one."""
        return 1 if self.regimes and not self.within_regime_mean else 2

    @property
    def patterns(self) -> tuple[str, ...]:
        """The concrete pattern types it fits, the primary one first."""
        return tuple(self.pattern(r) for r in self.regimes) or (self.name,)

    def pattern(self, regime: str | None = None) -> str:
        """The pattern type of ``regime`` (``None``: the estimator's only pattern)."""
        return self.name if regime is None else f"{self.name}.{regime}"


#: Every estimator by name; the first is the default.
ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    Estimator("relu", "two_component", REGIMES, True,
              "two-component S_a+- with within-regime statistics (iNNvestigate 1.x; "
              "shift-invariant, the default)"),
    Estimator("relu_eq7", "two_component", REGIMES, False,
              "two-component S_a+- as Eq. 7 prints it, with the mean of y over all samples"),
    Estimator("linear", "linear", (), False, "the linear estimator S_a (Eq. 3)"),
)}
DEFAULT_ESTIMATOR = next(iter(ESTIMATORS))
#: Pattern-type names accepted by the computer, and the patterns each yields: every
#: estimator, and each two-component estimator's positive pattern alone (low memory).
PATTERN_TYPES: dict[str, tuple[str, ...]] = {
    **{e.name: e.patterns for e in ESTIMATORS.values()},
    **{e.pattern("positive"): (e.pattern("positive"),) for e in ESTIMATORS.values()
       if e.regimes},
}
#: ``regimes`` value of statistics that keep the positive regime only (no ``sum_xy``).
POSITIVE = "positive"
#: Relative size of ``w^T num`` below which a neuron is degenerate.
DEGENERATE_RTOL = 1e-6
#: Kernels larger than this (weights) are finalized a slice of neurons at a time.
FINALIZE_CHUNK = 1 << 20


def parse_pattern(pattern: str) -> tuple[Estimator, str | None]:
    """The estimator of a concrete pattern type and its regime (``None``: all samples).

    Example:
        >>> estimator, regime = parse_pattern("relu_eq7.negative")
        >>> estimator.name, estimator.family, regime
        ('relu_eq7', 'two_component', 'negative')
    """
    name, _, regime = str(pattern).partition(".")
    estimator = ESTIMATORS.get(name)
    if estimator is None or (regime or None) not in (estimator.regimes or (None,)):
        known = [p for e in ESTIMATORS.values() for p in e.patterns]
        raise ValueError(f"Unknown pattern type {pattern!r}; the concrete types are {known}.")
    return estimator, regime or None


def estimators_of_family(family: str) -> tuple[Estimator, ...]:
    """The estimators of a family (``"linear"``, ``"two_component"``), the default first.

    Example:
        >>> [e.name for e in estimators_of_family("two_component")]
        ['relu', 'relu_eq7']
    """
    return tuple(e for e in ESTIMATORS.values() if e.family == family)
def expand_pattern_type(pattern_type: str | Iterable[str]) -> tuple[str, ...]:
    """The concrete pattern types of ``pattern_type``, the primary one first.

    Example:
        >>> expand_pattern_type("relu")
        ('relu.positive', 'relu.negative')
        >>> expand_pattern_type(("linear", "relu"))
        ('linear', 'relu.positive', 'relu.negative')
    """
    names = (pattern_type,) if isinstance(pattern_type, str) else tuple(pattern_type)
    unknown = [n for n in names if n not in PATTERN_TYPES]
    if not names or unknown:
        raise ValueError(
            f"Unknown pattern_type {pattern_type!r}. Accepted: one of "
            f"{sorted(PATTERN_TYPES)} or a tuple of them, such as ('linear', 'relu'): "
            + "; ".join(f"'{e.name}' is {e.summary}" for e in ESTIMATORS.values())
            + "; 'relu.positive' fits only the pattern PatternNet uses, in two thirds of the "
            "memory.")
    types: list[str] = []
    for name in names:
        types.extend(t for t in PATTERN_TYPES[name] if t not in types)
    return tuple(types)


def regimes_of(types: Iterable[str]) -> bool | str:
    """The statistics concrete pattern ``types`` need: ``regimes`` of :class:`PatternStatistics`.

    ``False`` (no ``relu*`` type: all-sample sums only), :data:`POSITIVE`
    (positive-regime types only: two kernel-sized sums instead of three,
    two thirds of the memory) or ``True`` (both regimes, or ``linear`` too).

    Example:
        >>> regimes_of(("relu.positive",)), regimes_of(("linear", "relu.positive"))
        ('positive', True)
    """
    regimes = [parse_pattern(t)[1] for t in types]
    if not any(regimes):
        return False
    return POSITIVE if all(r == "positive" for r in regimes) else True


class PatternStatistics:
    """Sufficient statistics of one kernel layer, accumulated in float64.

    The arrays hold *raw* sums (not centred), so merging is a plain sum; the
    numerically delicate part, summing float32 values whose mean is far
    larger than their spread, is taken care of by :meth:`update`, which takes
    sums around a shift and removes it exactly in float64.

    Args:
        kernel_shape: Shape of the layer's kernel; patterns have this shape.
        neuron_axes: Kernel axes that index the output neurons (``(1,)`` for a
            Dense kernel ``(in, out)``, ``(2, 3)`` for a depthwise kernel
            ``(kh, kw, in, multiplier)``); the other axes are the fan-in.
        regimes: Also keep positive-regime sums (needed by ``relu.*``);
            :data:`POSITIVE` keeps them instead of the all-sample ``sum_xy``
            (enough for ``*.positive`` types, see :func:`regimes_of`).
        x_shape: Shape of ``sum_x``, broadcastable to ``kernel_shape``: the
            sum of the inputs does not depend on the neuron along axes of size
            1 (for a Dense layer every neuron sees the same ``x``).  Defaults
            to ``kernel_shape``.
    """

    def __init__(self, kernel_shape: Iterable[int], neuron_axes: Iterable[int],
                 regimes: bool | str = True, x_shape: Iterable[int] | None = None) -> None:
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.x_shape = self.kernel_shape if x_shape is None else tuple(int(d) for d in x_shape)
        self.neuron_axes = _layout(self.kernel_shape, neuron_axes, self.x_shape)
        self.regimes = _checked_regimes(regimes)
        self.sums = {name: np.zeros(shape) for name, shape in self.array_shapes().items()}
        self._empty = True  # no update yet: the first one can take its arrays over

    @property
    def neuron_shape(self) -> tuple[int, ...]:
        """Shape of per-neuron arrays: the kernel shape, 1 on fan-in axes."""
        return tuple(d if i in self.neuron_axes else 1 for i, d in enumerate(self.kernel_shape))

    @property
    def fan_in_axes(self) -> tuple[int, ...]:
        """Kernel axes summed by ``w^T x``."""
        return tuple(i for i in range(len(self.kernel_shape)) if i not in self.neuron_axes)

    @property
    def count(self) -> float:
        """Number of samples ``n`` (the same for every neuron)."""
        return float(self.sums["count"])

    def array_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of every array of the state."""
        return state_shapes(self.kernel_shape, self.neuron_axes, self.regimes, self.x_shape)

    def config(self) -> dict[str, Any]:
        """The layout, as JSON-compatible values (see :meth:`from_state`)."""
        return {"kernel_shape": list(self.kernel_shape), "neuron_axes": list(self.neuron_axes),
                "regimes": self.regimes, "x_shape": list(self.x_shape)}

    def state_dict(self) -> dict[str, Any]:
        """Layout and sums; :meth:`from_state` rebuilds an equal object."""
        return {**self.config(), **{k: v.copy() for k, v in self.sums.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "PatternStatistics":
        """Rebuilds statistics from :meth:`state_dict` (arrays are checked)."""
        stats = cls(state["kernel_shape"], state["neuron_axes"], state["regimes"],
                    state["x_shape"])
        for name, shape in stats.array_shapes().items():
            if name not in state:
                raise ValueError(f"Statistics state lacks '{name}'; expected arrays "
                                 f"{sorted(stats.array_shapes())}.")
            value = np.asarray(state[name], dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"Statistics array '{name}' has shape {value.shape}; "
                                 f"expected {shape} for kernel shape {stats.kernel_shape}.")
            stats.sums[name] = value.copy()
        stats._empty = False
        return stats

    def update(self, sums: Mapping[str, Any], x_shift: Any = 0.0, y_shift: Any = 0.0,
               copy: bool = True) -> None:
        """Adds sums taken around a shift, removing the shift in float64.

        Args:
            sums: One array per name of :meth:`array_shapes`, the sums over
                some samples of ``x - x_shift``, ``y - y_shift`` and their
                products (``count`` and ``count_pos`` are plain counts).
            x_shift: Broadcastable to ``x_shape`` (for example the input mean).
            y_shift: Broadcastable to :attr:`neuron_shape`; ``w^T x_shift``
                keeps the shifted ``y`` small, but any value is exact.
            copy: ``False`` lets the statistics take over (and modify) float64
                arrays of ``sums`` of the right shapes instead of copying them.
        """
        s = {}
        for name, shape in self.array_shapes().items():
            value = np.array(sums[name], dtype=np.float64, copy=copy or None)
            s[name] = value if value.shape == shape else np.broadcast_to(value, shape).copy()
        m, c = np.asarray(x_shift, np.float64), np.asarray(y_shift, np.float64)
        work = _unshift(s["count"], s["sum_x"], s["sum_y"], s.get("sum_xy"), m, c)
        if self.regimes:
            _unshift(s["count_pos"], s["sum_x_pos"], s["sum_y_pos"], s["sum_xy_pos"], m, c, work)
        if self._empty:
            self.sums, self._empty = s, False
            return
        for name, value in s.items():
            self.sums[name] += value

    def merge(self, other: "PatternStatistics") -> "PatternStatistics":
        """New statistics of the samples of ``self`` and ``other`` together."""
        if not isinstance(other, PatternStatistics) or other.config() != self.config():
            received = other.config() if isinstance(other, PatternStatistics) else type(other)
            raise ValueError(f"Cannot merge statistics of different layouts: {self.config()} "
                             f"and {received}.")
        merged = PatternStatistics(self.kernel_shape, self.neuron_axes, self.regimes, self.x_shape)
        merged.sums = {k: self.sums[k] + other.sums[k] for k in self.sums}
        merged._empty = False
        return merged

    def finalize(self, kernel: np.ndarray, types: Iterable[str], dtype: Any = np.float64,
                 shrinkage: float = 0.0) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """The patterns (kernel-shaped) and degenerate-neuron counts.

        Computed in float64 whatever ``dtype`` the patterns are returned in.

        Args:
            kernel: The layer's kernel ``w`` (bias excluded, BatchNorm folded).
            types: Concrete types: ``"linear"``, ``"relu.positive"``,
                ``"relu.negative"``.
            dtype: dtype of the returned patterns.
            shrinkage: ``k`` pseudo-samples of the all-sample statistics added
                to each regime's: ``a_r = (n_r cov_r[x, y] + k cov[x, y]) /
                w^T (...)``, which moves a neuron with few samples in a regime
                (``n_r`` not much above ``k``) towards its linear pattern and
                leaves well-sampled ones as they are.  ``w^T a_r = 1`` still
                holds.  0 (the default) is the estimator as published.
        """
        w = np.asarray(kernel)
        if w.shape != self.kernel_shape:
            raise ValueError(f"Kernel shape {w.shape} does not match the statistics' "
                             f"kernel shape {self.kernel_shape}.")
        if shrinkage < 0:
            raise ValueError(f"shrinkage must be >= 0 pseudo-samples; received {shrinkage!r}.")
        if shrinkage and self.regimes == POSITIVE:
            raise ValueError("shrinkage needs the all-sample statistics, which positive-regime "
                             "statistics (pattern_type 'relu.positive') do not keep; fit "
                             "pattern_type='relu' for shrinkage.")
        types, last = tuple(types), len(self.kernel_shape) - 1
        size = int(np.prod(self.kernel_shape))
        if last not in self.neuron_axes or size <= FINALIZE_CHUNK:
            return self._finalize(w, types, dtype, shrinkage)
        # Neurons in chunks along the last axis: float64 scratch of a chunk, not of the kernel.
        patterns = {concrete: np.empty(self.kernel_shape, dtype) for concrete in types}
        degenerate = dict.fromkeys(types, 0)
        step = max(1, FINALIZE_CHUNK * self.kernel_shape[last] // size)
        for start in range(0, self.kernel_shape[last], step):
            part = self._neurons(slice(start, start + step))
            found, bad = part._finalize(w[..., start:start + step], types, dtype, shrinkage)
            for concrete in types:
                patterns[concrete][..., start:start + step] = found[concrete]
                degenerate[concrete] += bad[concrete]
        return patterns, degenerate

    def _neurons(self, chunk: slice) -> "PatternStatistics":
        """The statistics of a slice of the neurons along the kernel's last axis (views)."""
        n = self.kernel_shape[-1]
        shape = self.kernel_shape[:-1] + (len(range(n)[chunk]),)
        x_shape = self.x_shape[:-1] + ((shape[-1],) if self.x_shape[-1] == n else (1,))
        part = PatternStatistics.__new__(PatternStatistics)  # no arrays of its own
        part.kernel_shape, part.x_shape, part.neuron_axes = shape, x_shape, self.neuron_axes
        part.regimes, part._empty = self.regimes, False
        part.sums = {k: v[..., chunk] if np.ndim(v) and v.shape[-1] == n else v
                     for k, v in self.sums.items()}
        return part

    def _finalize(self, w: np.ndarray, types: tuple[str, ...], dtype: Any,
                  shrinkage: float) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        patterns, degenerate = {}, {}
        work = np.empty(self.kernel_shape)
        for concrete in types:
            estimator, regime = parse_pattern(concrete)
            numerator = np.empty(self.kernel_shape)
            count = self._numerator(concrete, numerator)
            if shrinkage and regime and self.sums["count"] > 0:
                self._numerator(ESTIMATORS["linear"].pattern(), work)  # all-sample numerator
                numerator += work * (shrinkage / self.sums["count"])
                count = count + shrinkage
            degenerate[concrete] = _normalize(numerator, count >= estimator.min_samples, w,
                                              self.fan_in_axes, work)
            patterns[concrete] = numerator.astype(dtype, copy=False)
            del numerator
        return patterns, degenerate

    def _numerator(self, concrete: str, out: np.ndarray) -> np.ndarray:
        """Writes ``n_r (E_r[x y] - E_r[x] E'[y])`` of regime r into ``out``; returns ``n_r``.

        ``E'[y]`` is ``E_r[y]`` for an estimator with ``within_regime_mean``
        (``relu.*``), else ``E[y]`` (``relu_eq7.*``, ``linear``).  Only ``out``
        is kernel-sized: the negative regime's sums (totals minus the positive
        ones) are formed in it.
        """
        s, n = self.sums, self.sums["count"]
        estimator, regime = parse_pattern(concrete)
        held = {None} | set(REGIMES) if self.regimes is True else (
            {"positive"} if self.regimes == POSITIVE else {None})
        if regime not in held:
            accepted = [p for e in ESTIMATORS.values() for p in e.patterns
                        if parse_pattern(p)[1] in held]
            raise ValueError(f"Cannot compute pattern type {concrete!r} from these statistics; "
                             f"accepted: {accepted}.")
        count, sum_y = (n, s["sum_y"]) if regime is None else (s["count_pos"], s["sum_y_pos"])
        if regime == "negative":
            count, sum_y = n - count, s["sum_y"] - sum_y
        within = sum_y if estimator.within_regime_mean else s["sum_y"]
        size = count if estimator.within_regime_mean else n
        mean_y = np.divide(within, size, out=np.zeros(self.neuron_shape), where=size > 0)
        if regime is None:
            np.multiply(s["sum_x"], mean_y, out=out)
            np.subtract(s["sum_xy"], out, out=out)
        elif regime == "positive":
            np.multiply(s["sum_x_pos"], mean_y, out=out)
            np.subtract(s["sum_xy_pos"], out, out=out)
        else:
            np.subtract(s["sum_x"], s["sum_x_pos"], out=out)
            out *= mean_y
            np.subtract(s["sum_xy"], out, out=out)
            out -= s["sum_xy_pos"]
        return np.broadcast_to(count, self.neuron_shape)


def state_shapes(kernel_shape: Iterable[int], neuron_axes: Iterable[int], regimes: bool | str,
                 x_shape: Iterable[int]) -> dict[str, tuple[int, ...]]:
    """Name and shape of every array of a state, without allocating any.

    Raises:
        ValueError: If the layout is inconsistent.

    Example:
        >>> state_shapes((4, 3), (1,), False, (4, 1))
        {'count': (), 'sum_x': (4, 1), 'sum_y': (1, 3), 'sum_xy': (4, 3)}
    """
    kernel_shape = tuple(int(d) for d in kernel_shape)
    x_shape = tuple(int(d) for d in x_shape)
    axes = _layout(kernel_shape, neuron_axes, x_shape)
    neuron = tuple(d if i in axes else 1 for i, d in enumerate(kernel_shape))
    shapes = {"count": (), "sum_x": x_shape, "sum_y": neuron, "sum_xy": kernel_shape}
    if _checked_regimes(regimes):
        shapes.update(count_pos=neuron, sum_y_pos=neuron, sum_x_pos=kernel_shape,
                      sum_xy_pos=kernel_shape)
    if regimes == POSITIVE:
        del shapes["sum_xy"]
    return shapes


def _checked_regimes(regimes: Any) -> bool | str:
    if regimes is not True and regimes is not False and regimes != POSITIVE:
        raise ValueError(f"regimes must be True, False or {POSITIVE!r}; received {regimes!r}.")
    return regimes


def _layout(kernel_shape: tuple[int, ...], neuron_axes: Iterable[int],
            x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Checks a layout; returns the neuron axes, non-negative and sorted."""
    rank = len(kernel_shape)
    axes = [int(a) for a in neuron_axes]
    if (any(d < 0 for d in kernel_shape) or not axes or len(set(axes)) != len(axes)
            or any(not -rank <= a < rank for a in axes)):
        raise ValueError(f"Invalid layout: kernel shape {kernel_shape}, neuron axes "
                         f"{tuple(axes)}; expected non-negative sizes and at least one "
                         "distinct neuron axis within the kernel's rank.")
    if len(x_shape) != rank or any(a not in (1, k) for a, k in zip(x_shape, kernel_shape)):
        raise ValueError(f"x_shape {x_shape} is not broadcastable to the kernel shape "
                         f"{kernel_shape} (each size must be 1 or the kernel's).")
    return tuple(sorted(a % rank for a in axes))


def _unshift(n: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxy: np.ndarray | None,
             m: np.ndarray, c: np.ndarray, work: np.ndarray | None = None) -> np.ndarray | None:
    """Turns sums of ``x - m``, ``y - c`` and their product into raw sums, in place.

    ``work`` is a kernel-sized scratch array (made if ``None``, and returned);
    ``sxy`` may be ``None`` (positive-regime statistics keep no total one).
    """
    if sxy is not None:
        work = np.empty(sxy.shape) if work is None else work
        sxy += np.multiply(sx, c, out=work)
        sxy += np.multiply(m, sy, out=work)
        sxy += np.multiply(n * m, c, out=work)
    sx += n * m
    sy += n * c
    return work


def _normalize(numerator: np.ndarray, sampled: np.ndarray, w: np.ndarray,
               fan_in_axes: tuple[int, ...], work: np.ndarray) -> int:
    """``numerator / w^T numerator`` per neuron, in place; zeros for degenerate neurons.

    ``sampled``: per neuron, whether its regime has enough samples.  Returns
    the number of degenerate neurons; ``work`` is kernel-sized scratch.
    """
    np.multiply(w, numerator, out=work)
    denominator = np.sum(work, axis=fan_in_axes, keepdims=True)
    scale = np.sum(np.abs(work, out=work), axis=fan_in_axes, keepdims=True)
    good = sampled & (np.abs(denominator) > DEGENERATE_RTOL * scale) & np.isfinite(
        denominator)
    numerator /= np.where(good, denominator, 1.0)
    numerator *= good
    return int(np.size(good) - np.count_nonzero(good))
