"""Helpers shared by the evaluations: batches, analyses of several analyzers.

Example:
    >>> import numpy as np
    >>> [b.shape for b in iter_batches(np.zeros((5, 2)), 2)]
    [(2, 2), (2, 2), (1, 2)]
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["analyze_all", "figure_axes", "iter_batches", "needs_patterns"]

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
                fit_data: Any = None, patterns: Any = None, batch_size: int = 64,
                analyzer_kwargs: dict[str, dict] | None = None) -> dict[str, np.ndarray]:
    """The analysis of ``x`` by every analyzer in ``analyzer_names``.

    Args:
        model: A Keras model.
        x: Inputs to explain.
        analyzer_names: Names of :func:`innv_pattern.list_analyzers`.
        fit_data: Data to fit the patterns of ``pattern.*`` analyzers (once,
            shared), unless ``patterns`` is given.
        patterns: Fitted patterns (``ip.Patterns``) for ``pattern.*``.
        batch_size: Analysis batch size.
        analyzer_kwargs: Extra options per analyzer name.
    """
    import innv_pattern as ip

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
    result = {}
    for name in analyzer_names:
        extra = dict(kwargs.get(name, {}))
        if needs_patterns(name):
            extra.setdefault("patterns", patterns)
        analyzer = ip.create_analyzer(name, model, **extra)
        result[name] = np.asarray(analyzer.analyze(x, batch_size=batch_size))
    return result


def figure_axes(ax: Any = None, size: tuple[float, float] = (6.0, 4.0)) -> tuple[Any, Any]:
    """``(figure, axes)``: ``ax``'s own, or a new pyplot-free (Agg) figure."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()
