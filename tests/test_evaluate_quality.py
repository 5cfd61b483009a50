"""rho (Eq. 1): closed forms against hand-computed values and a brute-force reference."""

import io
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from innv_pattern.canonize import canonize
from innv_pattern.datasets import toy_data
from innv_pattern.evaluate import plot_signal_quality, signal_quality
from innv_pattern.evaluate.moments import CoMoments, batch_comoments
from innv_pattern.evaluate._layers import select_layers
from conftest import randomize_biases
from innv_pattern.evaluate.quality import _warn_if_above_one
from innv_pattern.patterns import PatternComputer


def _toy_model(w: np.ndarray) -> keras.Model:
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1, use_bias=False, name="w")(inp))
    model.layers[1].set_weights([w[:, None]])
    return model


def test_toy_rho_closed_forms():
    """Section 2's toy, x = a_s y + a_d eps with w = (1, -1).

    S_a recovers a_s, so the residual a_d eps holds nothing of y: rho = 1.
    S_w removes the w-direction: x - w y / 2 = (y + 2 eps) (1, 1) / 2, whose best
    read-out correlates with y by sigma_y / sqrt(sigma_y^2 + 4 sigma^2), with
    sigma_y^2 = 1/3 (y uniform on [-1, 1]): rho(S_w) = 1 - that.
    """
    sigma = 0.5
    toy = toy_data(60000, sigma=sigma, seed=3)
    model = _toy_model(toy.w)
    f, r, e = toy.x[:20000], toy.x[20000:40000], toy.x[40000:]
    rho = signal_quality(model, f, r, e, estimators=("filter", "linear", "two_component"))
    sy = np.sqrt(1 / 3)
    assert rho["filter"]["w"] == pytest.approx(1 - sy / np.sqrt(sy ** 2 + 4 * sigma ** 2), abs=0.02)
    assert rho["linear"]["w"] == pytest.approx(1.0, abs=0.02)
    # With a zero-mean distractor S_a+- reduces to S_a (the paper's remark after Eq. 7).
    assert rho["two_component"]["w"] == pytest.approx(1.0, abs=0.02)


def _brute_rho(x2, x3, w, b, a_pos, a_neg, rectified):
    """Explicit residuals, least-squares v on split 2, correlation on split 3."""
    def residual(x):
        y = x @ w
        m = y + b > 0
        d = x - np.outer(y * m, a_pos) - np.outer(y * ~m, a_neg)
        return d, (np.maximum(y + b, 0) if rectified else y)

    (d2, t2), (d3, t3) = residual(x2), residual(x3)
    v = np.linalg.lstsq(d2 - d2.mean(0), t2 - t2.mean(), rcond=1e-7)[0]
    return 1 - np.corrcoef(d3 @ v, t3)[0, 1]


@pytest.mark.parametrize("target", ["rectified", "linear"])
def test_closed_form_matches_brute_force(target):
    """Per-neuron rho of every estimator equals an explicit float64 least-squares fit.

    A ReLU layer with non-zero biases on skewed, offset inputs; the reference
    builds d = x - a+ y+ - a- y- sample by sample (patterns rescaled so that
    w^T a = 1 in float64, as the closed form does) and regresses with lstsq.
    """
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(5, activation="relu",
                                                                        name="h")(inp)))
    model.get_layer("h").bias.assign(rng.normal(0, 0.3, 5).astype("float32"))
    x = (rng.normal(size=(6000, 6)) @ rng.normal(size=(6, 6)) + 1.0).astype("float32")
    x[:, 0] = np.abs(x[:, 0])
    f, r, e = x[:2000], x[2000:4000], x[4000:]
    patterns = PatternComputer(model, ("linear", "relu")).compute(f, verbose=0)
    rho = signal_quality(model, None, r, e, estimators=("filter", "linear", "two_component"),
                         patterns=patterns, target=target, per_neuron=True, ridge=1e-12,
                         layers=["h"])
    w = model.get_layer("h").kernel.numpy().astype(np.float64)
    b = model.get_layer("h").bias.numpy().astype(np.float64)
    types = {"filter": (w, w), "linear": ("linear", "linear"),
             "two_component": ("relu.positive", "relu.negative")}
    for kind, (p, q) in types.items():
        a_p = p if kind == "filter" else patterns.for_type(p)["h"].astype(np.float64)
        a_n = q if kind == "filter" else patterns.for_type(q)["h"].astype(np.float64)
        a_p, a_n = a_p / np.sum(w * a_p, 0), a_n / np.sum(w * a_n, 0)
        expected = [_brute_rho(r.astype(np.float64), e.astype(np.float64), w[:, j], b[j],
                               a_p[:, j], a_n[:, j], target == "rectified") for j in range(5)]
        np.testing.assert_allclose(rho[kind]["h"], expected, atol=2e-5)  # float32 y


