"""Every analyzer on the networks people train.

Zoos of every supported layer in 1D, 2D and 3D (the gradient equals
tf.GradientTape through the model; every analyzer is finite), activations
beyond ReLU (warned once, by name), relevance conservation on a bias-free
residual network, patterns of a folded BatchNorm, nested and saved models, and
``keras.applications`` built with ``weights=None`` (slow).
"""

import contextlib
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import innv_pattern as ip
from innv_pattern.patterns import PatternComputer
from innv_pattern.rule_maps import FallbackWarning

L = keras.layers
FAST = {"smoothgrad": {"augment_by_n": 2}, "integrated_gradients": {"steps": 2}}
#: Analyzers whose rules assume ReLUs (they warn on other activations): those whose reverse
#: pass starts from the output's value, as each class declares.
RELU_THEORY = tuple(n for n, c in ip.analyzer_classes().items() if c.start_from_value)
#: One analyzer per distinct rule (the paper's ten and each LRP rule; the others combine these
#: rules: the alpha-beta variants, the presets, deep_taylor, lrp with its default composite).
ONE_PER_RULE = tuple(n for n, c in ip.analyzer_classes().items() if c.in_paper) + (
    "lrp.w_square", "lrp.flat", "lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0_IB", "lrp.z_plus",
    "lrp.z_plus_fast", "deep_taylor.bounded", "lrp.sequential_preset_b_flat")


def fitted_patterns(model, seed=0):
    """Patterns fitted on 16 samples of the model's input (the zoos' weights are random)."""
    return PatternComputer(model).compute(data(model, n=16, seed=seed + 100), batch_size=8,
                                          verbose=0)


def analyze(name, model, x, patterns=None, **kwargs):
    """``(analysis, fallback warnings)`` of analyzer ``name`` on ``x``."""
    options = dict(FAST.get(name, {}), **kwargs)
    if name.startswith("pattern."):
        options["patterns"] = patterns if patterns is not None else fitted_patterns(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ip.create_analyzer(name, model, **options).analyze(x)
    return result, [w for w in caught if issubclass(w.category, FallbackWarning)]


def tape_gradient(model, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reshape(model(x), (len(x), -1))
        picked = tf.reduce_max(y, axis=1)
    return tape.gradient(picked, x).numpy()


def data(model, n=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n,) + model.input_shape[1:]).astype("float32")


# --------------------------------------------------------------------------
# Zoos: every supported layer.
# --------------------------------------------------------------------------
def zoo_2d():
    """Preprocessing, folded and unfolded BatchNorm, merges, fan-out, SE gate, resampling."""
    inp = keras.Input((12, 12, 3))
    x = L.Rescaling(0.5, offset=0.1)(inp)
    x = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 0.5])(x)
    x = L.BatchNormalization()(L.Conv2D(6, 3, padding="same", use_bias=False)(x))
    h = L.ReLU()(x)
    a = L.DepthwiseConv2D(3, padding="same", activation="relu6")(h)
    b = L.LeakyReLU(0.1)(L.SeparableConv2D(6, 3, padding="same")(h))
    x = L.Add()([a, b, h])
    x = L.Average()([x, L.Subtract()([x, h * 2.0])])
    x = L.BatchNormalization()(L.Maximum()([x, a]))
    x = L.Cropping2D(2)(L.ZeroPadding2D(1)(x))
    x = L.UpSampling2D(2)(L.MaxPooling2D(2)(x))
    x = L.AveragePooling2D(2)(L.UpSampling2D(2, interpolation="bilinear")(x))
    x = L.Conv2D(4, 3, strides=2, padding="same")(L.Conv2DTranspose(4, 3, strides=2, padding="same")(x))
    x = L.Activation("swish")(x)
    gate = L.Reshape((1, 1, 4))(L.Dense(4, activation="sigmoid")(L.GlobalAveragePooling2D()(x)))
    x = L.SpatialDropout2D(0.3)(L.Multiply()([x, gate]))
    x = L.LayerNormalization()(x)
    pooled = L.Concatenate()([L.GlobalMaxPooling2D()(x), L.GlobalAveragePooling2D()(x)])
    x = L.Reshape((10, 10, 2))(L.Permute((3, 1, 2))(L.Conv2D(2, 1)(x)))
    x = L.Concatenate()([L.Flatten()(x), pooled])
    return keras.Model(inp, L.Dense(3)(L.Dropout(0.2)(x)))


