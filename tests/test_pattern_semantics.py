"""What the pattern methods compute on networks with BatchNorm, residual sums and depth.

Each test checks the library against something it does not share code with:
a BatchNorm-free twin with weights folded by hand in numpy, the float64
reference of ``pattern_reference`` (explicit samples per neuron), the numpy
PatternNet backward pass of a small Dense network, or the closed form of the
linear model.  The networks are trained on sklearn's digits (a few seconds)
and their patterns fitted on data, never random stand-ins.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from pattern_reference import patterns_from_samples, reference_patterns

import innv_pattern as ip
from innv_pattern.datasets import load_digits, toy_data

L = keras.layers


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    return x.reshape(len(x), -1), y


def trained(model: keras.Model, x: np.ndarray, y: np.ndarray, epochs: int = 4) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, shuffle=False)
    return model


def bn_net(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((64,))
    h = inp
    for i, width in enumerate((32, 16)):
        h = L.Dense(width, use_bias=False, name=f"d{i}")(h)
        h = L.ReLU(name=f"r{i}")(L.BatchNormalization(name=f"bn{i}")(h))
    return keras.Model(inp, L.Dense(10, name="out")(h))


def folded_twin(model: keras.Model) -> keras.Model:
    """The same function without BatchNorm: w * s and (b - mean) * s + beta, folded in numpy."""
    inp = keras.Input((64,))
    h, twin_weights = inp, []
    for i in range(2):
        bn = model.get_layer(f"bn{i}")
        gamma, beta, mean, var = (np.asarray(v, np.float64) for v in bn.get_weights())
        scale = gamma / np.sqrt(var + bn.epsilon)
        w = np.asarray(model.get_layer(f"d{i}").kernel, np.float64)
        twin_weights.append([(w * scale).astype("float32"), (beta - mean * scale).astype("float32")])
        h = L.Dense(w.shape[1], activation="relu", name=f"d{i}")(h)
    twin = keras.Model(inp, L.Dense(10, name="out")(h))
    for i, weights in enumerate(twin_weights):
        twin.get_layer(f"d{i}").set_weights(weights)
    twin.get_layer("out").set_weights(model.get_layer("out").get_weights())
    return twin


def test_batchnorm_net_equals_its_folded_twin_and_the_float64_reference(digits):
    """Folding BatchNorm must not change patterns or analyses: the BN net against a twin
    folded by hand, and the twin's patterns against the float64 reference (both forms)."""
    x, y = digits
    model = trained(bn_net(), x, y)
    twin = folded_twin(model)
    np.testing.assert_allclose(twin(x[:50]), model(x[:50]), rtol=1e-4, atol=1e-4)
    fit = x[:1000]
    types = ("relu", "relu_eq7", "linear")
    ours = ip.PatternComputer(model, types).compute(fit, batch_size=128, verbose=0)
    theirs = ip.PatternComputer(twin, types).compute(fit, batch_size=128, verbose=0)
    for i, name in enumerate(("d0", "d1")):
        expected = reference_patterns(twin, twin.get_layer(name), fit)
        for kind in ("relu.positive", "relu_eq7.positive", "linear"):
            found = ours.for_type(kind)[name]
            np.testing.assert_allclose(found, theirs.for_type(kind)[name], rtol=1e-3, atol=1e-4)
            ok = np.isfinite(expected[kind])
            err = np.abs(found - expected[kind])[ok].max() / np.abs(expected[kind][ok]).max()
            assert err < 1e-3, f"{name} {kind}: {err:.1e} from the float64 reference"
    for method in ("pattern.attribution", "pattern.net"):
        a = ip.create_analyzer(method, model, patterns=ours).analyze(x[1000:1020])
        b = ip.create_analyzer(method, twin, patterns=theirs).analyze(x[1000:1020])
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max())