def _two_regime_data(n, seed):
    """y ~ N(0.3, 1); x = a+ y + noise where y > 0, a- y + noise elsewhere; w^T noise = 0."""
    rng = np.random.default_rng(seed)
    w = np.array([1.0, -1.0, 0.5])
    a_pos, a_neg = np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])
    y = rng.normal(0.3, 1.0, n)
    noise = rng.normal(size=(n, 3))
    noise -= np.outer(noise @ w, w) / (w @ w)
    x = np.where((y > 0)[:, None], np.outer(y, a_pos), np.outer(y, a_neg)) + noise
    return x.astype("float32"), w


def test_rectified_reading_separates_the_two_component_estimator():
    """Inputs that follow a different pattern in each regime (the case S_a+- models).

    With the true two-component patterns the residual is pure noise, independent
    of y: rho(S_a+-) = 1 under either target.  S_a removes y's linear trace, so
    with t = w^T x it also gets 1; but its residual keeps (a+ - a) y+, which a
    read-out finds when t = relu(w^T x): rho(S_a) < 1 only in the rectified
    reading.  That is the paper's dense-layer picture, and why it is the default.

    Closed form for S_a: with delta = a+ - a- (orthogonal to w), alpha =
    cov(y+, y) / var(y), the residual is delta g + noise, g = (1 - alpha) y+ -
    alpha y-; noise has unit variance on w's complement, so the best read-out
    reaches corr(g, t) sqrt(k var g / (1 + k var g)) with k = |delta|^2 = 2.
    The scalar expectations over y come from 4M draws of y alone.
    """
    x, w = _two_regime_data(30000, seed=1)
    inp = keras.Input((3,))
    hidden = keras.layers.Dense(1, activation="relu", use_bias=False, name="h")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="out")(hidden))
    model.get_layer("h").set_weights([w[:, None].astype("float32")])
    f, r, e = x[:10000], x[10000:20000], x[20000:]
    kw = dict(estimators=("linear", "two_component"), layers=["h"])
    rect = signal_quality(model, f, r, e, target="rectified", **kw)
    lin = signal_quality(model, f, r, e, target="linear", **kw)
    assert rect["two_component"]["h"] == pytest.approx(1.0, abs=0.02)
    assert lin["two_component"]["h"] == pytest.approx(1.0, abs=0.02)
    assert lin["linear"]["h"] == pytest.approx(1.0, abs=0.02)
    y = np.random.default_rng(9).normal(0.3, 1.0, 4_000_000)
    y_pos = np.maximum(y, 0.0)
    alpha = np.cov(y_pos, y)[0, 1] / y.var()
    g = (1 - alpha) * y_pos - alpha * (y - y_pos)
    k = 2.0
    expected = 1 - abs(np.corrcoef(g, y_pos)[0, 1]) * np.sqrt(k * g.var() / (1 + k * g.var()))
    assert rect["linear"]["h"] == pytest.approx(expected, abs=0.02)   # 0.837


