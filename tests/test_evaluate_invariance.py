"""Input invariance (Kindermans et al., 2017): the shifted twin, and which methods change."""

import warnings

import keras
import numpy as np
import pytest

import innv_pattern as ip
from innv_pattern.datasets import load_digits
from innv_pattern.evaluate import input_invariance, shifted_twin
from innv_pattern.rule_maps import FallbackWarning

L = keras.layers


def _assert_twin_exact(model: keras.Model, x: np.ndarray, shift) -> keras.Model:
    twin = shifted_twin(model, shift)
    shifted = (x + np.broadcast_to(np.asarray(shift, np.float32), x.shape[1:])).astype("float32")
    expected = np.asarray(model(x))
    np.testing.assert_allclose(np.asarray(twin(shifted)), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    return twin


def _randomized(model: keras.Model, seed: int) -> keras.Model:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.3, layer.bias.shape).astype("float32"))
    return model


def test_twin_of_a_dense_net_equals_the_model():
    """A per-feature shift is absorbed by the first Dense's bias, added where there was none.

    Fails if the correction is not ``kernel^T m`` (wrong axis or sign), or if
    a bias-free first layer is left without a bias.
    """
    keras.utils.set_random_seed(0)
    model = _randomized(keras.Sequential([
        keras.Input((6,)), L.Dense(8, activation="relu", use_bias=False),
        L.Dense(5, activation="relu"), L.Dense(3)]), 0)
    x = np.random.default_rng(1).normal(size=(16, 6)).astype("float32")
    shift = np.linspace(-2.0, 3.0, 6)
    twin = _assert_twin_exact(model, x, shift)
    first = twin.layers[0] if not isinstance(twin.layers[0], L.InputLayer) else twin.layers[1]
    assert first.use_bias and first.bias is not None
    np.testing.assert_array_equal(first.kernel.numpy(), model.layers[0].kernel.numpy())


def test_twin_of_a_valid_conv_net_equals_the_model():
    """A per-channel shift read by a 'valid' conv: the bias subtracts the kernel summed over taps.

    Fails if the correction sums the wrong axes (e.g. misses the spatial taps).
    """
    keras.utils.set_random_seed(1)
    model = _randomized(keras.Sequential([
        keras.Input((9, 9, 3)), L.Conv2D(4, 3, activation="relu"), L.MaxPooling2D(2),
        L.Flatten(), L.Dense(3)]), 1)
    x = np.random.default_rng(2).uniform(size=(8, 9, 9, 3)).astype("float32")
    _assert_twin_exact(model, x, [0.5, -1.0, 2.0])


@pytest.mark.parametrize("size, kernel, strides", [(9, 3, 2), (8, 3, 2), (8, 4, 2), (7, 4, 1)])
def test_twin_of_a_same_padded_first_conv_equals_the_model(size, kernel, strides):
    """'same' padding of the raw input would pad 0 instead of the shift at the borders.

    The twin pads with the constant shift at TensorFlow's offsets (odd and
    even sizes, even kernels, stride 2: the extra pad goes after) and
    convolves 'valid'.  A bias-only correction, or pads at the wrong side,
    leave errors at the border outputs.
    """
    keras.utils.set_random_seed(2)
    model = _randomized(keras.Sequential([
        keras.Input((size, size, 2)),
        L.Conv2D(4, kernel, strides=strides, padding="same", activation="relu", name="first"),
        L.Flatten(), L.Dense(3)]), 2)
    x = np.random.default_rng(3).uniform(size=(6, size, size, 2)).astype("float32")
    twin = _assert_twin_exact(model, x, [-0.5, 1.5])
    assert twin.get_layer("first").padding == "valid"


def test_twin_of_a_causal_conv1d_equals_the_model():
    """A causal Conv1D pads the input's start with zeros: the twin pads it with the shift."""
    keras.utils.set_random_seed(4)
    model = _randomized(keras.Sequential([
        keras.Input((12, 2)), L.Conv1D(3, 3, padding="causal", dilation_rate=2),
        L.Flatten(), L.Dense(2)]), 4)
    x = np.random.default_rng(5).normal(size=(4, 12, 2)).astype("float32")
    _assert_twin_exact(model, x, [1.0, -3.0])


