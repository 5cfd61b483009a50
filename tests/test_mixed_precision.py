"""Models in float16 / bfloat16 or under a mixed-precision policy (issue 8).

Analyses and pattern statistics are computed in float32: the reference is the
same network built in float32 with the low-precision model's (rounded) weights,
so the only difference left is where the library computes.  Had the library
computed at the model's precision, the differences would be of the order of
the model's own output error (asserted to be large below), not float32 rounding.
"""

import keras
import numpy as np
import pytest

import innv_pattern as ip

POLICIES = ["mixed_float16", "mixed_bfloat16", "float16", "bfloat16"]


def _build(dtype, bn_after_add):
    """A residual CNN: conv+BN (folded), ReLU, max pooling, an Add, GAP, two Dense."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", dtype=dtype, name="c1")(inp)
    x = keras.layers.BatchNormalization(dtype=dtype, name="bn1")(x)
    x = keras.layers.ReLU(dtype=dtype)(x)
    x = keras.layers.MaxPooling2D(dtype=dtype)(x)
    y = keras.layers.Conv2D(6, 3, padding="same", activation="relu", dtype=dtype, name="c2")(x)
    x = keras.layers.Add(dtype=dtype, name="add")([x, y])
    if bn_after_add:  # not foldable: a layer with weights that keeps its precision
        x = keras.layers.BatchNormalization(dtype=dtype, name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    x = keras.layers.Dense(8, activation="relu", dtype=dtype, name="d1")(x)
    return keras.Model(inp, keras.layers.Dense(4, dtype=dtype, name="out")(x))


def _pair(policy, bn_after_add=False):
    """The low-precision model and its float32 twin holding the same (rounded) weights."""
    low, ref = _build(policy, bn_after_add), _build("float32", bn_after_add)
    rng = np.random.default_rng(0)
    for a, b in zip(low.weights, ref.weights):
        value = rng.normal(0.0, 0.4, size=a.shape)
        if "variance" in a.path:
            value = rng.uniform(0.5, 2.0, size=a.shape)
        a.assign(value.astype(a.dtype))
        b.assign(np.asarray(a.numpy(), dtype="float32"))
    return low, ref


def _data(n=6):
    return np.random.default_rng(1).normal(0.0, 1.0, size=(n, 10, 10, 3)).astype("float32")


def _kwargs(name):
    return {"smoothgrad": {"augment_by_n": 4}, "integrated_gradients": {"steps": 4}}.get(name, {})


@pytest.mark.parametrize("policy", POLICIES)
def test_analyses_match_the_float32_model(policy):
    """Every analyzer: float32 results equal to the float32 twin's (only rounding differs)."""
    low, ref = _pair(policy)
    x = _data()
    own_error = np.abs(low.predict(x, verbose=0).astype("float64") - ref.predict(x, verbose=0)).max()
    assert own_error > 1e-4, "the low-precision model itself should be visibly inexact"
    fit = _data(64)
    for name in ip.list_analyzers():
        kwargs = _kwargs(name)
        if name.startswith("pattern."):
            a_low = ip.create_analyzer(name, low, **kwargs)
            a_low.fit(fit, verbose=0)
            a_ref = ip.create_analyzer(name, ref, **kwargs)
            a_ref.fit(fit, verbose=0)
        else:
            a_low, a_ref = ip.create_analyzer(name, low, **kwargs), ip.create_analyzer(name, ref, **kwargs)
        got, want = a_low.analyze(x), a_ref.analyze(x)
        assert got.dtype == np.float32, name
        scale = np.abs(want).max()
        assert scale > 0, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("policy", POLICIES)
def test_pattern_statistics_match_the_float32_model(policy):
    """Fitted statistics and patterns are the float32 twin's, in float64 / float32."""
    low, ref = _pair(policy)
    fit = _data(64)
    p_low = ip.PatternComputer(low).compute(fit, batch_size=16, verbose=0)
    p_ref = ip.PatternComputer(ref).compute(fit, batch_size=16, verbose=0)
    assert sorted(p_low) == sorted(p_ref) == ["add", "c1", "c2", "d1", "out"]
    for key in p_ref:
        want = p_ref[key]
        np.testing.assert_allclose(p_low[key], want, rtol=0, atol=1e-5 * np.abs(want).max(),
                                   err_msg=key)
        assert p_low[key].dtype == np.float32
        for s in p_low.statistics[key].sums:
            assert p_low.statistics[key].sums[s].dtype == np.float64


@pytest.mark.parametrize("policy,tolerance", [("float16", 5e-3), ("mixed_float16", 5e-3),
                                              ("bfloat16", 3e-2), ("mixed_bfloat16", 3e-2)])
def test_unfoldable_low_precision_layer_stays_within_its_precision(policy, tolerance):
    """A BatchNormalization after an Add keeps its weights' precision: error of that order.

    float16 has 11 significant bits (unit roundoff 5e-4), bfloat16 8 (4e-3);
    measured: 2e-4..7e-4 of the largest value for float16, 3e-3..5e-3 for
    bfloat16; the tolerances allow about 7x that.  Analyses stay finite and float32.
    """
    low, ref = _pair(policy, bn_after_add=True)
    x = _data()
    for name in ["gradient", "lrp.epsilon", "guided_backprop"]:
        got = ip.create_analyzer(name, low).analyze(x)
        want = ip.create_analyzer(name, ref).analyze(x)
        assert got.dtype == np.float32 and np.all(np.isfinite(got)), name
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max(),
                                   err_msg=name)


def test_float64_models_are_fitted_in_float64():
    """A float64 model's statistics are summed from float64 batches, not float32 ones: its
    patterns equal the explicit-sample float64 reference to ~1e-9 (float32 sums give ~1e-6),
    for both two-component forms.  Before, the fit failed with a dtype error."""
    from pattern_reference import reference_patterns

    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 1), dtype="float64")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64",
                            name="conv")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, dtype="float64", name="out")(
        keras.layers.Flatten(dtype="float64")(h)))
    x = np.random.default_rng(2).normal(0.5, 1.0, size=(96, 8, 8, 1))
    patterns = ip.PatternComputer(model, ("relu", "relu_eq7")).compute(x, batch_size=32,
                                                                       verbose=0)
    expected = reference_patterns(model, model.get_layer("conv"), x)
    for kind in ("relu.positive", "relu.negative", "relu_eq7.positive"):
        found = patterns.statistics["conv"].finalize(
            np.asarray(model.get_layer("conv").kernel), (kind,))[0][kind]
        ok = np.isfinite(expected[kind])
        err = np.abs(found - expected[kind])[ok].max() / np.abs(expected[kind][ok]).max()
        assert err < 1e-9, f"{kind}: {err:.1e}"