def residual_net(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((64,))
    h = L.Dense(24, activation="relu", name="h")(inp)
    u = L.Dense(24, name="branch")(L.Dense(24, activation="relu", name="inner")(h))
    z = L.ReLU(name="post")(L.Add(name="add")([u, h]))
    return keras.Model(inp, L.Dense(10, name="out")(z))


def test_add_patterns_and_ungated_layers_match_the_float64_reference(digits):
    """An Add is a linear layer with weights (1, 1) per channel: its pattern, within the
    regime of the ReLU after it, against the reference on explicit (u_c, h_c) samples.  The
    branch's last Dense feeds the Add: the ReLU after the Add gates it, so its regime is
    u + h > 0, not its own sign.  The logits have no gate: one regime, every sample."""
    x, y = digits
    model = trained(residual_net(), x, y)
    fit = x[:1000]
    patterns = ip.PatternComputer(model, ("relu", "relu_eq7")).compute(fit, batch_size=100,
                                                                      verbose=0)
    u = np.asarray(keras.Model(model.input, model.get_layer("branch").output)(fit), np.float64)
    h = np.asarray(keras.Model(model.input, model.get_layer("h").output)(fit), np.float64)
    for c in range(24):
        expected = patterns_from_samples(np.stack([u[:, c], h[:, c]], 1), np.ones((2, 1)),
                                         np.zeros(1))
        for kind in ("relu.positive", "relu_eq7.positive", "relu.negative"):
            np.testing.assert_allclose(patterns.for_type(kind)["add"][:, c],
                                       np.nan_to_num(expected[kind][:, 0]), rtol=1e-3,
                                       atol=2e-5, err_msg=f"channel {c} {kind}")
    inner = np.asarray(keras.Model(model.input, model.get_layer("inner").output)(fit),
                       np.float64)
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("branch").get_weights())
    branch = patterns_from_samples(inner, w, b, regime=(u + h) > 0)
    for kind in ("relu.positive", "relu_eq7.positive", "relu.negative"):
        ok = np.isfinite(branch[kind])
        err = np.abs(patterns.for_type(kind)["branch"] - branch[kind])[ok].max()
        assert err < 1e-3 * np.abs(branch[kind][ok]).max(), f"branch {kind}: {err:.1e}"
    out = reference_patterns(model, model.get_layer("out"), fit, gated=False)
    np.testing.assert_allclose(patterns["out"], out["linear"], rtol=1e-3,
                               atol=1e-4 * np.abs(out["linear"]).max())
    np.testing.assert_array_equal(patterns.for_type("relu.negative")["out"], 0.0)
    assert "relu.negative" not in patterns.degenerate["out"]


def residual_pattern_attribution_reference(model: keras.Model, x: np.ndarray,
                                           fit: np.ndarray) -> np.ndarray:
    """PatternAttribution of :func:`residual_net` in float64 numpy, from patterns that the
    float64 reference fits on explicit samples: x -> h -> inner -> branch (+ h) -> post -> out.

    Each kernel's weights become w * a, every ReLU passes where its input is positive, and
    the Add's relevance splits as its pattern says (weights 1, so w * a = a per input).
    """
    def values(name: str, data: np.ndarray) -> np.ndarray:
        sub = keras.Model(model.input, model.get_layer(name).output)
        return np.asarray(sub(data), np.float64)

    def weights(name: str) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.asarray(v, np.float64) for v in model.get_layer(name).get_weights())

    fit = fit.astype(np.float64)
    h_f, i_f, u_f = values("h", fit), values("inner", fit), values("branch", fit)
    (w_h, b_h), (w_i, b_i), (w_b, b_b), (w_o, b_o) = map(weights, ("h", "inner", "branch", "out"))
    positive = lambda found: np.nan_to_num(found["relu.positive"])  # noqa: E731
    a_h = positive(patterns_from_samples(fit, w_h, b_h))
    a_i = positive(patterns_from_samples(h_f, w_i, b_i))
    a_b = positive(patterns_from_samples(i_f, w_b, b_b, regime=(u_f + h_f) > 0))
    a_o = patterns_from_samples(np.maximum(u_f + h_f, 0), w_o, b_o, gated=False)["linear"]
    a_add = np.stack([positive(patterns_from_samples(np.stack([u_f[:, c], h_f[:, c]], 1),
                                                     np.ones((2, 1)), np.zeros(1)))[:, 0]
                      for c in range(u_f.shape[1])], axis=1)          # (2, C): u, h
    x = x.astype(np.float64)
    h_pre = x @ w_h + b_h
    i_pre = np.maximum(h_pre, 0) @ w_i + b_i
    s = np.maximum(i_pre, 0) @ w_b + b_b + np.maximum(h_pre, 0)
    out = np.maximum(s, 0) @ w_o + b_o
    start = np.zeros_like(out)
    start[np.arange(len(x)), out.argmax(1)] = out.max(1)
    r_s = (start @ (w_o * a_o).T) * (s > 0)
    r_i = (r_s * a_add[0]) @ (w_b * a_b).T * (i_pre > 0)
    r_h = (r_s * a_add[1] + r_i @ (w_i * a_i).T) * (h_pre > 0)
    return r_h @ (w_h * a_h).T


