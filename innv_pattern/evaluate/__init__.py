"""Measuring explanations as the paper does, and beyond.

* :func:`signal_quality`: the signal-estimator quality rho of Eq. 1, per
  layer, for random directions, the filter ``S_w``, the linear ``S_a`` and the
  two-component ``S_a+-`` (Fig. 3);
* :func:`perturbation_curve`: image degradation by patches, with a random
  baseline and the area over the perturbation curve (Fig. 4a);
* :func:`randomization_check`: the cascading model-parameter randomization
  sanity check (Adebayo et al., 2018);
* :func:`explanation_accuracy`: agreement of an explanation with a signal
  known by construction (:func:`innv_pattern.datasets.ground_truth_images`).

Each returns plain data (floats, numpy arrays, dicts) and has a ``plot_*``
function that draws it with matplotlib (no pyplot state is touched).

Example:
    >>> from innv_pattern.evaluate import ESTIMATORS, METRICS
    >>> ESTIMATORS, METRICS
    (('random', 'filter', 'linear', 'two_component'), ('spearman_abs', 'spearman', 'pearson'))
"""

from innv_pattern.evaluate._common import analyze_all
from innv_pattern.evaluate.groundtruth import (ACCURACY_METRICS, explanation_accuracy,
                                               plot_explanation_accuracy)
from innv_pattern.evaluate.perturbation import aopc, perturbation_curve, plot_perturbation_curves
from innv_pattern.evaluate.quality import ESTIMATORS, plot_signal_quality, signal_quality
from innv_pattern.evaluate.sanity import METRICS, plot_randomization, randomization_check

__all__ = [
    "ACCURACY_METRICS",
    "ESTIMATORS",
    "METRICS",
    "analyze_all",
    "aopc",
    "explanation_accuracy",
    "perturbation_curve",
    "plot_explanation_accuracy",
    "plot_perturbation_curves",
    "plot_randomization",
    "plot_signal_quality",
    "randomization_check",
    "signal_quality",
]
