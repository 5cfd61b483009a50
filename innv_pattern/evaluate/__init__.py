"""Measuring explanations as the paper does, and beyond.

* :func:`signal_quality`: the signal-estimator quality rho of Eq. 1, per
  layer, for random directions, the filter ``S_w``, the linear ``S_a`` and the
  two-component ``S_a+-`` (Fig. 3);
* :func:`perturbation_curve`: image degradation by patches, with a random
  baseline and the area over the perturbation curve (Fig. 4a);
  :func:`degradation_curves` draws one per analysis plus the random order, and
  :func:`analyze_all` makes those analyses;
* :func:`randomization_check`: the cascading model-parameter randomization
  sanity check (Adebayo et al., 2018);
* :func:`explanation_accuracy`: agreement of an explanation with a signal
  known by construction (:func:`innv_pattern.datasets.ground_truth_images`,
  :func:`innv_pattern.datasets.xai_tris`): AUROC, top-k precision, mass on the
  signal and XAI-TRIS's earth mover's score (:func:`earth_movers_distance`);
* :func:`input_invariance` and :func:`shifted_twin`: does an explanation
  change when the input is shifted and the first layer's bias compensates
  (Kindermans et al., 2017)?
* :func:`relevance_flow`: per operation, the share of the relevance it
  receives that it passes on, and where the rest goes.

Each returns plain data (floats, numpy arrays, dicts); the first four have a
``plot_*`` function that draws it with matplotlib (no pyplot state is touched).

Example:
    >>> from innv_pattern.evaluate import ESTIMATORS, METRICS
    >>> ESTIMATORS, METRICS
    (('random', 'filter', 'linear', 'two_component'), ('spearman_abs', 'spearman', 'pearson'))
"""

from innv_pattern.evaluate._common import analyze_all, pattern_options, smoothgrad_noise
from innv_pattern.evaluate.flow import relevance_flow
from innv_pattern.evaluate.groundtruth import (ACCURACY_METRICS, earth_movers_distance,
                                               explanation_accuracy, plot_explanation_accuracy)
from innv_pattern.evaluate.invariance import input_invariance, shifted_twin
from innv_pattern.evaluate.perturbation import aopc, degradation_curves, perturbation_curve
from innv_pattern.evaluate.plots import plot_perturbation_curves, plot_signal_quality
from innv_pattern.evaluate.quality import ESTIMATORS, signal_quality
from innv_pattern.evaluate.sanity import METRICS, plot_randomization, randomization_check

__all__ = [
    "ACCURACY_METRICS",
    "ESTIMATORS",
    "METRICS",
    "analyze_all",
    "aopc",
    "degradation_curves",
    "earth_movers_distance",
    "explanation_accuracy",
    "input_invariance",
    "pattern_options",
    "perturbation_curve",
    "plot_explanation_accuracy",
    "plot_perturbation_curves",
    "plot_randomization",
    "plot_signal_quality",
    "randomization_check",
    "relevance_flow",
    "shifted_twin",
    "signal_quality",
    "smoothgrad_noise",
]