def test_pattern_attribution_on_a_trained_residual_net_equals_the_float64_reference(digits):
    """The whole reverse pass on a trained residual net, against numpy in float64 with
    patterns that numpy fits itself: where PatternAttribution falls short on residual nets
    (benchmarks/float64_check.py), this shows it is the method computed as defined, not a
    defect of this library's bookkeeping or regimes."""
    x, y = digits
    model = trained(residual_net(1), x, y)
    fit = x[:1000]
    patterns = ip.PatternComputer(model).compute(fit, batch_size=100, verbose=0)
    sample = x[1000:1040]
    found = ip.create_analyzer("pattern.attribution", model, patterns=patterns).analyze(sample)
    expected = residual_pattern_attribution_reference(model, sample, fit)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(found, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_pattern_attribution_conserves_relevance_through_a_residual_sum(digits):
    """Before Adds had patterns, both branches received the whole relevance (the gradient
    copies it), doubling it per block.  With patterns summing to w^T a = 1 per channel, a
    bias-free residual net's PatternAttribution total stays below the logit: the relevance
    that reaches closed ReLU gates is lost (most of it in these narrow Dense nets: the plain
    twin of this net keeps about the same share), nothing is created."""
    x, y = digits
    keras.utils.set_random_seed(3)
    inp = keras.Input((64,))
    h = L.Dense(24, activation="relu", use_bias=False)(inp)
    for _ in range(4):
        u = L.Dense(24, use_bias=False)(L.Dense(24, activation="relu", use_bias=False)(h))
        h = L.ReLU()(L.Add()([u, h]))
    model = trained(keras.Model(inp, L.Dense(10, use_bias=False)(h)), x, y)
    patterns = ip.PatternComputer(model).compute(x[:1000], batch_size=100, verbose=0)
    sample = x[1000:1100]
    relevance = ip.create_analyzer("pattern.attribution", model, patterns=patterns).analyze(sample)
    logit = np.max(np.asarray(model(sample)), axis=1)
    ratio = relevance.sum(1) / logit
    assert np.median(ratio) < 1.5, f"relevance grows through the residual sums: {ratio}"
    assert np.median(ratio) > 0.05, f"relevance vanishes: {ratio}"


def dense_patternnet_reference(model: keras.Model, patterns: dict, x: np.ndarray,
                               normalize: bool) -> np.ndarray:
    """PatternNet of Dense(relu) -> Dense(relu) -> Dense in float64 numpy, max_activation.

    With ``normalize``, the signal is rescaled to the forward RMS at each cut tensor;
    only the last rescale before the input matters: the first layer's pre-activation.
    """
    w = [np.asarray(model.layers[i].kernel, np.float64) for i in range(3)]
    b = [np.asarray(model.layers[i].bias, np.float64) for i in range(3)]
    a = [np.asarray(patterns[model.layers[i].name], np.float64) for i in range(3)]
    z1 = x @ w[0] + b[0]
    z2 = np.maximum(z1, 0) @ w[1] + b[1]
    out = np.maximum(z2, 0) @ w[2] + b[2]
    start = np.zeros_like(out)
    start[np.arange(len(x)), out.argmax(1)] = out.max(1)
    g2 = (start @ a[2].T) * (z2 > 0)
    g1 = (g2 @ a[1].T) * (z1 > 0)
    if normalize:
        rms = lambda v: np.sqrt(np.mean(v ** 2, axis=1, keepdims=True))  # noqa: E731
        g1 = g1 * rms(z1) / rms(g1)
    return g1 @ a[0].T


def test_patternnet_normalization_keeps_the_direction_and_sets_the_documented_scale(digits):
    """normalize=True is the paper's signal times one positive number per sample, the one
    that gives the first layer's back-projected signal the RMS of its forward value."""
    x, y = digits
    keras.utils.set_random_seed(4)
    model = trained(keras.Sequential([keras.Input((64,)), L.Dense(32, activation="relu"),
                                      L.Dense(16, activation="relu"), L.Dense(10)]), x, y)
    patterns = ip.PatternComputer(model).compute(x[:1000], batch_size=100, verbose=0)
    sample = x[1000:1040]
    for normalize in (False, True):
        found = ip.create_analyzer("pattern.net", model, patterns=patterns,
                                   normalize=normalize).analyze(sample)
        expected = dense_patternnet_reference(model, patterns, sample.astype(np.float64),
                                              normalize)
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_patternnet_on_a_linear_model_is_the_closed_form_a_y():
    """One kernel layer has no cut tensor: PatternNet gives the paper's s = a y exactly."""
    x = toy_data(2000).x
    inp = keras.Input((2,))
    layer = L.Dense(1, use_bias=False, name="w")
    model = keras.Model(inp, layer(inp))
    layer.kernel.assign([[1.0], [-1.0]])
    patterns = ip.PatternComputer(model).compute(x.astype("float32"), batch_size=500, verbose=0)
    signal = ip.create_analyzer("pattern.net", model, patterns=patterns).analyze(x[:20])
    y = x[:20] @ np.array([1.0, -1.0])
    np.testing.assert_allclose(signal, np.outer(y, patterns["w"][:, 0]), rtol=1e-5, atol=1e-6)


def test_unfolded_batchnorm_has_the_exact_pattern_one_over_scale(digits):
    """A BatchNorm after a ReLU cannot be folded into the Dense before it, but folds into the
    Dense after it (w * s, bias + w^T t).  Its pattern is 1/s, so both methods must equal
    those of the twin with that fold (whose Dense pattern is the original's divided by s)."""
    x, y = digits
    keras.utils.set_random_seed(5)
    inp = keras.Input((64,))
    h = L.BatchNormalization(name="bn")(L.Dense(32, activation="relu", name="d0")(inp))
    model = trained(keras.Model(inp, L.Dense(10, name="out")(h)), x, y)
    bn = model.get_layer("bn")
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in bn.get_weights())
    s = gamma / np.sqrt(var + bn.epsilon)
    t = beta - mean * s
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("out").get_weights())
    tin = keras.Input((64,))
    twin = keras.Model(tin, L.Dense(10, name="out")(L.Dense(32, activation="relu",
                                                            name="d0")(tin)))
    twin.get_layer("d0").set_weights(model.get_layer("d0").get_weights())
    twin.get_layer("out").set_weights([(w * s[:, None]).astype("float32"),
                                       (b + t @ w).astype("float32")])
    np.testing.assert_allclose(twin(x[:20]), model(x[:20]), rtol=1e-4, atol=1e-4)
    fit, sample = x[:1000], x[1000:1020]
    for method in ("pattern.attribution", "pattern.net"):
        results = [ip.create_analyzer(method, m, patterns=ip.PatternComputer(m).compute(
            fit, batch_size=100, verbose=0)).analyze(sample) for m in (model, twin)]
        np.testing.assert_allclose(results[0], results[1], rtol=2e-3,
                                   atol=2e-3 * np.abs(results[1]).max(), err_msg=method)


