"""Drawing explanations the way the paper does.

Two ways of drawing, as in Fig. 1 and Fig. 5 of Kindermans et al. (2018):

* **functions and signals** (gradient, SmoothGrad, DeConvNet, Guided BackProp,
  PatternNet) are back-projections to input space, drawn with the original
  colour channels after ``x / (2 max|x|) + 1/2`` (:func:`project`);
* **attributions** (LRP, input x gradient, Integrated Gradients,
  PatternAttribution) are heat maps of pixel-wise contributions: summed over
  the channels and drawn with a diverging colour map, red for positive and
  blue for negative (:func:`heatmap`).

:func:`plot_grid` puts several inputs and analyzers side by side, grouped by
what they show, as in Fig. 5; :func:`plot_toy` draws the linear toy example of
Fig. 2. The plots of the evaluations, rho per layer as Fig. 3 and
degradation curves as Fig. 4a, live next to what they draw
(:func:`innv_pattern.evaluate.plot_signal_quality`,
:func:`innv_pattern.evaluate.plot_perturbation_curves`). Everything returns numpy arrays or
``matplotlib.figure.Figure`` objects made without ``pyplot``: no global state,
no window, any backend (``fig.savefig(path)`` to write a file; in Jupyter,
``%matplotlib inline`` shows a figure that ends a cell).

Example:
    >>> import numpy as np
    >>> from innv_pattern import viz
    >>> a = np.array([[-2.0, 0.0], [1.0, 2.0]])
    >>> viz.project(a)
    array([[0.  , 0.5 ],
           [0.75, 1.  ]])
    >>> viz.heatmap(a).shape        # RGB, red positive, blue negative
    (2, 2, 3)
    >>> viz.kind_of("pattern.attribution")
    'attribution'
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from innv_pattern.analyzers import analyzer_classes

__all__ = [
    "DISPLAY_NAMES", "KINDS", "draw", "heatmap", "input_image", "kind_of",
    "plot_grid", "plot_toy", "project",
]

#: What each analyzer shows, after Fig. 1 of the paper (each analyzer class's ``kind``;
#: the functions below read the registry itself, so analyzers registered later count).
KINDS: dict[str, str] = {name: cls.kind for name, cls in analyzer_classes().items()}

#: Column titles, spelled as in the paper (each analyzer class's ``display_name``).
DISPLAY_NAMES: dict[str, str] = {name: cls.display_name
                                 for name, cls in analyzer_classes().items()}

_GROUP_ORDER = ("function", "signal", "attribution")
#: The key of the input column: not an analyzer name (there is an analyzer called "input").
_INPUT_COLUMN = "<input>"
_ARROW_COLORS = ("black", "tab:green", "tab:purple", "tab:brown", "tab:olive")


def kind_of(method: str) -> str:
    """``"function"``, ``"signal"`` or ``"attribution"`` for an analyzer name.

    Raises:
        ValueError: For a name that is not a registered analyzer.
    """
    classes = analyzer_classes()
    if method not in classes:
        raise ValueError(f"Unknown analyzer {method!r}. Accepted names: {sorted(classes)}.")
    return classes[method].kind


def _image(x: Any) -> np.ndarray:
    """One sample as an ``(H, W)`` or ``(H, W, C)`` float array (1-D becomes a strip)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3):
        raise ValueError(f"Expected one sample shaped (D,), (H, W) or (H, W, C); "
                         f"received shape {x.shape}.")
    return x


def project(x: Any) -> np.ndarray:
    """The paper's signal normalization ``x / (2 max|x|) + 1/2``, into [0, 1].

    Args:
        x: One back-projection, shaped ``(H, W)``, ``(H, W, C)`` or ``(D,)``.
            Channels are kept (a single channel is dropped).

    Returns:
        An array in [0, 1], 0.5 where ``x`` is 0 (everywhere, for an all-zero ``x``).

    Example:
        >>> project(np.array([1.0, -4.0])).tolist()
        [[0.625, 0.0]]
    """
    x = _image(x)
    peak = np.max(np.abs(x))
    return x / (2 * peak) + 0.5 if peak > 0 else np.full_like(x, 0.5)


