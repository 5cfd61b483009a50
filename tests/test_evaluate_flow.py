"""Relevance bookkeeping against independent facts: conservation, a float64 z-rule, w^T a = 1."""

import keras
import numpy as np
import pytest

import innv_pattern as ip
from innv_pattern.datasets import load_digits
from innv_pattern.evaluate import relevance_flow

L = keras.layers


def _dense_net(use_bias: bool, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((6,)),
        L.Dense(8, activation="relu", use_bias=use_bias, name="h1"),
        L.Dense(7, activation="relu", use_bias=use_bias, name="h2"),
        L.Dense(4, use_bias=use_bias, name="out"),
    ])
    if use_bias:
        rng = np.random.default_rng(seed)
        for layer in model.layers:
            layer.bias.assign(rng.normal(0, 0.3, layer.bias.shape).astype("float32"))
    return model


def _analysis_totals(analyzer, x, selection=None) -> np.ndarray:
    a = np.asarray(analyzer.analyze(x, neuron_selection=selection), np.float64)
    return a.reshape(len(a), -1).sum(axis=1)


def test_lrp_z_without_bias_conserves_at_every_op():
    """The z-rule without bias passes on exactly what it receives (sum_i x_i w_ij / z_j = 1).

    Every op's share must be 1 and the input total the explained logit; the
    op-by-op pass must also reproduce the analyzer's own compiled pass.  A
    share computed from the wrong tensors, a lost or doubled contribution, or
    a start other than the output's value breaks it.
    """
    model = _dense_net(use_bias=False, seed=0)
    x = np.random.default_rng(1).normal(size=(12, 6)).astype("float32")
    analyzer = ip.create_analyzer("lrp.z", model)
    flow = relevance_flow(analyzer, x)
    logits = np.asarray(model(x), np.float64)
    np.testing.assert_allclose(flow["output"], logits.max(axis=1), rtol=1e-6)
    assert [r["name"] for r in flow["ops"]] == [
        "out", "h2/activation", "h2", "h1/activation", "h1"]
    for record in flow["ops"]:
        np.testing.assert_allclose(record["share"], 1.0, atol=1e-5, err_msg=record["name"])
        if record["type"] == "kernel":
            np.testing.assert_array_equal(record["to_bias"], 0.0)
    np.testing.assert_allclose(flow["input"], flow["output"], rtol=1e-5)
    np.testing.assert_allclose(flow["input"], _analysis_totals(analyzer, x), rtol=1e-5)


def test_branches_count_only_the_relevance_through_them():
    """A tensor read by two ops: each op is credited only with what flows through it.

    In a bias-free residual net under LRP-z every op (the Dense on the branch,
    the Add, the ReLUs) conserves, so each share is 1.  Crediting an op with
    the total at its input tensor (both readers' relevance) would give the
    branch Dense a share above 1.
    """
    keras.utils.set_random_seed(3)
    inp = keras.Input((5,))
    h = L.Dense(6, activation="relu", use_bias=False, name="h")(inp)
    branch = L.Dense(6, use_bias=False, name="branch")(h)
    merged = L.Activation("relu", name="post")(L.Add(name="add")([h, branch]))
    model = keras.Model(inp, L.Dense(3, use_bias=False, name="out")(merged))
    x = np.random.default_rng(4).normal(size=(10, 5)).astype("float32")
    analyzer = ip.create_analyzer("lrp.z", model)
    flow = relevance_flow(analyzer, x)
    by_name = {r["name"]: r for r in flow["ops"]}
    assert {"h", "branch", "add", "out"} <= set(by_name)
    for record in flow["ops"]:
        np.testing.assert_allclose(record["share"], 1.0, atol=1e-5, err_msg=record["name"])
    # The branch gets a real part of what the Add receives, and both paths meet again at h.
    assert np.all(np.abs(by_name["branch"]["received"]) > 1e-3)
    np.testing.assert_allclose(by_name["h/activation"]["received"], by_name["add"]["received"],
                               rtol=1e-5)
    np.testing.assert_allclose(flow["input"], flow["output"], rtol=1e-5)
    np.testing.assert_allclose(flow["input"], _analysis_totals(analyzer, x), rtol=1e-5)