def _numpy_patches(x, kernel_size, stride, padding):
    """Conv patches by explicit loops (TF 'SAME' padding: the extra row/column after)."""
    n, h, w_, c = x.shape
    k = kernel_size
    if padding == "same":
        out_h, out_w = -(-h // stride), -(-w_ // stride)
        pad_h = max((out_h - 1) * stride + k - h, 0)
        pad_w = max((out_w - 1) * stride + k - w_, 0)
        x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                       (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    else:
        out_h, out_w = (h - k) // stride + 1, (w_ - k) // stride + 1
    rows = [x[:, i * stride:i * stride + k, j * stride:j * stride + k, :].reshape(n, -1)
            for i in range(out_h) for j in range(out_w)]
    return np.stack(rows, axis=1)


@pytest.mark.parametrize("padding,stride", [("same", 1), ("valid", 2), ("same", 2)])
def test_conv_inputs_are_the_patches(padding, stride):
    """Each conv output position is a sample whose input is its patch, in kernel order."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 6, 3)).astype("float32")
    inp = keras.Input((7, 6, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3, strides=stride, padding=padding)(inp))
    layer = select_layers(canonize(model), None, None, "linear", 0)[0]
    got = layer.patches(tf.constant(x)).numpy()
    expected = _numpy_patches(x, 3, stride, padding)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    y = model(x).numpy().reshape(2, -1, 4) - model.layers[1].bias.numpy()
    kernel = model.layers[1].kernel.numpy().reshape(-1, 4)
    np.testing.assert_allclose(expected @ kernel, y, atol=1e-4)


def test_conv1d_uses_identity_kernel_patches():
    """Conv1D (no extract_patches fast path): patches through the op's own convolution."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 2)).astype("float32")
    inp = keras.Input((9, 2))
    model = keras.Model(inp, keras.layers.Conv1D(3, 3, padding="same", dilation_rate=2)(inp))
    layer = select_layers(canonize(model), None, None, "linear", 0)[0]
    patches = layer.patches(tf.constant(x)).numpy()
    y = model(x).numpy() - model.layers[1].bias.numpy()
    np.testing.assert_allclose(patches @ model.layers[1].kernel.numpy().reshape(-1, 3), y,
                               atol=1e-5)


def test_comoments_merge_is_exact_with_large_offsets():
    """Chan's merge of batch-centred sums keeps a covariance under a mean 1e4 times larger."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4)) + 1e4
    e = rng.normal(size=(3000, 2, 3)) - 5e3
    acc = CoMoments(4, 2, 3)
    for start in range(0, 3000, 700):
        acc.add(batch_comoments(x[start:start + 700].astype("float32"),
                                e[start:start + 700].astype("float32")))
    cov = acc.covariances()
    np.testing.assert_allclose(cov["xx"], np.cov(x.T, bias=True), atol=2e-3)
    ref = np.cov(np.c_[x, e[:, 1]].T, bias=True)[:4, 4:]
    np.testing.assert_allclose(cov["xe"][:, 1], ref, atol=2e-3)


def test_sampling_info_errors_and_plot(conv_model):
    """Neuron sampling is reported; bad arguments get Keras-style messages; the plot draws."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 9, 9, 2)).astype("float32")
    rho, info = signal_quality(conv_model, x[:32], x[32:64], x[64:], max_neurons=3,
                               max_positions=10, return_info=True)
    assert set(rho) == {"random", "filter", "linear", "two_component"}
    first = canonize(conv_model).kernel_ops[0].name
    assert info[first]["neurons"] == 3 and info[first]["neurons_total"] == 4
    assert info[first]["samples"] == [320.0, 320.0]   # 32 images x 10 sampled positions
    fig = plot_signal_quality(rho, title="conv")
    fig.savefig(io.BytesIO(), format="png")
    with pytest.raises(ValueError, match="estimators must be"):
        signal_quality(conv_model, x, x, x, estimators=("weights",))
    with pytest.raises(ValueError, match="needs fit_data"):
        signal_quality(conv_model, None, x, x)
    with pytest.raises(ValueError, match="ridge > 0"):
        signal_quality(conv_model, x, x, x, ridge=0.0)
    with pytest.raises(ValueError, match="Unknown layer"):
        signal_quality(conv_model, x, x, x, layers=["nope"])
    inp = keras.Input((5, 5, 2))
    grouped = keras.Model(inp, keras.layers.Conv2D(4, 3, groups=2, name="g")(inp))
    with pytest.raises(ValueError, match=r"but not grouped ones; received \['g'\]"):
        signal_quality(grouped, x, x, x, estimators=("filter",))


def test_overlapping_splits_and_rho_above_one_are_warned_about():
    """rho measured on the data the patterns were fitted on exceeds 1 on trained networks
    (1.1-1.4 in a digits CNN's dense layers, tests/test_cli_workflow.py): the residual holds
    no linear trace of the output there. Shared samples are warned about, and so is a layer
    mean above RHO_WARNING (S_a and S_a+- only: the baselines are not fitted); separate
    splits are quiet."""
    x, w = _two_regime_data(12000, seed=2)
    inp = keras.Input((3,))
    hidden = keras.layers.Dense(1, activation="relu", use_bias=False, name="h")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="out")(hidden))
    model.get_layer("h").set_weights([w[:, None].astype("float32")])
    f, r = x[:4000], x[4000:8000]
    kw = dict(estimators=("linear",), layers=["h"], target="linear")
    with pytest.warns(UserWarning) as records:
        on_fit = signal_quality(model, f, r, f, **kw)
    said = " | ".join(str(r.message) for r in records)
    assert "4000 of the 4000 samples of fit_data are also in eval_data" in said
    assert on_fit["linear"]["h"] == pytest.approx(1.0, abs=1e-6)      # exact on the fit data
    with pytest.warns(UserWarning, match=r"rho above 1 \(linear 'h' 1.10\): .* not fitted on"):
        _warn_if_above_one({"filter": {"h": 1.5}, "linear": {"h": 1.1, "out": 1.01}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        held_out = signal_quality(model, f, r, x[8000:], **kw)
    assert held_out["linear"]["h"] <= 1.02


def _layer_kinds_model() -> keras.Model:
    """Depthwise (multiplier 2, stride 2), separable and transposed convolutions, 1D and 2D."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((9, 9, 2))
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                     activation="relu", name="dw")(inp)
    x = keras.layers.SeparableConv2D(3, 3, padding="same", activation="relu", name="sep")(x)
    x = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu",
                                     name="up")(x)
    x = keras.layers.Reshape((100, 4))(x)
    x = keras.layers.Conv1DTranspose(2, 3, strides=2, name="up1d")(x)
    return randomize_biases(keras.Model(inp, keras.layers.Dense(3, name="out")(
        keras.layers.Flatten()(x))))


def test_depthwise_separable_and_transposed_patches_reproduce_each_neuron():
    """Every evaluated neuron's output is its input samples times its kernel column: a
    depthwise filter reads its own channel's patch, a transposed convolution's output
    position the inputs its kernel taps reach."""
    model = _layer_kinds_model()
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 9, 9, 2)).astype("float32"))
    graph = canonize(model)
    _, values = graph.run([x], keep=True)
    chosen = select_layers(graph, None, None, "rectified", 0)
    assert {layer.op.name for layer in chosen} == {"dw", "sep/depthwise", "sep/pointwise", "up",
                                                   "up1d", "out"}
    assert sum(layer.op.name == "dw" for layer in chosen) == 2        # one per input channel
    for layer in chosen:
        op = layer.op
        y = op.linear(values[op.inputs[0]], op.get_kernel()).numpy()
        y = np.moveaxis(y, op.channel_axis, -1).reshape(2, -1, y.shape[op.channel_axis])
        patches = layer.patches(values[op.inputs[0]]).numpy()
        np.testing.assert_allclose(patches @ layer.kernel_matrix().numpy(),
                                   y[..., layer.neurons], atol=1e-4, err_msg=layer.key)
    data = np.random.default_rng(1).normal(size=(60, 9, 9, 2)).astype("float32")
    rho, info = signal_quality(model, data[:20], data[20:40], data[40:], return_info=True)
    assert set(rho["two_component"]) == {layer.op.name for layer in chosen}   # it once failed
    assert info["dw"]["neurons"] == info["dw"]["neurons_total"] == 4
    assert all(np.isfinite(v) for by_layer in rho.values() for v in by_layer.values())


def test_depthwise_rho_matches_brute_force_per_channel():
    """A depthwise neuron's rho, against the explicit regression on its own channel's patches."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((7, 7, 2))
    hidden = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw")
    model = randomize_biases(keras.Model(inp, keras.layers.Dense(2)(
        keras.layers.Flatten()(hidden(inp)))))
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(1500, 7, 7, 2)) + rng.normal(size=(1500, 1, 1, 2))).astype("float32")
    f, r, e = x[:500], x[500:1000], x[1000:]
    patterns = PatternComputer(model, "relu").compute(f, verbose=0)
    rho = signal_quality(model, None, r, e, estimators=("filter", "two_component"),
                         patterns=patterns, per_neuron=True, ridge=1e-12, layers=["dw"])
    kernel, bias = (v.numpy().astype(np.float64) for v in (hidden.kernel, hidden.bias))
    a_pos = patterns.for_type("relu.positive")["dw"].astype(np.float64)
    a_neg = patterns.for_type("relu.negative")["dw"].astype(np.float64)
    for j in range(4):
        c, m = divmod(j, 2)
        p2, p3 = (_numpy_patches(s[..., c:c + 1].astype(np.float64), 3, 1, "valid").reshape(
            -1, 9) for s in (r, e))
        w = kernel[:, :, c, m].ravel()
        ap, an = a_pos[:, :, c, m].ravel(), a_neg[:, :, c, m].ravel()
        expected = _brute_rho(p2, p3, w, bias[j], ap / (w @ ap), an / (w @ an), True)
        assert rho["two_component"]["dw"][j] == pytest.approx(expected, abs=2e-4)
        expected = _brute_rho(p2, p3, w, bias[j], w / (w @ w), w / (w @ w), True)
        assert rho["filter"]["dw"][j] == pytest.approx(expected, abs=2e-4)


