"""The data with known signals, and the digits helpers."""

import keras
import numpy as np
import pytest

from innv_pattern.datasets import (digits_cnn, ground_truth_images, load_digits, toy_data,
                                   train_digits_cnn)


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
