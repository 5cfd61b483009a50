"""The data with known signals, and the digits helpers."""

import keras
import numpy as np
import pytest

from innv_pattern.datasets import (BACKGROUNDS, SCENARIOS, XAI_TRIS_SNR, digits_cnn,
                                   ground_truth_images, haufe_toy, load_digits, suppressor_data,
                                   tetromino, toy_data, train_digits_cnn, xai_tris)


def test_toy_data_is_section_2():
    """x = a_s y + a_d eps; w = (1, -1) extracts y exactly and ignores the distractor."""
    toy = toy_data(2000, mu=0.5, sigma=0.3, seed=0)
    np.testing.assert_allclose(toy.x, toy.signal + toy.distractor, atol=1e-6)
    np.testing.assert_allclose(toy.signal, np.outer(toy.y, [1, 0]), atol=1e-6)
    np.testing.assert_allclose(toy.w, [1, -1])
    np.testing.assert_allclose(toy.x @ toy.w, toy.y, atol=1e-5)
    eps = toy.distractor[:, 1]
    assert eps.mean() == pytest.approx(0.5, abs=0.03) and eps.std() == pytest.approx(0.3, abs=0.02)
    assert toy.y.min() >= -1 and toy.y.max() <= 1
    rotated = toy_data(10, a_d=(1.0, 2.0))
    np.testing.assert_allclose(rotated.w @ rotated.a_d, 0, atol=1e-6)   # w follows a_d
    np.testing.assert_allclose(rotated.w @ rotated.a_s, 1, atol=1e-6)
    with pytest.raises(ValueError, match="linearly independent"):
        toy_data(10, a_s=(1, 1), a_d=(2, 2))


@pytest.mark.parametrize("kind", ["linear", "xor"])
def test_ground_truth_images_decompose(kind):
    """Images are signal + distractor + small noise; the labels follow the signal only."""
    gt = ground_truth_images(400, size=12, kind=kind, noise=0.05, seed=1)
    assert gt.x.shape == (400, 12, 12, 1) and gt.x.dtype == np.float32
    residual = gt.x - gt.signal - gt.distractor
    assert residual.std() == pytest.approx(0.05, rel=0.1)
    assert not (gt.signal[..., 0] * ~gt.signal_mask).any()          # signal only in the mask
    assert gt.suppressor_mask.sum() == 9 and not (gt.suppressor_mask & gt.signal_mask).any()
    overlap = gt.distractor_pattern.astype(bool)
    assert (overlap == (gt.signal_mask | gt.suppressor_mask)).all()
    amplitudes = np.einsum("nhw,khw->nk", gt.signal[..., 0], gt.signal_patterns) / 9
    signs = np.sign(amplitudes)
    expected = signs[:, 0] > 0 if kind == "linear" else signs[:, 0] == signs[:, 1]
    np.testing.assert_array_equal(gt.labels, expected.astype(int))


def test_ground_truth_optimal_filter_uses_the_suppressor():
    """The least-squares linear filter puts weight on the suppressor block, where no signal is."""
    gt = ground_truth_images(4000, size=8, noise=0.05, seed=2)
    x = gt.x.reshape(len(gt.x), -1)
    z = 2.0 * gt.labels - 1
    w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], z, rcond=None)[0][:-1].reshape(8, 8)
    assert np.abs(w[gt.suppressor_mask]).mean() > 0.5 * np.abs(w[gt.signal_mask]).mean()
    assert np.abs(w[~(gt.signal_mask | gt.suppressor_mask)]).mean() < 0.1 * np.abs(w).max()


def test_load_digits_shapes_and_range():
    x, y = load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
    big, _ = load_digits(size=32, channels=3)
    assert big.shape == (1797, 32, 32, 3) and big.dtype == np.float32
    np.testing.assert_array_equal(big[..., 0], big[..., 2])
    with pytest.raises(ValueError, match="channels >= 1"):
        load_digits(channels=0)


@pytest.mark.slow
def test_train_digits_cnn_learns():
    """A few seconds of training give a usable classifier (held-out accuracy > 0.9)."""
    x, y = load_digits()
    model = train_digits_cnn(x[:1200], y[:1200], epochs=15)
    accuracy = np.mean(np.argmax(model.predict(x[1200:], verbose=0), -1) == y[1200:])
    assert accuracy > 0.9
    assert isinstance(digits_cnn(), keras.Model)
    with pytest.raises(ValueError, match="needs labels"):
        train_digits_cnn(x[:10], None)


# --- ground truths from the literature (innv_pattern.groundtruth_data) ---------------------------


def _rotations(shape: str) -> list[np.ndarray]:
    return [np.rot90(tetromino(shape), k) for k in range(4)]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("background", BACKGROUNDS)