def test_deep_patternnet_stays_within_the_input_scale():
    """40 Dense ReLU layers with patterns fitted on their data: the paper's PatternNet grows
    layer by layer; the normalized signal stays on the activations' scale (issue 13: within
    1e6 x max|input|) and keeps the raw signal's direction wherever the raw one is finite."""
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((16,))] + [
        L.Dense(32, activation="relu", kernel_initializer="he_normal") for _ in range(40)]
        + [L.Dense(4)])
    x = np.random.default_rng(0).normal(size=(600, 16)).astype("float32")
    patterns = ip.PatternComputer(model).compute(x[:500], batch_size=100, verbose=0)
    normalized = ip.create_analyzer("pattern.net", model, patterns=patterns).analyze(x[500:])
    assert np.isfinite(normalized).all()
    assert np.abs(normalized).max() <= 1e6 * np.abs(x[500:]).max()
    try:
        raw = ip.create_analyzer("pattern.net", model, patterns=patterns,
                                 normalize=False).analyze(x[500:])
    except ValueError as err:  # the paper's scale overflowed float32: refused, as documented
        assert "overflowed float32" in str(err)
        return
    cos = (raw * normalized).sum(1) / (np.linalg.norm(raw, axis=1)
                                       * np.linalg.norm(normalized, axis=1) + 1e-30)
    live = np.linalg.norm(raw, axis=1) > 0
    np.testing.assert_allclose(cos[live], 1.0, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 1e25, 1e-25])