def test_a_covariance_too_large_is_refused_before_any_work():
    """A dense layer with 131072 inputs asked for a 131072 x 131072 covariance (137 GB in
    float64) and died in an out-of-memory traceback; now it is named, with what to pass."""
    inp = keras.Input((131072,))
    wide = keras.Model(inp, keras.layers.Dense(2, name="wide")(inp))
    x = np.zeros((4, 131072), np.float32)
    with pytest.raises(ValueError, match=r"'wide' \d+\.\d GiB \(131072 inputs: a 131072x131072 "
                       r"covariance\)\. Leave it out with layers=\[\]"):
        signal_quality(wide, x, x, x, estimators=("filter",))
    inp = keras.Input((2048,))
    two = keras.Model(inp, keras.layers.Dense(2, name="wide")(
        keras.layers.Dense(3, activation="relu", name="narrow")(inp)))
    y = np.zeros((4, 2048), np.float32)
    with pytest.raises(ValueError, match=r"'narrow' .*Leave it out with layers=\['wide'\] "
                       r"\(on the command line: --layers wide\), or raise max_memory"):
        signal_quality(two, y, y, y, estimators=("filter",), max_memory=2**26)


def test_each_declared_two_component_estimator_plugs_into_rho():
    """rho of every estimator in the declaration (patterns.estimators.ESTIMATORS).

    The two-regime data shifted by a constant ``s`` (with ``w^T s = 0``, so the
    output is unchanged; a BatchNorm-style offset): the within-regime estimator
    'relu' is shift-invariant and recovers the true patterns (rho = 1, as
    unshifted), while Eq. 7's numerator ``cov+[x, y] + E+[x] (E+[y] - E[y])``
    picks up ``s`` and loses rho.  'two_component' is the family: with patterns
    of both it reads the default ('relu'), with 'relu_eq7' patterns alone it reads
    those (the command line's evaluate once skipped S_a+- for such a file).
    """
    x, w = _two_regime_data(30000, seed=3)
    shift = np.array([4.0, 4.0, 0.0], "float32")            # w^T shift = 0
    x = x + shift
    inp = keras.Input((3,))
    hidden = keras.layers.Dense(1, activation="relu", use_bias=False, name="h")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="out")(hidden))
    model.get_layer("h").set_weights([w[:, None].astype("float32")])
    f, r, e = x[:10000], x[10000:20000], x[20000:]
    both = PatternComputer(model, ("relu", "relu_eq7")).compute(f, verbose=0)
    kw = dict(layers=["h"], estimators=("relu", "relu_eq7", "two_component"))
    rho = signal_quality(model, None, r, e, patterns=both, **kw)
    assert rho["relu"]["h"] == pytest.approx(1.0, abs=0.02)
    assert rho["relu_eq7"]["h"] < rho["relu"]["h"] - 0.05
    assert rho["two_component"]["h"] == rho["relu"]["h"]
    eq7_only = PatternComputer(model, "relu_eq7").compute(f, verbose=0)
    rho_eq7 = signal_quality(model, None, r, e, patterns=eq7_only, layers=["h"],
                             estimators=("two_component",))
    assert rho_eq7["two_component"]["h"] == pytest.approx(rho["relu_eq7"]["h"], abs=1e-6)
    with pytest.raises(ValueError, match="relu_eq7"):
        signal_quality(model, None, r, e, patterns=eq7_only, layers=["h"], estimators=("relu",))