def test_xai_tris_follows_the_recipe(scenario, background):
    """Each 8x8 image is rebuilt in float64 from its parts by the published formula.

    LIN, RIGID, XOR: ``alpha P/||P|| + (1 - alpha) B/||B||``; MULT: ``(1 - alpha P) B``;
    then one scale for the set (max |x| = 1).  The masks are the union of the two
    fixed tetromino positions (8 pixels) or, for RIGID, this image's tetromino.
    """
    data = xai_tris(200, scenario, background, seed=3)
    alpha = XAI_TRIS_SNR[8][scenario][background]
    p, b = data.signal.astype(np.float64), data.noise.astype(np.float64)
    norm = lambda v: np.linalg.norm(v.reshape(len(v), -1), axis=1)[:, None, None]  # noqa: E731
    raw = (1 - alpha * p) * b if scenario == "mult" else alpha * p / norm(p) + (1 - alpha) * b / norm(b)
    np.testing.assert_allclose(data.x[..., 0], raw / np.abs(raw).max(), atol=1e-6)
    assert data.x.shape == (200, 8, 8, 1) and data.snr == alpha
    assert (data.labels == 0).sum() == 100
    if scenario == "rigid":
        assert (data.masks == (data.signal != 0)).all() and (data.masks.sum((1, 2)) == 4).all()
        for signal, label in zip(data.signal[:20], data.labels[:20]):
            rows, cols = np.nonzero(signal)
            crop = signal[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert any(crop.shape == r.shape and (crop == r).all() for r in _rotations("TL"[label]))
    else:
        union = np.zeros((8, 8), bool)
        union[1:4, 1:3], union[4:7, 5:7] = tetromino("T") > 0, tetromino("L") > 0
        assert (data.masks == union).all()
    if scenario == "xor":   # both shapes, label 1 where their signs differ
        signs = np.sign(data.signal[:, 1, 1]) * np.sign(data.signal[:, 4, 5])
        np.testing.assert_array_equal(data.labels, (signs < 0).astype(int))
    elif scenario != "rigid":
        np.testing.assert_array_equal(data.signal[:, 2, 2] > 0, data.labels == 0)  # T's arm


def test_xai_tris_backgrounds_and_64x64():
    """WHITE is uncorrelated between neighbours, CORR (sigma 3) strongly correlated;
    64x64 uses 8-pixel cells blurred with sigma 1.5, masks where the blur reaches 0.05."""
    from scipy.ndimage import binary_dilation

    def neighbour_corr(b):
        return np.corrcoef(b[:, :, :-1].ravel(), b[:, :, 1:].ravel())[0, 1]

    assert abs(neighbour_corr(xai_tris(400, "lin", "white").noise)) < 0.05
    assert neighbour_corr(xai_tris(400, "lin", "corr").noise) > 0.95
    big = xai_tris(4, "lin", "corr", size=64)
    assert big.x.shape == (4, 64, 64, 1) and big.snr == 0.02
    cells = np.zeros((64, 64), bool)
    cells[8:32, 8:24], cells[32:56, 40:56] = np.kron(tetromino("T"), np.ones((8, 8))) > 0, \
        np.kron(tetromino("L"), np.ones((8, 8))) > 0
    # blur 1.5 of a cell edge falls under 0.05 beyond 1.5 * 1.645 = 2.5 pixels
    rim = binary_dilation(cells, np.ones((7, 7), bool))
    assert (big.masks[0] >= cells).all() and (big.masks[0] <= rim).all()
    assert (big.masks[0] != cells).any()
    with pytest.raises(ValueError, match="scenario in"):
        xai_tris(4, "lin", "imagenet")
    with pytest.raises(ValueError, match="even n"):
        xai_tris(3)


@pytest.mark.slow
def test_haufe_toy_as_innvestigate_tests_it():
    """iNNvestigate 1.x's HaufePatternExample: a Dense(1) trained (Adam, lr 1, 20
    epochs, MSE) on x = y (1, 0) + eps (1, 1), y, eps ~ U(0, 1), reaches MSE < 0.05,
    |W| within 0.05 of a_d = (1, 1) and the linear pattern within 0.05 of a_s = (1, 0)."""
    from innv_pattern.patterns import PatternComputer

    toy = haufe_toy(1000, seed=0)
    assert toy.y.min() >= 0 and toy.y.max() <= 1 and toy.distractor[:, 1].min() >= 0
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    model.compile(optimizer=keras.optimizers.Adam(1.0), loss="mse")
    model.fit(toy.x, toy.y, epochs=20, verbose=0)
    assert model.evaluate(toy.x, toy.y, verbose=0) < 0.05
    w = model.get_weights()[0].ravel()
    pattern = PatternComputer(model, "linear").compute(toy.x, verbose=0)["dense"].ravel()
    np.testing.assert_allclose(np.abs(w), [1, 1], rtol=0.05, atol=0.05)
    np.testing.assert_allclose(pattern, [1, 0], rtol=0.05, atol=0.05)


def test_suppressor_data_needs_the_suppressor():
    """Feature 1 is independent of the class, yet logistic regression (float64, sklearn)
    weighs it: w_1 / w_0 near the Bayes-optimal -rho s0 / s1 = -0.8."""
    from sklearn.linear_model import LogisticRegression

    data = suppressor_data(8000, correlation=0.8, seed=0)
    np.testing.assert_allclose(data.w, [1.0, -0.8])
    assert abs(np.corrcoef(data.x[:, 1], data.labels)[0, 1]) < 0.03
    assert np.corrcoef(data.x[:, 0], data.labels)[0, 1] > 0.4
    coef = LogisticRegression(C=1e4).fit(data.x, data.labels).coef_.ravel()
    assert coef[1] / coef[0] == pytest.approx(-0.8, abs=0.05)
    with pytest.raises(ValueError, match="correlation"):
        suppressor_data(10, correlation=1.0)
