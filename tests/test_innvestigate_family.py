"""Conformance with iNNvestigate 2.1.2 on multi-layer models: 21 analyzers, both selection modes.

``../shared/references/innvestigate-family/innvestigate-family.h5`` (not in this
repository; see its README) holds what iNNvestigate 2.1.2 computed for three
models with random weights and non-zero biases: a dense net, a small CNN, and a
VGG-like net with max and average pooling, a strided convolution, a separate
ReLU layer and dropout.  Each model is rebuilt here from the README's layer
list, its weights loaded, and its output checked against the stored one before
any analysis is compared.  Tolerance: iNNvestigate's own, 1e-2 relative to the
largest magnitude of the reference analysis.
"""

import h5py
import keras
import numpy as np
import pytest

import innv_pattern as ip
from conftest import REFERENCES

FAMILY = REFERENCES.parent / "innvestigate-family" / "innvestigate-family.h5"
ANALYZERS = [
    "gradient", "input_t_gradient", "deconvnet", "guided_backprop", "lrp.z", "lrp.epsilon",
    "lrp.w_square", "lrp.flat", "lrp.alpha_beta", "lrp.alpha_2_beta_1", "lrp.alpha_2_beta_1_IB",
    "lrp.alpha_1_beta_0", "lrp.alpha_1_beta_0_IB", "lrp.z_plus", "lrp.z_plus_fast",
    "lrp.sequential_preset_a", "lrp.sequential_preset_b", "lrp.sequential_preset_a_flat",
    "lrp.sequential_preset_b_flat", "deep_taylor", "deep_taylor.bounded",
]
GROUPS = ["dense", "cnn", "vggmini"]
RTOL = 1e-2

pytestmark = pytest.mark.skipif(
    not FAMILY.is_file(), reason=f"iNNvestigate family references not found at {FAMILY} "
                                 "(shared/ must sit beside the repository)")
L = keras.layers


def _dense() -> keras.Model:
    inp = keras.Input((16,))
    h = L.Dense(4, activation="relu")(L.Dense(8, activation="relu")(inp))
    return keras.Model(inp, L.Dense(3)(h))


def _cnn() -> keras.Model:
    inp = keras.Input((8, 8, 1))
    h = L.MaxPooling2D(2)(L.Conv2D(4, 3, padding="same", activation="relu")(inp))
    h = L.Flatten()(L.Conv2D(6, 3, padding="valid", activation="relu")(h))
    return keras.Model(inp, L.Dense(3)(L.Dense(5, activation="relu")(h)))


def _vggmini() -> keras.Model:
    inp = keras.Input((16, 16, 3))
    h = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = L.MaxPooling2D(2)(L.Conv2D(8, 3, padding="same", activation="relu")(h))
    h = L.AveragePooling2D(2)(L.Conv2D(16, 3, padding="same", activation="relu")(h))
    h = L.Activation("relu")(L.Conv2D(16, 3, strides=2, padding="same")(h))
    h = L.Dropout(0.5)(L.Dense(12, activation="relu")(L.Flatten()(h)))
    return keras.Model(inp, L.Dense(4)(h))


BUILDERS = {"dense": _dense, "cnn": _cnn, "vggmini": _vggmini}


@pytest.fixture(scope="module")
def references():
    """Per group: the model with the stored weights, the input, and the file's analyses."""
    found = {}
    with h5py.File(FAMILY, "r") as f:
        for group in GROUPS:
            g = f[group]
            model = BUILDERS[group]()
            model.set_weights([g["weights"][k][:] for k in sorted(g["weights"])])
            analyses = {name: ({k: v.item() for k, v in g[name].attrs.items()},
                               g[name]["max_activation"][:], g[name]["index1"][:])
                        for name in g if name not in ("weights", "input", "output")}
            found[group] = (model, g["input"][:], g["output"][:], analyses)
    return found


@pytest.mark.parametrize("group", GROUPS)
def test_models_rebuilt_exactly(references, group):
    """The rebuilt model computes the stored output: the analyses compare like with like."""
    model, x, output, analyses = references[group]
    np.testing.assert_allclose(model.predict(x, verbose=0), output, rtol=1e-5, atol=1e-5)
    assert sorted(analyses) == sorted(ANALYZERS), "the file holds other analyzers than listed"


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = np.abs(want).max()
    assert scale > 0, "a reference analysis of zeros would check nothing"
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / scale)


@pytest.mark.parametrize("name", ANALYZERS)
@pytest.mark.parametrize("group", GROUPS)
def test_matches_innvestigate(references, group, name):
    """Both selection modes: each sample's largest output, and output 1 of every sample."""
    model, x, _, analyses = references[group]
    kwargs, want_max, want_index1 = analyses[name]
    got_max = ip.create_analyzer(name, model, **kwargs).analyze(x)
    by_index = ip.create_analyzer(name, model, neuron_selection_mode="index", **kwargs)
    got_index1 = by_index.analyze(x, neuron_selection=1)
    errors = _relative_error(got_max, want_max), _relative_error(got_index1, want_index1)
    assert max(errors) <= RTOL, f"relative errors (max_activation, index1): {errors}"