def test_twin_of_a_net_starting_with_zero_padding_equals_the_model():
    """A ZeroPadding2D right after the input pads with the shift in the twin (pad(x - m) + m).

    Here a 'same' conv follows the padding, so the shift must survive both
    paddings.  Padding with 0 would change the border outputs.
    """
    keras.utils.set_random_seed(3)
    model = _randomized(keras.Sequential([
        keras.Input((8, 8, 1)), L.ZeroPadding2D(((1, 2), (0, 1))),
        L.Conv2D(3, 3, padding="same", activation="relu"), L.Flatten(), L.Dense(4)]), 3)
    x = np.random.default_rng(4).uniform(size=(5, 8, 8, 1)).astype("float32")
    _assert_twin_exact(model, x, -0.7)


def test_user_model_is_untouched(conv_model):
    """Building the twin never changes the user's model: weights, layers and outputs stay.

    Fails if the user's layers were reused (a bias assigned in place, a new
    call node) instead of copies.
    """
    x = np.random.default_rng(0).normal(size=(3, 9, 9, 2)).astype("float32")
    before = [w.copy() for w in conv_model.get_weights()]
    output = np.asarray(conv_model(x))
    layers = list(conv_model.layers)
    twin = shifted_twin(conv_model, 2.0)
    assert all(a is not b for a in twin.layers for b in conv_model.layers)
    assert list(conv_model.layers) == layers
    for old, new in zip(before, conv_model.get_weights()):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(np.asarray(conv_model(x)), output)


def test_refusals_name_what_was_received():
    """What no bias can compensate is refused, naming the layer or shape received."""
    inp = keras.Input((6, 6, 2))
    model = keras.Model(inp, L.Conv2D(2, 3)(inp))
    with pytest.raises(ValueError, match="varies along sample axis"):
        shifted_twin(model, np.arange(72, dtype=float).reshape(6, 6, 2))
    with pytest.raises(ValueError, match=r"received an array of shape \(3,\)"):
        shifted_twin(model, [1.0, 2.0, 3.0])
    normalized = keras.Model(inp, L.Conv2D(2, 3)(L.BatchNormalization(name="bn")(inp)))
    with pytest.raises(ValueError, match=r"'bn' \(BatchNormalization\)"):
        shifted_twin(normalized, 1.0)
    residual = keras.Model(inp, L.Add(name="skip")([inp, L.Conv2D(2, 1)(inp)]))
    with pytest.raises(ValueError, match=r"'skip' \(Add\)"):
        shifted_twin(residual, 1.0)
    a, b = keras.Input((3,)), keras.Input((3,))
    with pytest.raises(ValueError, match="has 2"):
        shifted_twin(keras.Model([a, b], L.Dense(1)(L.Concatenate()([a, b]))), 1.0)


def test_twin_is_analyzable_by_every_analyzer():
    """The twin's constant padding uses only ops the library knows: no analyzer falls back.

    Pads are ``keras.ops`` arithmetic with constants plus ZeroPadding2D
    (``diagonal`` and ``routing`` kinds); a custom padding layer would make LRP
    refuse it and the pattern analyzers warn.
    """
    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), L.ZeroPadding2D(1),
        L.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
        L.Flatten(), L.Dense(3)])
    data = np.random.default_rng(6).uniform(size=(64, 8, 8, 1)).astype("float32") - 0.5
    twin = shifted_twin(model, -0.5)
    patterns = ip.PatternComputer(twin, pattern_type="linear").compute(data, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        for name in ip.list_analyzers():
            kwargs = ({"patterns": patterns, "pattern_type": "linear"}
                      if name.startswith("pattern.") else {})
            analysis = ip.create_analyzer(name, twin, **kwargs).analyze(data[:4])
            assert analysis.shape == data[:4].shape and np.all(np.isfinite(analysis)), name


# --------------------------------------------------------------------------
# A trained model: which methods are invariant (the 2017 paper's findings).
# --------------------------------------------------------------------------
SHIFT = -0.5


@pytest.fixture(scope="module")
def trained_digits():
    """A small ReLU CNN trained on sklearn digits; its first conv pads 'same' (seeded, ~5 s)."""
    x, y = load_digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
        L.MaxPooling2D(2), L.Flatten(),
        L.Dense(32, activation="relu", name="hidden"), L.Dense(10, name="logits")])
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x[:1500], y[:1500], epochs=5, batch_size=64, verbose=0)
    assert history.history["accuracy"][-1] > 0.9
    return model, x[:1500], x[1500:1540]