def zoo_1d():
    """Causal, depthwise, separable and transposed 1D convolutions; smooth activations; keras.ops."""
    inp = keras.Input((16, 2))
    x = L.Conv1D(4, 3, padding="causal", activation="gelu")(inp)
    x = L.DepthwiseConv1D(3, padding="same", activation="elu")(x)
    x = L.SeparableConv1D(4, 3, padding="same", activation="tanh")(x)
    x = L.MaxPooling1D(2)(L.ZeroPadding1D(1)(L.Cropping1D(1)(x)))
    x = L.Conv1DTranspose(4, 3, strides=2, padding="same", activation="sigmoid")(x)
    x = L.AveragePooling1D(2)(L.UpSampling1D(2)(x))
    x = keras.ops.relu(L.Dense(5, activation="hard_sigmoid")(x) - 0.5)
    x = L.Concatenate()([L.GlobalMaxPooling1D()(x), keras.ops.mean(x, axis=1)])
    x = L.RepeatVector(2)(L.Dense(3, activation="softplus")(x))
    return keras.Model(inp, L.Dense(3)(L.Flatten()(x)))


def zoo_3d():
    """3D convolutions, pooling, padding, cropping, upsampling, BatchNorm."""
    inp = keras.Input((6, 6, 6, 1))
    x = L.BatchNormalization()(L.Conv3D(3, 2, padding="same")(inp))
    x = L.ReLU()(x)
    x = L.MaxPooling3D(2)(L.Cropping3D(1)(L.ZeroPadding3D(1)(x)))
    x = L.Conv3DTranspose(2, 2, strides=2, activation="relu")(x)
    x = L.AveragePooling3D(2)(L.UpSampling3D(2)(L.SpatialDropout3D(0.2)(x)))
    x = L.Concatenate()([L.GlobalAveragePooling3D()(x), L.GlobalMaxPooling3D()(x)])
    return keras.Model(inp, L.Dense(3)(x))


ZOOS = {"1d": zoo_1d, "2d": zoo_2d, "3d": zoo_3d}


@pytest.fixture(scope="module", params=list(ZOOS))
def zoo(request):
    keras.utils.set_random_seed(7)
    model = ZOOS[request.param]()
    rng = np.random.default_rng(7)
    for layer in model.layers:  # BatchNorm statistics and biases that are not the defaults
        for var in layer.non_trainable_weights + [getattr(layer, "bias", None)]:
            if var is not None and "variance" not in var.path and "count" not in var.path:
                var.assign(rng.normal(0, 0.3, var.shape).astype("float32"))
    return model


def test_gradient_through_every_layer_equals_tape(zoo):
    x = data(zoo, n=3)
    got, caught = analyze("gradient", zoo, x)
    np.testing.assert_allclose(got, tape_gradient(zoo, x), rtol=1e-4, atol=1e-5)
    assert not caught


@pytest.mark.parametrize("name", ip.list_analyzers())
def test_every_analyzer_is_finite_on_every_layer(zoo, name):
    x = data(zoo)
    got, _ = analyze(name, zoo, x)
    assert got.shape == x.shape and np.all(np.isfinite(got))


# --------------------------------------------------------------------------
# Activations.
# --------------------------------------------------------------------------
ACTIVATIONS = [L.ReLU(max_value=6.0), L.LeakyReLU(0.2), L.ELU(), L.PReLU(),
               L.Activation("swish"), L.Activation("gelu"), L.Activation("sigmoid"),
               L.Activation("tanh"), L.Activation("hard_sigmoid"), L.Activation("softplus"),
               L.Activation("selu"), L.Activation("mish")]


@pytest.fixture(scope="module")
def smooth_model():
    keras.utils.set_random_seed(8)
    inp = keras.Input((6,))
    x = inp
    for i, act in enumerate(ACTIVATIONS):
        x = act.__class__.from_config({**act.get_config(), "name": f"act{i}"})(L.Dense(6)(x))
    return keras.Model(inp, L.Dense(3)(x))


@pytest.mark.parametrize("name", ip.list_analyzers())
def test_smooth_activations_warn_once_naming_every_layer(smooth_model, name):
    x = data(smooth_model, n=3)
    got, caught = analyze(name, smooth_model, x)
    assert got.shape == x.shape and np.all(np.isfinite(got))
    if name not in RELU_THEORY:
        assert not caught
        return
    assert len(caught) == 1 and caught[0].filename == __file__  # points at the caller
    message = str(caught[0].message)
    assert all(f"'act{i}'" in message for i in range(len(ACTIVATIONS))), message


@pytest.mark.parametrize("name", RELU_THEORY)
def test_relu_networks_do_not_warn(name, request):
    model = request.getfixturevalue("conv_model")
    assert not analyze(name, model, data(model))[1]


