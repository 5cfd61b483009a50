"""Helpers shared by the evaluations: batches, analyses of several analyzers.

Example:
    >>> import numpy as np
    >>> [b.shape for b in iter_batches(np.zeros((5, 2)), 2)]
    [(2, 2), (2, 2), (1, 2)]
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["analyze_all", "figure_axes", "iter_batches", "needs_patterns", "pattern_options",
           "smoothgrad_noise"]


def iter_batches(data: Any, batch_size: int) -> Iterator[Any]:
    """Batches of inputs from an array, a ``tf.data.Dataset`` or an iterable.

    Args:
        data: A numpy array or tensor (split into ``batch_size`` chunks), or
            an iterable of batches: arrays, or ``(x, y)`` / ``(x, y, w)``
            tuples whose first element is used.
        batch_size: Chunk size for arrays.
    """
    if isinstance(data, np.ndarray) or hasattr(data, "numpy") and hasattr(data, "shape"):
        if len(data) == 0:
            raise ValueError("Received an empty array of samples; expected at least one.")
        for start in range(0, len(data), int(batch_size)):
            yield data[start:start + int(batch_size)]
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"Expected a numpy array, a tf.data.Dataset or an iterable of batches; "
                        f"received {type(data).__name__}.")
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


def needs_patterns(name: str) -> bool:
    """Whether analyzer ``name`` needs fitted patterns (its class's ``needs_patterns``)."""
    from innv_pattern.analyzers import analyzer_classes

    cls = analyzer_classes().get(name)
    return bool(cls is not None and cls.needs_patterns)


def analyze_all(model: Any, x: np.ndarray, analyzer_names: Sequence[str],
                fit_data: Any = None, patterns: Any = None, batch_size: int | None = 64,
                analyzer_kwargs: dict[str, dict] | None = None,
                verbose: int = 0) -> dict[str, np.ndarray]:
    """The analysis of ``x`` by every analyzer in ``analyzer_names``.

    Args:
        model: A Keras model.
        x: Inputs to explain.
        analyzer_names: Names of :func:`innv_pattern.list_analyzers`.
        fit_data: Data to fit the patterns of ``pattern.*`` analyzers (once,
            shared), unless ``patterns`` is given.
        patterns: Fitted patterns for ``pattern.*``: ``ip.Patterns`` (its
            ``relu``, else ``relu_eq7``, else ``linear`` patterns are used, see
            :func:`pattern_options`) or a mapping layer name -> pattern.
        batch_size: Analysis batch size (``None``: all of ``x`` at once).
        analyzer_kwargs: Extra options per analyzer name.
        verbose: 1 shows a progress bar over the analyzers.
    """
    import innv_pattern as ip
    from innv_pattern.progress import Progress

    kwargs = analyzer_kwargs or {}
    unknown = [n for n in analyzer_names if n not in ip.list_analyzers()]
    if unknown:
        raise ValueError(f"Unknown analyzer(s) {unknown}; accepted: {ip.list_analyzers()}.")
    if any(needs_patterns(n) for n in analyzer_names) and patterns is None:
        if fit_data is None:
            wanting = [n for n in analyzer_names if needs_patterns(n)]
            raise ValueError(f"{' and '.join(wanting)} need fit_data (to fit the patterns) "
                             "or patterns=ip.PatternComputer(model).compute(data).")
        from innv_pattern.patterns import PatternComputer

        patterns = PatternComputer(model, pattern_type="relu").compute(fit_data, verbose=0)
    bar = Progress(len(analyzer_names), "analyzer") if verbose else None
    result = {}
    for i, name in enumerate(analyzer_names):
        extra = dict(kwargs.get(name, {}))
        if needs_patterns(name) and "patterns" not in extra:
            extra = {**pattern_options(patterns, extra.get("pattern_type")), **extra}
        analyzer = ip.create_analyzer(name, model, **extra)
        result[name] = np.asarray(analyzer.analyze(x, batch_size=batch_size))
        if bar is not None:
            bar.update(i + 1, name)
    if bar is not None:
        bar.done()
    return result


def pattern_options(patterns: Any, pattern_type: str | None = None) -> dict[str, Any]:
    """The ``patterns`` (and ``pattern_type``) options of a pattern analyzer for ``patterns``.

    Of an ``ip.Patterns`` holding several types, the first estimator of
    :data:`~innv_pattern.patterns.estimators.ESTIMATORS` it holds is chosen
    unless ``pattern_type`` says which (the analyzer then picks it); a plain
    mapping is passed as it is.

    Example:
        >>> pattern_options({"dense": np.ones((2, 1))})["patterns"]["dense"].shape
        (2, 1)
    """
    if pattern_type is not None or not hasattr(patterns, "has_type"):
        return {"patterns": patterns}
    from innv_pattern.patterns.estimators import ESTIMATORS

    estimator = next((name for name in ESTIMATORS if patterns.has_type(name)), None)
    if estimator is None:
        return {"patterns": patterns}
    return {"patterns": patterns.for_type(estimator), "pattern_type": estimator}


def smoothgrad_noise(x: np.ndarray, fraction: float = 0.15) -> dict[str, dict[str, float]]:
    """``analyzer_kwargs`` giving SmoothGrad noise of ``fraction`` of the range of all of ``x``.

    Example:
        >>> smoothgrad_noise(np.array([0.0, 2.0]))
        {'smoothgrad': {'noise_scale': 0.3}}
    """
    spread = float(np.max(x) - np.min(x)) or 1.0
    return {"smoothgrad": {"noise_scale": fraction * spread}}


def figure_axes(ax: Any = None, size: tuple[float, float] = (6.0, 4.0)) -> tuple[Any, Any]:
    """``(figure, axes)``: ``ax``'s own, or a new pyplot-free (Agg) figure."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()
