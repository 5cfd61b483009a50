"""PatternNet and PatternAttribution end to end: the paper's toy example, the
linear closed form, fitting through the analyzer, and files across processes.
"""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import innv_pattern as ip
from innv_pattern.patterns import PatternComputer, Patterns

A_S, A_D, W = np.array([1.0, 0.0]), np.array([1.0, 1.0]), np.array([1.0, -1.0])


def _toy(n=4000, seed=0):
    """Section 2: x = a_s y + a_d eps; the model w = (1, -1) recovers y exactly."""
    rng = np.random.default_rng(seed)
    y, eps = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
    x = (y * A_S + eps * A_D).astype("float32")
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1, use_bias=False, name="w")(inp))
    model.get_layer("w").set_weights([W.reshape(2, 1).astype("float32")])
    return model, x, y[:, 0]


@pytest.mark.parametrize("pattern_type", ["linear", "relu"])
def test_toy_example(pattern_type):
    """PatternNet finds a_s, gradient-like methods w; PatternAttribution ignores the distractor."""
    model, x, y = _toy()
    net = ip.create_analyzer("pattern.net", model, pattern_type=pattern_type)
    net.fit(x, batch_size=500, verbose=0)
    probe = x[:50]
    signal = net.analyze(probe)
    # the signal is a_s * y: nothing on the distractor-only second input
    np.testing.assert_allclose(signal[:, 1], 0.0, atol=0.05)
    np.testing.assert_allclose(signal[:, 0], probe @ W, rtol=0.05, atol=0.05)
    for name in ("deconvnet", "guided_backprop"):
        out = ip.create_analyzer(name, model).analyze(probe)
        pos = probe @ W > 0  # guided/deconv rectify nothing here: a linear model
        np.testing.assert_allclose(out[pos], np.outer(probe @ W, W)[pos], rtol=1e-5, atol=1e-6)
    grad = ip.create_analyzer("gradient", model).analyze(probe)
    np.testing.assert_allclose(grad, np.tile(W, (50, 1)), rtol=1e-6)
    attribution = ip.create_analyzer("pattern.attribution", model, pattern_type=pattern_type,
                                     patterns=net.patterns).analyze(probe)
    np.testing.assert_allclose(attribution[:, 1], 0.0, atol=0.05)
    lrp = ip.create_analyzer("lrp.z", model).analyze(probe)
    np.testing.assert_allclose(lrp, probe * W, rtol=1e-4, atol=1e-5)  # LRP attributes to x2 too
    assert np.abs(lrp[:, 1]).mean() > 0.5


def test_linear_model_attribution_is_w_times_a_times_y():
    """For a linear model PatternAttribution = w (element-wise) a y (the paper, Sec. 4.3)."""
    rng = np.random.default_rng(4)
    mixing = rng.normal(size=(5, 5))
    x = (rng.normal(size=(3000, 5)) @ mixing + 0.5).astype("float32")
    inp = keras.Input((5,))
    model = keras.Model(inp, keras.layers.Dense(3, name="d")(inp))
    model.get_layer("d").bias.assign(np.array([0.3, -0.2, 0.1], "float32"))
    patterns = PatternComputer(model, "linear").compute(x, batch_size=256, verbose=0)
    a = np.asarray(patterns["d"], np.float64)
    kernel = model.get_layer("d").get_weights()[0].astype(np.float64)
    probe = x[:7]
    analyzer = ip.create_analyzer("pattern.attribution", model, pattern_type="linear",
                                  neuron_selection_mode="index", patterns=patterns)
    out = analyzer.analyze(probe, neuron_selection=1)
    value = model.predict(probe, verbose=0)[:, 1]
    np.testing.assert_allclose(out, np.outer(value, kernel[:, 1] * a[:, 1]), rtol=1e-4, atol=1e-5)
    # and the linear pattern is cov[x, y] / var[y], computed directly in float64
    xd = x.astype(np.float64)
    yd = xd @ kernel
    cov = (xd - xd.mean(0)).T @ (yd - yd.mean(0)) / len(xd)
    np.testing.assert_allclose(a, cov / yd.var(0), rtol=1e-5, atol=1e-7)


def test_wrong_pattern_type_is_refused(conv_model):
    x = np.random.default_rng(0).normal(size=(64, 9, 9, 2)).astype("float32")
    linear = PatternComputer(conv_model, "linear").compute(x, batch_size=32, verbose=0)
    with pytest.raises(ValueError, match="uses 'relu' patterns"):
        ip.create_analyzer("pattern.net", conv_model, patterns=linear)


@pytest.mark.slow
def test_round_trip_in_a_fresh_process(tmp_path, conv_model):
    """Fit, save model and patterns, load both in a new process: identical analyses."""
    x = np.random.default_rng(0).normal(size=(96, 9, 9, 2)).astype("float32")
    analyzer = ip.create_analyzer("pattern.attribution", conv_model)
    analyzer.fit(x, batch_size=32, verbose=0)
    analyzer.save_patterns(tmp_path / "p.h5")
    conv_model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x[:5])
    np.save(tmp_path / "here.npy", analyzer.analyze(x[:5]))
    script = textwrap.dedent(f"""
        import numpy as np, keras, innv_pattern as ip
        model = keras.models.load_model(r"{tmp_path / 'm.keras'}")
        a = ip.create_analyzer("pattern.attribution", model)
        a.load_patterns(r"{tmp_path / 'p.h5'}")
        np.save(r"{tmp_path / 'there.npy'}", a.analyze(np.load(r"{tmp_path / 'x.npy'}")))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "here.npy"), np.load(tmp_path / "there.npy"))
    loaded = Patterns.load(tmp_path / "p.h5", model=conv_model)
    assert loaded.samples_seen == 96
