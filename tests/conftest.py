"""Shared test set-up: quiet TensorFlow, deterministic seeds, small models."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REFERENCES = Path(__file__).resolve().parents[1].parent / "shared" / "references" / "innvestigate-layer"


def randomize_biases(model: keras.Model, seed: int = 0) -> keras.Model:
    """Gives every bias non-zero values (a zero bias hides bias-handling bugs)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.3, layer.bias.shape).astype("float32"))
    return model


@pytest.fixture
def dense_model() -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(7, activation="relu"),
        keras.layers.Dense(4, activation="softmax"),
    ])
    return randomize_biases(model)


@pytest.fixture
def conv_model() -> keras.Model:
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((9, 9, 2)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(5, 2, strides=1, activation="relu"),
        keras.layers.AveragePooling2D(1),
        keras.layers.Flatten(),
        keras.layers.Dense(6, activation="relu"),
        keras.layers.Dense(3),
    ])
    return randomize_biases(model)
