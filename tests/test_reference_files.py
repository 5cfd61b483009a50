"""Conformance with iNNvestigate 2.1.2 on its own single-layer reference files.

The files live in ../shared/references/innvestigate-layer/ (not in this
repository).  Tolerances are iNNvestigate's own: rtol 1e-2, atol 1e-8, and for
the random SmoothGrad atol 0.20, rtol 0.25.
"""

import h5py
import keras
import numpy as np
import pytest

import innv_pattern as ip
from conftest import REFERENCES

FILES = {
    "Gradient": "gradient", "InputTimesGradient": "input_t_gradient",
    "Deconvnet": "deconvnet", "GuidedBackprop": "guided_backprop", "LRPZ": "lrp.z",
    "LRPEpsilon": "lrp.epsilon", "SmoothGrad": "smoothgrad",
    "IntegratedGradients": "integrated_gradients",
}
LAYERS = {
    "Dense": lambda: keras.layers.Dense(5),
    "Dense_relu": lambda: keras.layers.Dense(5, activation="relu"),
    "Conv2D": lambda: keras.layers.Conv2D(5, (3, 3)),
    "Conv2D_relu": lambda: keras.layers.Conv2D(5, (3, 3), activation="relu"),
    "AveragePooling2D": lambda: keras.layers.AveragePooling2D((2, 2)),
    "MaxPooling2D": lambda: keras.layers.MaxPooling2D((2, 2)),
}

pytestmark = pytest.mark.skipif(
    not REFERENCES.is_dir(),
    reason=f"iNNvestigate reference files not found at {REFERENCES} (shared/ must sit beside the repo)")


@pytest.mark.parametrize("group", list(LAYERS))
@pytest.mark.parametrize("file", list(FILES))
def test_matches_innvestigate(file, group):
    with h5py.File(REFERENCES / f"{file}.hdf5", "r") as f:
        x = f["input"][:]
        weights = [f[group]["weights"][str(i)][:] for i in range(len(f[group]["weights"]))]
        want_out, want = f[group]["output"][:], f[group]["attribution"][:]
    inp = keras.Input((10, 10, 3))
    layer = LAYERS[group]()
    model = keras.Model(inp, keras.layers.Flatten()(layer(inp)))
    if weights:
        layer.set_weights(weights)
    np.testing.assert_allclose(model.predict(x, verbose=0), want_out, rtol=1e-5, atol=1e-5)
    got = ip.create_analyzer(FILES[file], model).analyze(x)
    tol = dict(rtol=0.25, atol=0.2) if file == "SmoothGrad" else dict(rtol=1e-2, atol=1e-8)
    assert np.allclose(got, want, **tol), f"max abs difference {np.abs(got - want).max()}"
