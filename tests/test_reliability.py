"""Reliability of the analyzers: concurrent use and random models (hypothesis).

The fuzz test builds random stacks of supported layers with random shapes and
weights, fits their patterns on random data, and checks that every analyzer
returns finite values of the input's shape; a failure here is a crash or a NaN
a user could hit.
"""

from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import innv_pattern as ip
from innv_pattern.canonize import canonize

FAST_OPTIONS = {"smoothgrad": {"augment_by_n": 2}, "integrated_gradients": {"steps": 2}}


def _options(name, model):
    kwargs = dict(FAST_OPTIONS.get(name, {}))
    if name.startswith("pattern."):
        rng = np.random.default_rng(0)
        kwargs["patterns"] = {op.pattern_key: rng.normal(size=op.kernel_shape).astype("float32")
                              for op in canonize(model).kernel_ops}
    return kwargs


@pytest.mark.parametrize("name", ["lrp.epsilon", "pattern.attribution"])
def test_threads_give_sequential_results(name, conv_model):
    """One analyzer used from four threads at once equals sequential use."""
    analyzer = ip.create_analyzer(name, conv_model, **_options(name, conv_model))
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(3, 9, 9, 2)).astype("float32") for _ in range(8)]
    sequential = [analyzer.analyze(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(analyzer.analyze, batches))
    for s, c in zip(sequential, concurrent):
        np.testing.assert_array_equal(s, c)


def _layer(kind: str, rng: np.random.Generator, image: bool) -> keras.layers.Layer:
    act = str(rng.choice(["relu", "linear"]))
    if kind == "dense":
        return keras.layers.Dense(int(rng.integers(1, 6)), activation=act)
    if kind == "conv":
        return keras.layers.Conv2D(int(rng.integers(1, 4)), int(rng.integers(1, 3)),
                                   strides=int(rng.integers(1, 3)),
                                   padding=str(rng.choice(["same", "valid"])), activation=act)
    return {
        "max": lambda: keras.layers.MaxPooling2D(2, padding="same"),
        "avg": lambda: keras.layers.AveragePooling2D(2, padding="same"),
        "pad": lambda: keras.layers.ZeroPadding2D(1),
        "drop": lambda: keras.layers.Dropout(0.3),
        "relu": lambda: keras.layers.ReLU(),
        "bn": lambda: keras.layers.BatchNormalization(),
    }[kind]()


@settings(max_examples=30, deadline=None, derandomize=True,  # the same 30 models in every run
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31 - 1),
       kinds=st.lists(st.sampled_from(["conv", "max", "avg", "pad", "drop", "relu", "bn"]),
                      max_size=4),
       head=st.lists(st.sampled_from(["dense", "relu", "drop"]), min_size=1, max_size=3))
def test_random_models_give_finite_analyses(seed, kinds, head):
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, int(rng.integers(1, 3))))
    x = inp
    for kind in kinds:
        x = _layer(kind, rng, True)(x)
    x = keras.layers.Flatten()(x)
    for kind in head:
        x = _layer(kind, rng, False)(x)
    model = keras.Model(inp, keras.layers.Dense(3)(x))
    for layer in model.layers:  # trained-looking BatchNormalization statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_variance.shape
            layer.moving_variance.assign(rng.uniform(0.1, 3.0, size).astype("float32"))
            layer.moving_mean.assign(rng.normal(size=size).astype("float32"))
    scale = rng.uniform(0.1, 10)
    data = rng.normal(size=(2,) + model.input_shape[1:]).astype("float32") * scale
    fit = rng.normal(size=(32,) + model.input_shape[1:]).astype("float32") * scale
    patterns = ip.PatternComputer(model).compute(fit, batch_size=16, verbose=0)
    for name in ip.list_analyzers():
        kwargs = dict(FAST_OPTIONS.get(name, {}))
        # random patterns (any values), then the patterns fitted on the data
        runs = [_options(name, model), {**kwargs, "patterns": patterns}] if name.startswith(
            "pattern.") else [kwargs]
        for options in runs:
            out = ip.create_analyzer(name, model, **options).analyze(data)
            assert out.shape == data.shape, name
            assert np.all(np.isfinite(out)), f"{name} gave non-finite values"


def test_overflowing_analysis_is_a_clear_error_not_nan():
    """A reverse pass that overflows float32 is refused, naming the samples, not returned as inf.

    PatternNet multiplies the signal by each layer's patterns; patterns 1e6 times the kernel
    over 8 layers give ~1e48 for a unit input, beyond float32 (3.4e38).  The gradient of the
    same model is finite and still returned.
    """
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    x = inp
    for _ in range(7):
        x = keras.layers.Dense(8, activation="relu")(x)
    model = keras.Model(inp, keras.layers.Dense(3)(x))
    for layer in model.layers[1:]:  # positive weights: every unit active, nothing cancels
        layer.kernel.assign(np.abs(layer.kernel.numpy()) + 0.1)
    patterns = {op.pattern_key: 1e6 * op.get_kernel().numpy() for op in canonize(model).kernel_ops}
    data = np.ones((3, 8), "float32")
    data[1] = 0.0  # an all-zero sample: its signal is 0, finite
    gradient = ip.create_analyzer("gradient", model).analyze(data)
    assert np.all(np.isfinite(gradient))
    # The paper's scale; the default rescaling (tested elsewhere) does not overflow here.
    analyzer = ip.create_analyzer("pattern.net", model, patterns=patterns, normalize=False)
    with pytest.raises(ValueError, match=r"'pattern.net' overflowed float32 for 2 of 3 "
                                         r"sample\(s\) \(0, 2\)"):
        analyzer.analyze(data)
    np.testing.assert_array_equal(analyzer.analyze(data[1:2]), np.zeros((1, 8)))