def heatmap(a: Any, cmap: str = "seismic") -> np.ndarray:
    """An attribution as an RGB heat map of pixel-wise contributions.

    Args:
        a: One attribution, shaped ``(H, W)``, ``(H, W, C)`` or ``(D,)``;
            channels are summed.
        cmap: A diverging matplotlib colour map; the map's centre is zero.

    Returns:
        ``(H, W, 3)`` floats in [0, 1], scaled by the largest absolute value.

    Example:
        >>> heatmap(np.array([[1.0, -1.0]]))[0].round(2).tolist()   # red, blue
        [[0.5, 0.0, 0.0], [0.0, 0.0, 0.3]]
    """
    a = _image(a)
    if a.ndim == 3:
        a = a.sum(axis=-1)
    peak = np.max(np.abs(a))
    scaled = a / (2 * peak) + 0.5 if peak > 0 else np.full_like(a, 0.5)
    return colormaps[cmap](scaled)[..., :3]


def input_image(x: Any) -> np.ndarray:
    """An input, min-max scaled into [0, 1] for display (any preprocessing undone)."""
    x = _image(x)
    low, high = np.min(x), np.max(x)
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def draw(analysis: Any, method: str) -> np.ndarray:
    """One analysis drawn as the paper draws its kind: :func:`project` or :func:`heatmap`.

    Example:
        >>> draw(np.ones((4, 4, 3)), "pattern.net").shape
        (4, 4, 3)
        >>> draw(np.ones((4, 4, 3)), "lrp.z").shape
        (4, 4, 3)
    """
    return heatmap(analysis) if kind_of(method) == "attribution" else project(analysis)


def _kind(column: str, kinds: Mapping[str, str]) -> str | None:
    """How a column is drawn: given in ``kinds``, else its analyzer's kind (by name or title)."""
    if column in kinds:
        return kinds[column]
    classes = analyzer_classes()
    by_title = {cls.display_name: cls for cls in classes.values()}
    cls = classes.get(column) or by_title.get(column)
    return cls.kind if cls is not None else None


def _panel(array: Any, kind: str | None) -> np.ndarray:
    return input_image(array) if kind == "input" else heatmap(array) if kind == "attribution" \
        else project(array)


def _title(column: str) -> str:
    cls = analyzer_classes().get(column)
    return "input" if column == _INPUT_COLUMN else cls.display_name if cls else column