@pytest.mark.parametrize("name, layer", [
    ("guided_backprop", L.ReLU(max_value=6.0)), ("deconvnet", L.ReLU(max_value=6.0)),
    ("guided_backprop", L.LeakyReLU(0.2)), ("deconvnet", L.LeakyReLU(0.2)),
])
def test_rectifiers_are_treated_as_relu(name, layer):
    """Guided: rectified signal times the derivative; DeConvNet: the rectified signal."""
    keras.utils.set_random_seed(9)
    inp = keras.Input((5,))
    pre_layer, out_layer = L.Dense(7, use_bias=False), L.Dense(3, use_bias=False)
    model = keras.Model(inp, out_layer(layer(pre_layer(inp))))
    x = data(model, n=4) * 4
    got, _ = analyze(name, model, x)
    w1, w2 = pre_layer.kernel.numpy(), out_layer.kernel.numpy()
    pre = x @ w1
    y = layer(pre).numpy() @ w2
    chosen = y.argmax(axis=1)
    g = w2[:, chosen].T * y[np.arange(len(x)), chosen][:, None]
    derivative = ((pre > 0) & (pre < 6)) if isinstance(layer, L.ReLU) else np.where(pre > 0, 1, 0.2)
    signal = np.maximum(g, 0) * (derivative if name == "guided_backprop" else 1)
    np.testing.assert_allclose(got, signal @ w1.T, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# Residual networks: conservation.
# --------------------------------------------------------------------------
def bias_free_residual_network():
    """Fan-out, Add, Subtract, Average, Concatenate, scaling, pooling, an SE gate; no bias."""
    conv = lambda n, k=3: L.Conv2D(n, k, padding="same", use_bias=False)  # noqa: E731
    inp = keras.Input((8, 8, 3))
    h = L.ReLU()(conv(4)(L.Rescaling(2.0)(inp)))
    r = L.ReLU()(conv(4)(h))
    x = L.Add()([h, conv(4)(r), r])
    x = L.Subtract()([x, L.ReLU()(conv(4, 1)(x)) * 0.5])
    x = L.Average()([x, L.ReLU()(conv(4)(x))])
    gate = L.Dense(4, activation="sigmoid")(L.GlobalAveragePooling2D()(x))
    x = L.Multiply()([x, L.Reshape((1, 1, 4))(gate)])
    x = L.Concatenate()([L.MaxPooling2D(2)(x), L.AveragePooling2D(2)(x)])
    x = L.ReLU()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(x))
    x = L.ReLU()(L.Dense(6, use_bias=False)(L.Flatten()(x)))
    return keras.Model(inp, L.Dense(3, use_bias=False)(x))


@pytest.mark.parametrize("mode", ["max_activation", "all"])
def test_lrp_z_conserves_relevance_on_bias_free_residual_network(mode):
    keras.utils.set_random_seed(10)
    model = bias_free_residual_network()
    x = np.abs(data(model, n=4))
    relevance, caught = analyze("lrp.z", model, x, neuron_selection_mode=mode)
    y = model(x).numpy()
    total = y.max(axis=1) if mode == "max_activation" else y.sum(axis=1)
    np.testing.assert_allclose(relevance.reshape(len(x), -1).sum(axis=1), total, rtol=1e-3)
    assert len(caught) == 1 and "multiply" in str(caught[0].message)  # the gate


# --------------------------------------------------------------------------
# Patterns of a folded BatchNorm.
# --------------------------------------------------------------------------
def _with_and_without_batchnorm(kernel_layer, shape):
    """A kernel layer + BatchNorm + ReLU network, and the same with the BN folded by hand."""
    keras.utils.set_random_seed(11)
    inp = keras.Input(shape)
    layer = kernel_layer.__class__.from_config({**kernel_layer.get_config(), "name": "kernel"})
    bn = L.BatchNormalization()
    head = L.Dense(2, name="head")
    model = keras.Model(inp, head(L.Flatten()(L.ReLU()(bn(layer(inp))))))
    rng = np.random.default_rng(11)
    for var in (bn.gamma, bn.beta, bn.moving_mean):
        var.assign(rng.normal(0, 1, var.shape).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.3, 3, bn.moving_variance.shape).astype("float32"))
    scale = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    folded = layer.__class__.from_config({**layer.get_config(), "use_bias": True})
    plain = keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(L.ReLU()(folded(inp)))))
    bias = layer.bias.numpy() if layer.use_bias else 0.0
    folded.set_weights([layer.kernel.numpy() * scale,
                        (bias - bn.moving_mean.numpy()) * scale + bn.beta.numpy()])
    plain.get_layer("head").set_weights(head.get_weights())
    return model, plain


