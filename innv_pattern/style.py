"""What every figure shares: one colour per analyzer and per signal estimator, the labels
of the estimators, the resolution and the file formats.

A colour is declared once here, so Gradient is the same blue in the degradation
curves of the demo, the command line and the notebooks, and ``S_a`` the same
teal in every rho plot. Labels are looked up by analyzer name
(``"pattern.net"``), by display name (``"PatternNet"``) or by estimator name
(``"two_component"``); ``"random"`` (the random order, or random directions)
is grey everywhere.

Example:
    >>> colors_for(["random", "gradient", "Gradient", "my own"])["Gradient"]
    '#1f77b4'
    >>> colors_for(["random", "linear"])["random"] == RANDOM_COLOR
    True
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["ANALYZER_COLORS", "DPI", "ESTIMATOR_COLORS", "ESTIMATOR_LABELS", "FORMATS",
           "LEGEND_OUTSIDE", "RANDOM_COLOR", "colors_for"]

#: Resolution of written figures (dots per inch) unless told otherwise.
DPI = 100
#: File formats figures can be written in (the command line's ``--format``).
FORMATS = ("png", "pdf", "svg")

#: The random baseline (random order of patches, random directions).
RANDOM_COLOR = "#6f6f6f"
#: The paper's ten analyzers: functions blue, signals green/brown, attributions warm.
ANALYZER_COLORS: dict[str, str] = {
    "gradient": "#1f77b4", "smoothgrad": "#17becf",
    "deconvnet": "#8c564b", "guided_backprop": "#bcbd22", "pattern.net": "#2ca02c",
    "input_t_gradient": "#9467bd", "integrated_gradients": "#e377c2",
    "lrp.z": "#ff7f0e", "lrp.epsilon": "#b8860b", "pattern.attribution": "#d62728",
}
#: The signal estimators of :func:`innv_pattern.evaluate.signal_quality`.
ESTIMATOR_COLORS: dict[str, str] = {
    "random": RANDOM_COLOR, "filter": "#a6cee3", "linear": "#1b9e77", "two_component": "#7570b3",
}
ESTIMATOR_LABELS: dict[str, str] = {
    "random": "random", "filter": "$S_w$", "linear": "$S_a$", "two_component": r"$S_{a\pm}$",
}
#: ``ax.legend(**LEGEND_OUTSIDE)``: the legend right of the axes, top-aligned, so it never
#: covers a bar or a curve (a constrained-layout figure makes room for it).
LEGEND_OUTSIDE: dict[str, object] = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0),
                                     "borderaxespad": 0.0, "frameon": False}
#: Colours for everything else (other analyzers, own labels), in order of appearance.
_SPARE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
          "#31a354", "#756bb1", "#636363", "#9c9ede", "#cedb9c", "#e7cb94", "#e7969c",
          "#de9ed6", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8", "#bdbdbd")


def _fixed(label: str) -> str | None:
    """The declared colour of an estimator, an analyzer name or an analyzer's display name."""
    if label in ESTIMATOR_COLORS:
        return ESTIMATOR_COLORS[label]
    if label in ANALYZER_COLORS:
        return ANALYZER_COLORS[label]
    from innv_pattern.analyzers import analyzer_classes

    named = {cls.display_name: name for name, cls in analyzer_classes().items()}
    return ANALYZER_COLORS.get(named.get(label, ""))


def colors_for(labels: Sequence[str]) -> dict[str, str]:
    """Label -> colour for one figure: declared colours first, spare ones for the rest.

    Spare colours go to the other labels in the order given (never one of the
    declared colours), so the same figure always gets the same colours.
    """
    colors = {label: _fixed(label) for label in labels}
    spare = iter(_SPARE * (1 + len(labels) // len(_SPARE)))
    return {label: color or next(spare) for label, color in colors.items()}