def _numpy_z_rule(model: keras.Model, x: np.ndarray, selection: np.ndarray,
                  epsilon: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Float64 LRP-z/epsilon by hand: per Dense, (sum R_in / sum R_out, bias share) per sample."""
    def divide(r: np.ndarray, z: np.ndarray) -> np.ndarray:
        den = z + epsilon * np.where(z >= 0, 1.0, -1.0)
        return np.divide(r, den, out=np.zeros_like(r), where=den != 0)

    weights = [[np.asarray(w, np.float64) for w in layer.get_weights()] for layer in model.layers]
    activations, a = [], x.astype(np.float64)
    for i, (w, b) in enumerate(weights):
        z = a @ w + b
        activations.append((a, z))
        a = np.maximum(z, 0) if i < len(weights) - 1 else z
    relevance = np.zeros_like(a)
    relevance[np.arange(len(a)), selection] = a[np.arange(len(a)), selection]
    result = {}
    for layer, (w, b), (a_in, z) in reversed(list(zip(model.layers, weights, activations))):
        s = divide(relevance, z)
        r_in = a_in * (s @ w.T)
        result[layer.name] = (r_in.sum(1) / relevance.sum(1), (s * b).sum(1))
        relevance = r_in   # a ReLU passes it: it is zero where the gate is closed
    return result


@pytest.mark.parametrize("name, epsilon", [("lrp.z", 0.0), ("lrp.epsilon", 0.5)])
def test_shares_with_biases_match_a_float64_z_rule(name, epsilon):
    """With biases, each layer's share is sum R_in / sum R_out of the z-rule, as numpy computes it.

    The reference is an independent float64 implementation of
    ``R_i = x_i sum_j w_ij R_j / (z_j + eps sign z_j)`` for a 2-hidden-layer
    net, with the explained class given by index.  A wrong denominator (bias
    or epsilon left out), a wrong neuron selection or a mis-attributed bias
    share makes the shares or ``to_bias`` differ.
    """
    model = _dense_net(use_bias=True, seed=5)
    x = np.random.default_rng(6).normal(size=(9, 6)).astype("float32")
    selection = np.arange(9, dtype=np.int64) % 4
    kwargs = {"epsilon": epsilon} if epsilon else {}
    analyzer = ip.create_analyzer(name, model, neuron_selection_mode="index", **kwargs)
    flow = relevance_flow(analyzer, x, neuron_selection=selection)
    expected = _numpy_z_rule(model, x, selection, epsilon)
    kernels = [r for r in flow["ops"] if r["type"] == "kernel"]
    assert [r["name"] for r in kernels] == ["out", "h2", "h1"]
    for record in kernels:
        share, to_bias = expected[record["name"]]
        np.testing.assert_allclose(record["share"], share, rtol=1e-4, atol=1e-5,
                                   err_msg=record["name"])
        np.testing.assert_allclose(record["to_bias"], to_bias, rtol=1e-4, atol=1e-5,
                                   err_msg=record["name"])
    shares = np.prod([r["share"] for r in flow["ops"]], axis=0)
    np.testing.assert_allclose(flow["input"], flow["output"] * shares, rtol=1e-4)
    np.testing.assert_allclose(flow["input"], _analysis_totals(analyzer, x, selection), rtol=1e-4)


@pytest.fixture(scope="module")
def trained_bias_free_cnn():
    """A bias-free ReLU CNN ('valid' convolutions, max pooling) trained on digits, with patterns."""
    x, y = load_digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, use_bias=False, activation="relu", name="conv1"),
        L.Conv2D(16, 3, use_bias=False, activation="relu", name="conv2"),
        L.MaxPooling2D(2, name="pool"),
        L.Flatten(name="flatten"),
        L.Dense(32, use_bias=False, activation="relu", name="dense1"),
        L.Dense(10, use_bias=False, name="dense2"),
    ])
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1500], y[:1500], epochs=4, batch_size=64, verbose=0)
    patterns = ip.PatternComputer(model).compute(x[:1500], verbose=0)
    return model, patterns, x[1500:1532]


def test_pattern_attribution_kernels_pass_on_all_but_degenerate_neurons(trained_bias_free_cnn):
    """PatternAttribution's kernel layers conserve relevance: patterns are normalized to w^T a = 1.

    Each neuron passes back ``R_j w_j * a_j``, which sums to ``R_j``; only
    neurons with a zero (degenerate) pattern keep theirs.  With 'valid'
    convolutions no kernel tap reads padding, so the kernel ops' share is 1 up
    to the degenerate neurons' part; ReLUs lose exactly what arrives at closed
    gates; max pooling and flattening pass everything; and in this chain the
    input total is the logit times the product of all shares.  A pattern
    normalized otherwise, a closed-gate sum taken at the wrong positions, or
    op totals that do not chain would fail.
    """
    model, patterns, x = trained_bias_free_cnn
    analyzer = ip.create_analyzer("pattern.attribution", model, patterns=patterns)
    flow = relevance_flow(analyzer, x)
    np.testing.assert_allclose(flow["output"], np.asarray(model(x), np.float64).max(1), rtol=1e-5)
    for record in flow["ops"]:
        name = record["name"]
        if record["type"] == "kernel":
            kept = (record["passed"] + record["to_degenerate"]) / record["received"]
            np.testing.assert_allclose(kept, 1.0, atol=1e-4, err_msg=name)
            if record["degenerate"] == 0:
                np.testing.assert_allclose(record["share"], 1.0, atol=1e-4, err_msg=name)
        elif record["type"] == "activation":
            np.testing.assert_allclose(record["passed"] + record["closed_gates"],
                                       record["received"], rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_allclose(record["share"], 1.0, atol=1e-6, err_msg=name)
    shares = np.prod([r["share"] for r in flow["ops"]], axis=0)
    np.testing.assert_allclose(flow["input"], flow["output"] * shares, rtol=1e-4)
    np.testing.assert_allclose(flow["input"], _analysis_totals(analyzer, x), rtol=1e-4)
    # The relevance lost at closed gates is what keeps the total below the logit.
    gates = sum(r["closed_gates"] for r in flow["ops"] if r["closed_gates"] is not None)
    assert np.all(gates != 0)


def test_refuses_analyzers_that_do_not_propagate_relevance(dense_model):
    """Gradient-family analyzers start from 1, so their totals are no relevance: a clear error.

    A pattern analyzer without patterns is refused before any work, as ``analyze`` does.
    """
    x = np.ones((2, 6), "float32")
    for name in ("gradient", "input_t_gradient", "integrated_gradients"):
        with pytest.raises(ValueError, match=f"'{name}' starts its reverse pass from 1"):
            relevance_flow(ip.create_analyzer(name, dense_model), x)
    with pytest.raises(ValueError, match="has no patterns yet"):
        relevance_flow(ip.create_analyzer("pattern.attribution", dense_model), x)