def _show(ax: Any, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1,
              interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _columns(kinds: dict[str, str | None], references: Sequence[str]) -> list[str | None]:
    """The input, references and columns of no known kind, then each group after a spacer."""
    columns: list[str | None] = [_INPUT_COLUMN, *references,
                                 *[c for c, k in kinds.items() if k not in _GROUP_ORDER]]
    for group in _GROUP_ORDER:
        members = [c for c, k in kinds.items() if k == group]
        if members:
            columns += [None, *members]
    return columns


def _group_headers(fig: Figure, axes: np.ndarray, columns: list[str | None],
                   kinds: Mapping[str, str | None]) -> None:
    for group in _GROUP_ORDER:
        idx = [j for j, c in enumerate(columns) if c is not None and kinds.get(c) == group]
        if idx:
            left, right = axes[idx[0]].get_position(), axes[idx[-1]].get_position()
            top = 1 - 0.8 / fig.get_figheight()
            fig.text((left.x0 + right.x1) / 2, top + 0.6 * (1 - top), group,
                     ha="center", va="center", fontsize="large", fontweight="bold")
            fig.add_artist(_rule(left.x0, right.x1, top + 0.45 * (1 - top)))


def _rule(x0: float, x1: float, y: float) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([x0, x1], [y, y], color="0.4", linewidth=1.0)


def _color_scale(fig: Figure, top_row: list[Any], rows: int, cmap: str = "seismic") -> None:
    """A colour bar right of the top row: each heat map runs from -max|a| to +max|a|."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    top, right = top_row[0].get_position(), max(ax.get_position().x1 for ax in top_row)
    inch = 1 / fig.get_figheight()
    height = min(top.height * rows, 2.5 * inch, top.y1 - 0.3 * inch)   # room for the caption
    cax = fig.add_axes((right + 0.2 / fig.get_figwidth(), top.y1 - height,
                        0.12 / fig.get_figwidth(), height), label="colour scale")
    bar = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap), cax=cax, ticks=[-1, 0, 1])
    bar.ax.set_yticklabels(["-max|a|", "0", "+max|a|"], fontsize="small")
    bar.ax.text(0.5, -0.03, "per\nimage", transform=cax.transAxes, ha="center", va="top",
                fontsize="x-small")


def _draw_block(block: Any, columns: list[str | None],
                panels: Mapping[str, tuple[Any, str | None]], titled: bool) -> None:
    """One input's panels; ``titled`` for the top row (column titles)."""
    for ax, column in zip(block, columns):
        if column is None:
            ax.set_axis_off()
            continue
        _show(ax, _panel(*panels[column]))
        if titled:
            ax.set_title(_title(column), fontsize="medium")


def _label_room(row_labels: Sequence[str] | None, flat: bool) -> float:
    """Inches left of each block for the row labels (written across for flat rows)."""
    if row_labels is None:
        return 0.1
    if flat:
        return 0.35 + 0.08 * max(len(line) for text in row_labels for line in text.split("\n"))
    return 0.15 + 0.17 * max(text.count("\n") + 1 for text in row_labels)


def _layout(x: np.ndarray, columns: list[str | None], row_labels: Sequence[str] | None,
            cell_size: float, per_row: int, color_scale: bool) -> tuple[Figure, list, bool]:
    """The figure and, per input, its block of axes (one per column); whether rows are flat."""
    height, width = _image(x[0]).shape[:2]
    row = cell_size * max(height / width, 0.35)          # flat rows for 1-D inputs
    flat = row < 1.0                                     # then row labels are written across
    room, rows = _label_room(row_labels, flat), -(-len(x) // per_row)
    widths = [0.15 if c is None else 1.0 for c in columns]
    ratios = [r for b in range(per_row) for r in ([room / cell_size] if b else []) + widths]
    right = 0.05 + (0.9 if color_scale else 0.0)
    fig = Figure(figsize=(cell_size * sum(ratios) + room + right, row * rows + 0.9))
    axes = fig.subplots(rows, len(ratios), squeeze=False,
                        gridspec_kw={"width_ratios": ratios, "wspace": 0.05, "hspace": 0.05})
    fig.subplots_adjust(left=room / fig.get_figwidth(), right=1 - right / fig.get_figwidth(),
                        bottom=0.02, top=1 - 0.8 / fig.get_figheight())
    for ax in axes[:, len(columns)::len(columns) + 1].ravel():
        ax.set_axis_off()                                # the spacers between blocks
    blocks = [axes[r, b * (len(columns) + 1):b * (len(columns) + 1) + len(columns)]
              for r in range(rows) for b in range(per_row)]
    return fig, blocks, flat


def _check_grid(x: np.ndarray, panels: Mapping[str, Any], row_labels: Sequence[str] | None,
                per_row: int) -> None:
    bad = {m: np.shape(a) for m, a in panels.items() if np.shape(a) != x.shape}
    if bad:
        raise ValueError(f"Each analysis must have the inputs' shape {x.shape}; received {bad}.")
    if row_labels is not None and len(row_labels) != len(x):
        raise ValueError(f"Expected {len(x)} row labels (one per input); received {len(row_labels)}.")
    if int(per_row) < 1:
        raise ValueError(f"per_row must be a positive integer; received {per_row!r}.")


def plot_grid(x: Any, analyses: Mapping[str, Any], row_labels: Sequence[str] | None = None,
              references: Mapping[str, Any] | None = None, cell_size: float = 1.5,
              kinds: Mapping[str, str] | None = None, per_row: int = 1) -> Figure:
    """Inputs (rows) by analyzers (columns), grouped by what they show, as in Fig. 5.

    Functions and signals are drawn with :func:`project`, attributions with
    :func:`heatmap` (with a colour scale at the right); columns are ordered
    function, signal, attribution (keeping the given order within a group)
    under a header per group.

    Args:
        x: The inputs, a batch shaped ``(N, ...)``; drawn min-max scaled, so
            pass the images before any preprocessing if that reads better.
        analyses: Column title -> its analysis of ``x`` (same shape as ``x``).
            A title is an analyzer name, an analyzer's display name, or any
            text: then ``kinds`` says how to draw it (else it is drawn with
            :func:`project` next to the inputs, without a group).
        row_labels: One text per input, written left of it (e.g. the true and
            predicted class and the confidence, as in Fig. 5).
        references: Title -> arrays like ``x`` drawn with :func:`project` next
            to the inputs, e.g. the true signal of data made with a known one.
        cell_size: Size of one image in inches.
        kinds: Title -> ``"function"``, ``"signal"`` or ``"attribution"`` for
            titles that are not analyzer names (or to override one).
        per_row: Inputs side by side in one row of the figure (each with all
            its columns): many inputs then make a grid rather than a column.

    Returns:
        The figure.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 8, 8, 1))
        >>> fig = plot_grid(x, {"lrp.z": x, "gradient": -x, "mine": x},
        ...                 row_labels=["a", "b"], kinds={"mine": "attribution"})
        >>> [ax.get_title() for ax in fig.axes if ax.get_title()]
        ['input', 'Gradient', 'LRP-z', 'mine']
    """
    x, references, given = np.asarray(x), dict(references or {}), dict(kinds or {})
    _check_grid(x, {**analyses, **references}, row_labels, per_row)
    unknown = {k: v for k, v in given.items() if v not in _GROUP_ORDER}
    if unknown:
        raise ValueError(f"kinds must be one of {list(_GROUP_ORDER)}; received {unknown}.")
    column_kinds = {c: _kind(c, given) for c in analyses}
    columns = _columns(column_kinds, list(references))
    kinds_all = {_INPUT_COLUMN: "input", **dict.fromkeys(references), **column_kinds}
    panels = {_INPUT_COLUMN: x, **references, **analyses}
    shaded = "attribution" in column_kinds.values()
    fig, blocks, flat = _layout(x, columns, row_labels, cell_size, int(per_row), shaded)
    for i, block in enumerate(blocks[:len(x)]):
        _draw_block(block, columns, {c: (panels[c][i], kinds_all[c]) for c in panels}, i < per_row)
        if row_labels is not None:
            block[0].set_ylabel(row_labels[i], fontsize="small", rotation=0 if flat else 90,
                                ha="right" if flat else "center", va="center" if flat else "bottom")
    for ax in [ax for block in blocks[len(x):] for ax in block]:
        ax.set_axis_off()                                # the empty end of the last row
    for block in blocks[:per_row]:
        _group_headers(fig, block, columns, kinds_all)
    if shaded:
        top_row = [ax for block in blocks[:per_row] for ax in block]
        _color_scale(fig, top_row, len(blocks) // per_row)
    return fig


def plot_toy(x: Any, y: Any, directions: Mapping[str, Any]) -> Figure:
    """The linear toy example of Section 2 drawn as Fig. 2: data coloured by ``y``, with arrows.

    Args:
        x: Two-dimensional data, shaped ``(N, 2)``.
        y: The output to colour by, shaped ``(N,)``.
        directions: Label -> 2-vector drawn as an arrow from the origin, for
            example ``{"filter w": w, "pattern a": a, "distractor a_d": a_d}``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y, eps = rng.uniform(-1, 1, 200), rng.normal(0, 1, 200)
        >>> x = np.outer(y, [1, 0]) + np.outer(eps, [1, 1])
        >>> fig = plot_toy(x, y, {"filter w": [1, -1], "signal a_s": [1, 0]})
        >>> len(fig.axes[0].texts)           # one arrow each
        2
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != 2 or len(y) != len(x):
        raise ValueError(f"Expected x shaped (N, 2) and y shaped (N,); received {x.shape} and {y.shape}.")
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    points = ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=8, alpha=0.35)
    fig.colorbar(points, ax=ax, label="y", shrink=0.8)
    for k, (label, vector) in enumerate(directions.items()):
        vx, vy = np.asarray(vector, dtype=np.float64).reshape(2)
        color = _ARROW_COLORS[k % len(_ARROW_COLORS)]
        ax.annotate("", xy=(vx, vy), xytext=(0, 0),
                    arrowprops={"arrowstyle": "-|>,head_width=0.4", "color": color, "lw": 3})
        ax.plot([], [], color=color, lw=3, label=label)
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    return fig