def test_patternnet_rescale_equals_float64_for_huge_and_tiny_signals(scale):
    """The rescale's fast path (plain mean squares) and its exact path (divided by the
    largest entry first, taken where squares over- or underflow float32) both give
    g * rms(v) / rms(g) per sample, as float64 numpy does."""
    from innv_pattern.pattern_analyzers import _rms_rescaled

    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    g = (rng.normal(size=v.shape) * scale).astype("float32")
    vt = tf.constant(v)
    with tf.GradientTape() as tape:
        tape.watch(vt)
        out = _rms_rescaled(vt)
    found = tape.gradient(out, vt, output_gradients=tf.constant(g)).numpy()
    g64, v64 = g.astype(np.float64), v.astype(np.float64)
    rms = lambda a: np.sqrt(np.mean(a ** 2, axis=(1, 2, 3), keepdims=True))  # noqa: E731
    np.testing.assert_allclose(found, g64 * rms(v64) / rms(g64), rtol=1e-5, atol=1e-6)


def test_patternnet_rescales_once_per_layer():
    """In a plain CNN the signal is rescaled at each kernel layer's output after the first
    (activations, pooling and reshapes between them do not grow it); in a residual net
    also at each block's merge, so no block's growth compounds with the next's."""
    from innv_pattern.canonize import canonize
    from innv_pattern.pattern_analyzers import _rescaled_tensors

    inp = keras.Input((8, 8, 1))
    x = L.MaxPooling2D()(L.Conv2D(4, 3, activation="relu", name="c1")(inp))
    x = L.Flatten()(L.Conv2D(4, 3, activation="relu", padding="same", name="c2")(x))
    plain = keras.Model(inp, L.Dense(3, name="out")(L.Dense(5, activation="relu", name="d")(x)))
    graph = canonize(plain)
    producers = {op.outputs[0]: op.name for op in graph.ops}
    assert sorted(producers[k] for k in _rescaled_tensors(graph)) == ["c1", "c2", "d"]
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="r1")(
        L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp))
    merged = L.ReLU(name="relu")(L.Add(name="add")([y, L.Conv2D(4, 1, name="skip")(inp)]))
    res = keras.Model(inp, L.Dense(3, name="out")(L.Flatten()(merged)))
    graph = canonize(res)
    producers = {op.outputs[0]: op.name for op in graph.ops}
    assert sorted(producers[k] for k in _rescaled_tensors(graph)) == ["add"]


@pytest.mark.parametrize("scale,divided", [(1.0, False), (1e20, True), (1e-20, True)])
def test_patternnet_range_guard_divides_only_outside_its_range(scale, divided):
    """Between the scale-setting rescale and the output, the signal is left as it is
    (bit for bit) while its largest entry is in [1e-15, 1e15], and divided by that
    entry, per sample, where it is not: a positive factor, so the direction is kept."""
    from innv_pattern.pattern_analyzers import _range_guarded

    rng = np.random.default_rng(1)
    v = tf.constant(rng.normal(size=(3, 5)).astype("float32"))
    g = (rng.normal(size=(3, 5)) * scale).astype("float32")
    with tf.GradientTape() as tape:
        tape.watch(v)
        out = _range_guarded(v)
    found = tape.gradient(out, v, output_gradients=tf.constant(g)).numpy()
    expected = g / np.abs(g).max(axis=1, keepdims=True) if divided else g
    np.testing.assert_allclose(found, expected, rtol=1e-6)
