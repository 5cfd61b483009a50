"""SmoothGrad's noise: absolute (iNNvestigate's ``noise_scale``, the default) or relative (``noise_level``).

The relative noise of Smilkov et al. has a standard deviation of a fraction of
each sample's range.  Checked by its effect on a model whose gradient shows the
noise's variance (``y = sum x**3``: the mean gradient over noisy copies is
``3 x**2 + 3 sigma**2``), and by scale invariance on a bias-free ReLU network,
which absolute noise does not have.
"""

import keras
import numpy as np
import pytest

import innv_pattern as ip


def _cube_model(n=100):
    inp = keras.Input((n,))
    cube = keras.layers.Multiply()([inp, inp, inp])
    out = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(cube)
    return keras.Model(inp, out)


def _noise_variance(model, x, **kwargs):
    """Per sample, the mean over elements of (SmoothGrad - gradient) / 3: sigma**2."""
    smooth = ip.create_analyzer("smoothgrad", model, augment_by_n=128, **kwargs).analyze(x)
    plain = ip.create_analyzer("gradient", model).analyze(x)
    return ((smooth - plain) / 3.0).mean(axis=1)


def test_noise_level_is_a_fraction_of_each_samples_range():
    model = _cube_model()
    rng = np.random.default_rng(0)
    x = np.stack([rng.uniform(0, 10, 100), rng.uniform(-0.5, 0.5, 100)]).astype("float32")
    ranges = x.max(axis=1) - x.min(axis=1)
    got = _noise_variance(model, x, noise_level=0.1)
    np.testing.assert_allclose(got, (0.1 * ranges) ** 2, rtol=0.1)


def test_default_is_iNNvestigates_absolute_noise():
    """No argument: standard deviation 1 whatever the input's range, as noise_scale=1."""
    model = _cube_model()
    rng = np.random.default_rng(1)
    x = np.stack([rng.uniform(0, 10, 100), rng.uniform(-0.5, 0.5, 100)]).astype("float32")
    np.testing.assert_allclose(_noise_variance(model, x), [1.0, 1.0], rtol=0.1)
    default = ip.create_analyzer("smoothgrad", model, augment_by_n=4).analyze(x)
    explicit = ip.create_analyzer("smoothgrad", model, augment_by_n=4, noise_scale=1.0).analyze(x)
    np.testing.assert_array_equal(default, explicit)


def test_relative_noise_makes_smoothgrad_scale_invariant():
    """On a bias-free ReLU net, SmoothGrad of c * x equals that of x with relative noise only."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((12,))
    h = keras.layers.Dense(16, activation="relu", use_bias=False)(inp)
    model = keras.Model(inp, keras.layers.Dense(3, use_bias=False)(h))
    x = np.random.default_rng(3).uniform(0, 1, size=(4, 12)).astype("float32")

    def smooth(v, **kw):
        return ip.create_analyzer("smoothgrad", model, augment_by_n=16, **kw).analyze(v)

    np.testing.assert_allclose(smooth(255 * x, noise_level=0.15), smooth(x, noise_level=0.15),
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(smooth(255 * x, noise_scale=0.15), smooth(x, noise_scale=0.15),
                           rtol=1e-2, atol=1e-3)


def test_noise_arguments_are_checked():
    model = _cube_model(4)
    with pytest.raises(ValueError, match="not both"):
        ip.create_analyzer("smoothgrad", model, noise_scale=0.5, noise_level=0.1)
    with pytest.raises(ValueError, match="noise_level=-0.1"):
        ip.create_analyzer("smoothgrad", model, noise_level=-0.1)