@pytest.mark.parametrize("kernel_layer, shape", [
    (L.Dense(5), (4,)), (L.Conv2D(3, 3, use_bias=False), (6, 6, 2)),
], ids=["dense", "conv2d"])
def test_patterns_of_folded_batchnorm_equal_a_batchnorm_free_model(kernel_layer, shape):
    model, plain = _with_and_without_batchnorm(kernel_layer, shape)
    x = data(model, n=64, seed=12)
    np.testing.assert_allclose(model(x), plain(x), rtol=1e-4, atol=1e-5)
    fitted = PatternComputer(model, ("linear", "relu")).compute(x, batch_size=16, verbose=0)
    wanted = PatternComputer(plain, ("linear", "relu")).compute(x, batch_size=16, verbose=0)
    for kind in fitted.types:
        for name in ("kernel", "head"):
            np.testing.assert_allclose(fitted.for_type(kind)[name], wanted.for_type(kind)[name],
                                       rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------
# Nested and saved models.
# --------------------------------------------------------------------------
def test_application_nested_in_a_classifier_head():
    keras.utils.set_random_seed(13)
    base = keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25,
                                        input_shape=(32, 32, 3))
    model = keras.Sequential([keras.Input((32, 32, 3)), base, L.GlobalAveragePooling2D(),
                              L.Dense(4)])
    x = data(model)
    got, _ = analyze("gradient", model, x)
    np.testing.assert_allclose(got, tape_gradient(model, x), rtol=1e-4, atol=1e-6)
    relevance, caught = analyze("lrp.epsilon", model, x)
    assert np.all(np.isfinite(relevance)) and "conv_pw_13_relu" in str(caught[0].message)


def residual_batchnorm_network():
    """Conv-BN-ReLU, depthwise and separable branches, Add, an SE gate (no keras.ops calls:
    the legacy .h5 format cannot load those)."""
    inp = keras.Input((8, 8, 3))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(inp)))
    a = L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(h))
    x = L.Add()([h, a, L.SeparableConv2D(4, 3, padding="same", activation="relu")(h)])
    gate = L.Dense(4, activation="sigmoid")(L.GlobalAveragePooling2D()(x))
    x = L.Multiply()([x, L.Reshape((1, 1, 4))(gate)])
    return keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_models_loaded_from_files_give_the_same_analyses(tmp_path, suffix):
    keras.utils.set_random_seed(14)
    model = residual_batchnorm_network()
    path = str(tmp_path / f"model{suffix}")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = data(model)
    patterns = fitted_patterns(model)
    for name in ("gradient", "guided_backprop", "lrp.epsilon", "pattern.attribution",
                 "pattern.net"):
        np.testing.assert_allclose(analyze(name, loaded, x, patterns)[0],
                                   analyze(name, model, x, patterns)[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# keras.applications (weights=None, smallest input each allows).
# --------------------------------------------------------------------------
A = keras.applications
APPLICATIONS = {
    "VGG16": (A.VGG16, 32), "VGG19": (A.VGG19, 32), "ResNet50": (A.ResNet50, 32),
    "ResNet50V2": (A.ResNet50V2, 32), "MobileNet": (A.MobileNet, 32),
    "MobileNetV2": (A.MobileNetV2, 32), "DenseNet121": (A.DenseNet121, 32),
    "InceptionV3": (A.InceptionV3, 75), "Xception": (A.Xception, 71),
    "EfficientNetB0": (A.EfficientNetB0, 32), "ConvNeXtTiny": (A.ConvNeXtTiny, 32),
}
#: Networks of kernel layers, ReLUs, pooling, sums and BatchNorm only: no analyzer falls back.
RELU_NETWORKS = {"VGG16", "VGG19", "ResNet50", "ResNet50V2", "DenseNet121", "InceptionV3",
                 "Xception"}


@contextlib.contextmanager
def eagerly():
    """Runs eagerly: one pass over a large graph is faster than compiling it.

    Compiled analyses and fits are what the other tests check; the code is the same.
    """
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Even though the `tf.config.experimental_run_functions_eagerly")
@pytest.mark.parametrize("app", list(APPLICATIONS))
def test_every_analyzer_on_keras_applications(app):
    """Finite analyses of the input's shape; fallbacks warned exactly where expected, for one
    analyzer per distinct rule (``ONE_PER_RULE``; every analyzer costs twice the time).

    Both pattern methods run with patterns fitted on two random images (the
    networks are untrained): PatternNet's signal, rescaled at the cut tensors,
    no longer overflows float32 as the paper's scale did here.
    """
    factory, size = APPLICATIONS[app]
    keras.utils.set_random_seed(15)
    model = factory(weights=None, input_shape=(size, size, 3), classes=5)
    images = np.random.default_rng(15).uniform(0, 255, (3, size, size, 3)).astype("float32")
    problems = []
    with eagerly():
        fitted = PatternComputer(model).compute(images[1:], batch_size=2, verbose=0)
        for name in ONE_PER_RULE:
            got, caught = analyze(name, model, images[:1],
                                  fitted if name.startswith("pattern.") else None)
            if got.shape != images[:1].shape or not np.all(np.isfinite(got)):
                problems.append(f"{name}: shape {got.shape}, finite {np.all(np.isfinite(got))}")
            if bool(caught) != (name in RELU_THEORY and app not in RELU_NETWORKS):
                problems.append(f"{name}: {len(caught)} fallback warning(s)")
    assert not problems, problems
