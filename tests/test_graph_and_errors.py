"""Graph walking on real model shapes, the untouched-model guarantee, and errors.

Gradients through functional, nested, shared-layer and multi-input models are
compared with tf.GradientTape on the original model (an independent path
through Keras' own call).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import innv_pattern as ip
from innv_pattern.graph import Graph


def _tape_gradient(model, xs, index):
    xs = [tf.constant(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = model(xs if len(xs) > 1 else xs[0])
        picked = tf.gather(y, index, axis=1, batch_dims=1)
    return [g.numpy() for g in tape.gradient(picked, xs)]


def _functional_zoo():
    keras.utils.set_random_seed(5)
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(6)], name="inner")
    a, b = keras.Input((6,)), keras.Input((6,))
    shared = keras.layers.Dense(6, activation="relu", name="shared")
    ha, hb = shared(a), shared(b)
    merged = keras.layers.Add()([inner(ha), inner(hb)])
    cat = keras.layers.Concatenate()([merged, ha])
    out = keras.layers.Dense(3)(keras.layers.Dropout(0.5)(cat))
    return keras.Model([a, b], out)


def test_nested_shared_multi_input_gradient_equals_tape():
    model = _functional_zoo()
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(4, 6)).astype("float32") for _ in range(2)]
    index = np.array([0, 2, 1, 1])
    got = ip.create_analyzer("gradient", model, neuron_selection_mode="index").analyze(
        xs, neuron_selection=index)
    for g, w in zip(got, _tape_gradient(model, xs, index)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_nested_model_called_twice_gets_distinct_nodes():
    graph = Graph.from_model(_functional_zoo())
    names = [n.name for n in graph.nodes]
    assert len(set(names)) == len(names), names
    keys = [k for n in graph.nodes for k in n.outputs]
    assert len(keys) == len(set(keys)), "an inlined nested model reused tensor keys"


def test_lrp_on_residual_add_conserves_without_bias():
    keras.utils.set_random_seed(3)
    inp = keras.Input((5,))
    h = keras.layers.Dense(5, activation="relu", use_bias=False)(inp)
    r = keras.layers.Dense(5, use_bias=False)(h)
    out = keras.layers.Dense(2, use_bias=False)(keras.layers.Add()([h, r]))
    model = keras.Model(inp, out)
    x = np.abs(np.random.default_rng(1).normal(size=(6, 5))).astype("float32")
    rel = ip.create_analyzer("lrp.z", model).analyze(x)
    np.testing.assert_allclose(rel.sum(axis=1), model.predict(x, verbose=0).max(axis=1), rtol=1e-4)


@pytest.mark.parametrize("name", ip.list_analyzers())
def test_model_untouched(name, conv_model):
    """Weights, fused activations and outputs are the same after analysis."""
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 2)).astype("float32")
    before = [w.copy() for w in conv_model.get_weights()]
    acts = [getattr(l, "activation", None) for l in conv_model.layers]
    out = conv_model.predict(x, verbose=0)
    kwargs = {}
    if name.startswith("pattern."):
        from innv_pattern.canonize import canonize
        kwargs["patterns"] = {op.name: np.ones(op.kernel_shape, "float32")
                              for op in canonize(conv_model).kernel_ops}
    if name in ("smoothgrad", "integrated_gradients"):
        kwargs["augment_by_n" if name == "smoothgrad" else "steps"] = 3
    ip.create_analyzer(name, conv_model, **kwargs).analyze(x)
    for a, b in zip(before, conv_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert acts == [getattr(l, "activation", None) for l in conv_model.layers]
    np.testing.assert_array_equal(out, conv_model.predict(x, verbose=0))


def test_unsupported_layers_are_all_named():
    inp = keras.Input((4, 3))
    x = keras.layers.LSTM(3, return_sequences=True, name="my_lstm")(inp)
    x = keras.layers.Multiply(name="my_product")([x, x])  # a product of signals, not a gate
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError) as err:
        ip.create_analyzer("lrp.z", model)
    assert "'my_lstm' (LSTM)" in str(err.value) and "'my_product' (Multiply)" in str(err.value)
    assert "Supported" in str(err.value)
    # the gradient family accepts any differentiable layer
    ip.create_analyzer("gradient", model).analyze(np.ones((1, 4, 3), "float32"))


@pytest.mark.parametrize("bad, message", [
    (np.ones((2, 9, 9), "float32"), "shape"),
    (np.ones((2, 9, 8, 2), "float32"), "shape"),
    (np.full((2, 9, 9, 2), np.nan, "float32"), "NaN"),
    (np.array([["a"]]), "numeric"),
    (np.ones((0, 9, 9, 2), "float32"), "empty"),
])
def test_bad_input_is_a_clear_error(conv_model, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ip.create_analyzer("gradient", conv_model).analyze(bad)


def test_selection_errors(conv_model):
    x = np.ones((2, 9, 9, 2), "float32")
    analyzer = ip.create_analyzer("gradient", conv_model, neuron_selection_mode="index")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        analyzer.analyze(x, neuron_selection=3)
    with pytest.raises(ValueError, match="one per sample"):
        analyzer.analyze(x, neuron_selection=[0, 1, 2])
    with pytest.raises(ValueError, match="needs"):
        analyzer.analyze(x)
    with pytest.raises(ValueError, match="only used"):
        ip.create_analyzer("gradient", conv_model).analyze(x, neuron_selection=1)
    with pytest.raises(ValueError, match="Accepted names"):
        ip.create_analyzer("lrp.gamma", conv_model)
    with pytest.raises(ValueError, match="neuron_selection_mode"):
        ip.create_analyzer("gradient", conv_model, neuron_selection_mode="top")


def test_pattern_analyzer_without_patterns_says_how(conv_model):
    analyzer = ip.create_analyzer("pattern.net", conv_model)
    with pytest.raises(ValueError, match="fit"):
        analyzer.analyze(np.ones((1, 9, 9, 2), "float32"))
    with pytest.raises(ValueError, match="missing"):
        ip.create_analyzer("pattern.net", conv_model, patterns={"nope": np.ones(3)})


def test_batch_size_chunks_match_whole_batch(conv_model):
    x = np.random.default_rng(2).normal(size=(7, 9, 9, 2)).astype("float32")
    analyzer = ip.create_analyzer("lrp.epsilon", conv_model)
    np.testing.assert_allclose(analyzer.analyze(x, batch_size=3), analyzer.analyze(x), rtol=1e-5, atol=1e-6)


def test_unbuilt_sequential_is_a_clear_error():
    with pytest.raises(ValueError, match="no defined input shape"):
        ip.create_analyzer("gradient", keras.Sequential([keras.layers.Dense(2)]))