def test_gradient_is_invariant(trained_digits):
    """The gradient does not see the input's offset once the bias compensates it (exact).

    SmoothGrad too: the same seeded noise is added on both sides.  Fails if the
    twin's function differs from the model's anywhere the gradient looks.
    """
    model, _, x = trained_digits
    errors = input_invariance(model, ["gradient"], x, SHIFT)
    errors.update(input_invariance(model, ["smoothgrad"], x, SHIFT, augment_by_n=4))
    assert errors["gradient"] < 1e-5 and errors["smoothgrad"] < 1e-5, errors


def test_input_times_gradient_lrp_and_zero_reference_ig_are_not(trained_digits):
    """Methods that multiply by the input (or measure from a zero reference) move with it.

    The 2017 paper's finding: Input x Gradient, LRP-z and Integrated Gradients
    with a zero reference change under a compensated shift.  An error below
    1e-2 would mean the twin was not shifted at all.
    """
    model, _, x = trained_digits
    errors = input_invariance(model, ["input_t_gradient", "lrp.z"], x, SHIFT)
    errors.update(input_invariance(model, ["integrated_gradients"], x, SHIFT, steps=16))
    assert all(e > 1e-2 for e in errors.values()), errors


def test_linear_patterns_make_pattern_methods_invariant(trained_digits):
    """With ``pattern_type="linear"`` both pattern methods are invariant (relative error < 1e-3).

    Independent closed-form fact: ``a = cov[x, y] / w^T cov[x, y]`` does not
    change when ``x`` is shifted (a covariance ignores offsets), and the twin
    is refitted on the shifted data; deeper layers see identical inputs.
    Patterns that depended on the mean of ``x`` (or padding that saw 0
    instead of the shift) would fail.
    """
    model, data, x = trained_digits
    errors = input_invariance(model, ["pattern.attribution"], x, SHIFT, fit_data=data,
                              pattern_type="linear")
    errors.update(input_invariance(model, ["pattern.net"], x, SHIFT, fit_data=data,
                                   pattern_type="linear", normalize=False))
    assert all(e < 1e-3 for e in errors.values()), errors


def test_relu_patterns_make_pattern_methods_invariant(trained_digits):
    """The default two-component estimator must be input-invariant too (Issue 13's target).

    Within-regime statistics (iNNvestigate 1.x, ``"relu"``) are; Eq. 7 with the
    global ``E[y]`` (``"relu_eq7"``) is not, since a shift moves ``E+[y] - E[y]``.
    PatternNet is checked with its default rescaling, scale included.
    """
    model, data, x = trained_digits
    errors = input_invariance(model, ["pattern.attribution", "pattern.net"], x, SHIFT,
                              fit_data=data, pattern_type="relu")
    assert all(e < 1e-3 for e in errors.values()), errors
    eq7 = input_invariance(model, ["pattern.attribution"], x, SHIFT, fit_data=data,
                           pattern_type="relu_eq7")
    assert eq7["pattern.attribution"] > 1e-2, eq7


def test_pattern_net_default_scale_is_invariant(trained_digits):
    """PatternNet with its default rescaling (linear patterns) is invariant, scale included:
    it rescales only after the first kernel layer, where the twin's activations equal the
    model's (before it, the padded input's RMS moves with the offset)."""
    model, data, x = trained_digits
    errors = input_invariance(model, ["pattern.net"], x, SHIFT, fit_data=data,
                              pattern_type="linear")
    assert errors["pattern.net"] < 1e-3, errors


def test_input_invariance_refusals(trained_digits):
    """Pattern analyzers need fit_data; options an analyzer rejects are named; names are checked."""
    model, _, x = trained_digits
    with pytest.raises(ValueError, match="need fit_data"):
        input_invariance(model, ["pattern.attribution"], x, SHIFT)
    with pytest.raises(ValueError, match=r"'gradient' does not accept the options \['steps'\]"):
        input_invariance(model, ["gradient"], x, SHIFT, steps=4)
    with pytest.raises(ValueError, match="Unknown analyzer"):
        input_invariance(model, ["saliency"], x, SHIFT)
