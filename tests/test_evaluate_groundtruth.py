"""Explanation accuracy on images whose signal is known by construction."""

import io

import keras
import numpy as np
import pytest

import innv_pattern as ip
from innv_pattern.datasets import ground_truth_images
from innv_pattern.evaluate.groundtruth import explanation_accuracy, plot_explanation_accuracy
from innv_pattern.patterns import PatternComputer


def _filter(gt) -> np.ndarray:
    """The distractor-cancelling filter: +1/k on the signal block, -1/k on the suppressor."""
    k = gt.signal_mask.sum()
    return (gt.signal_mask.astype(np.float32) - gt.suppressor_mask) / k


def test_hand_computed_accuracies():
    """On 8x8 images with a 2x2 signal block (k = 4 of N = 64 pixels).

    The true pattern scores 1 on every metric.  The filter w has |w| = 1/k on
    the signal and on the suppressor block: mass 1/2, precision 1/2 (the k
    top pixels are 2k tied ones, half of them signal), and AUROC = ((N - 2k)
    + k / 2) / (N - k) = 58/60 (signal pixels beat the N - 2k zeros, tie with
    the k suppressor pixels).
    """
    gt = ground_truth_images(3, size=8)
    pattern = np.broadcast_to(gt.signal_patterns[0], (3, 8, 8))
    assert explanation_accuracy(pattern, gt.signal_mask) == {
        "auroc": 1.0, "precision": 1.0, "mass": 1.0}
    w = np.broadcast_to(_filter(gt)[..., None], (3, 8, 8, 1))
    acc = explanation_accuracy(w, gt.signal_mask, per_sample=True)
    np.testing.assert_allclose(acc["mass"], 0.5)
    np.testing.assert_allclose(acc["precision"], 0.5)
    np.testing.assert_allclose(acc["auroc"], 58 / 60)
    with pytest.raises(ValueError, match="signal_mask of its image shape"):
        explanation_accuracy(w, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="Unknown metric"):
        explanation_accuracy(w, gt.signal_mask, metrics=("iou",))


def test_linear_model_patterns_find_the_signal_gradient_does_not():
    """A linear two-class model with the distractor-cancelling filter (logits -w^T x, w^T x).

    The gradient is +-w for every image: mass exactly 1/2, half on the
    suppressor.  Patterns fitted on the data recover the signal block (the
    paper's Section 2 in images): PatternNet's mass is close to 1.
    """
    gt = ground_truth_images(3000, size=8, noise=0.05, seed=0)
    w = _filter(gt).ravel()
    inp = keras.Input((8, 8, 1))
    dense = keras.layers.Dense(2, name="linear")
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    dense.set_weights([np.stack([-w, w], 1), np.zeros(2, np.float32)])
    assert np.mean(np.argmax(model.predict(gt.x, verbose=0), 1) == gt.labels) > 0.99
    x = gt.x[:200]
    gradient = ip.create_analyzer("gradient", model).analyze(x)
    assert explanation_accuracy(gradient, gt.signal_mask)["mass"] == pytest.approx(0.5, abs=1e-6)
    patterns = PatternComputer(model, "relu").compute(gt.x, verbose=0)
    signal = ip.create_analyzer("pattern.net", model, patterns=patterns).analyze(x)
    acc = {"gradient": explanation_accuracy(gradient, gt.signal_mask),
           "pattern.net": explanation_accuracy(signal, gt.signal_mask)}
    assert acc["pattern.net"]["mass"] > 0.95 and acc["pattern.net"]["auroc"] > 0.99
    fig = plot_explanation_accuracy(acc)
    fig.savefig(io.BytesIO(), format="png")
