"""Explanation accuracy on images whose signal is known by construction."""

import io

import keras
import numpy as np
import pytest

import innv_pattern as ip
from innv_pattern import evaluate as ev
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


BACKENDS = ["scipy", "pot"]


def _backend(name):
    if name == "pot":
        pytest.importorskip("ot", reason="POT is the optional 'groundtruth' extra; the scipy "
                                         "backend runs the same cases")
    return name


@pytest.mark.parametrize("backend", BACKENDS)
def test_emd_hand_computed(backend):
    """Transport costs worked out by hand (pixel centres one unit apart).

    * a spot below a 2-pixel mask: half moves 1, half moves sqrt(2);
    * [3, 1] to [1, 3] on a 1x2 image, normalised [.75, .25] to [.25, .75]: 0.5 moves 1;
    * two end spots to the middle of a 1x3 image: all mass moves 1;
    * an image against itself, scaled: 0.
    """
    backend = _backend(backend)
    emd = lambda a, b: ev.earth_movers_distance(np.array(a), np.array(b), backend=backend)  # noqa: E731
    assert emd([[0.0, 0.0], [5.0, 0.0]], [[True, True], [False, False]]) == pytest.approx(
        (1 + np.sqrt(2)) / 2, abs=1e-9)
    assert emd([[3.0, 1.0]], [[1.0, 3.0]]) == pytest.approx(0.5, abs=1e-9)
    assert emd([[1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]) == pytest.approx(1.0, abs=1e-9)
    assert emd([[1.0, 2.0], [0.0, 4.0]], [[2.0, 4.0], [0.0, 8.0]]) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="non-negative images of one shape"):
        emd([[-1.0, 2.0]], [[1.0, 1.0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_emd_matches_the_1d_closed_form(backend):
    """On 1xN images the EMD is the area between the two cumulative distributions
    (scipy.stats.wasserstein_distance, an independent closed form)."""
    from scipy.stats import wasserstein_distance

    backend = _backend(backend)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random(12) * (rng.random(12) > 0.3), rng.random(12)
        expected = wasserstein_distance(np.arange(12), np.arange(12), a, b)
        assert ev.earth_movers_distance(a[None], b[None], backend=backend) == pytest.approx(
            expected, abs=1e-9)


def test_emd_score_of_the_filter_is_five_sevenths():
    """The filter w of the 8x8 ground-truth images: half its |w| on the 2x2 signal
    block (rows/cols 1-2), half on the suppressor block (rows/cols 5-6).  Moving the
    suppressor half onto the signal block by the translation (4, 4) is optimal (it
    meets the lower bound |difference of the means| = |(4, 4)| / 2), so EMD = 2 sqrt(2)
    and the score 1 - EMD / d_max with d_max = 7 sqrt(2) is 5/7.  The true pattern: 1."""
    gt = ground_truth_images(2, size=8)
    w = np.broadcast_to(_filter(gt), (2, 8, 8))
    acc = explanation_accuracy(w, gt.signal_mask, metrics=("emd",), per_sample=True)
    np.testing.assert_allclose(acc["emd"], 5 / 7, atol=1e-9)
    pattern = np.broadcast_to(gt.signal_patterns[0], (2, 8, 8))
    assert explanation_accuracy(pattern, gt.signal_mask, metrics=("emd",))["emd"] == 1.0
    zero = explanation_accuracy(np.zeros((1, 8, 8)), gt.signal_mask, metrics=("emd", "mass"),
                                per_sample=True)
    assert np.isnan(zero["emd"]).all() and np.isnan(zero["mass"]).all()
