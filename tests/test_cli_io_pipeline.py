"""The folder pipeline (``cli_io.load_image_folder``) gives exactly the images and the
preprocessing that the in-memory path gives (issue 17's benchmark compares the two).

Images in every mode a user has (gray, gray+alpha, RGB, RGBA; PNG and JPEG)
decode to what a float copy of the pixels, resized bilinearly, holds; the
preprocessing's matrix form is bit for bit the gather, multiply and add it
replaces, and equals Keras' own preprocessing to float32 rounding.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from innv_pattern.cli_io import (InputOptions, _per_channel_function, image_files,
                                 load_image_folder, load_images)

MODES = ("L", "LA", "RGB", "RGBA")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("modes")
    rng = np.random.default_rng(0)
    for i, mode in enumerate(MODES * 2):
        bands = len(mode)
        pixels = rng.integers(0, 256, (21, 34, bands), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)
        image.save(os.path.join(root, f"img_{i}_{mode}.png"))
        if mode in ("L", "RGB"):
            image.save(os.path.join(root, f"img_{i}_{mode}.jpg"), quality=90)
    return str(root)


def _reference(path: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """A float copy of the decoded pixels in the model's channels, resized bilinearly."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
    x = image.numpy().astype(np.float32)
    native = x.shape[-1]
    if channels == 1 and native >= 3:                   # luma as PIL's convert("L")
        color = tf.round(tf.reduce_sum(tf.constant(x[..., :3]) * [0.299, 0.587, 0.114], -1,
                                       keepdims=True))
    elif channels == 1:
        color = x[..., :1]
    else:
        color = np.repeat(x[..., :1], 3, -1) if native < 3 else x[..., :3]
    if channels == 4:
        alpha = x[..., -1:] if native % 2 == 0 else np.full_like(x[..., :1], 255.0)
        color = np.concatenate([color, alpha], -1)
    return tf.image.resize(np.asarray(color, np.float32), size).numpy()


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_every_image_mode_decodes_to_the_resized_float_pixels(folder, channels):
    files = image_files(folder)
    expected = np.stack([_reference(f, (16, 24), channels) for f in files])
    shape = (None, 16, 24, channels)
    np.testing.assert_array_equal(load_images(files, shape), expected)
    data = load_image_folder(folder, shape, InputOptions(), batch_size=3)
    assert data.element_spec.shape.as_list() == [None, 16, 24, channels]
    np.testing.assert_array_equal(np.concatenate(list(data.as_numpy_iterator())), expected)


@pytest.mark.parametrize("preprocess", ["vgg16", "caffe", "torch", "tf", "resnet_v2"])
def test_folder_preprocessing_is_the_gather_form_exactly_and_keras_to_rounding(folder,
                                                                               preprocess):
    options = InputOptions(preprocess=preprocess)
    fast = _per_channel_function(options, 3)
    assert fast is not options.apply, "the matrix form was not taken"
    x = np.random.default_rng(1).uniform(0, 255, (2, 7, 9, 3)).astype(np.float32)
    probes = np.concatenate([np.zeros((1, 3)), 100.0 * np.eye(3)]).astype(np.float32)
    out = np.asarray(options.apply(probes.reshape(-1, 1, 1, 3)), np.float64).reshape(-1, 3)
    matrix = (out[1:] - out[0]) / 100.0
    source = np.abs(matrix).argmax(0)
    scale = matrix[source, np.arange(3)].astype(np.float32)
    gathered = x[..., source] * scale + out[0].astype(np.float32)
    got = fast(x).numpy()
    np.testing.assert_array_equal(got, gathered)
    np.testing.assert_allclose(got, options.apply(x), rtol=1e-5, atol=1e-4)
    shape = (None, 16, 24, 3)
    data = load_image_folder(folder, shape, options, batch_size=4)
    on_array = options.apply(load_images(image_files(folder), shape))
    np.testing.assert_allclose(np.concatenate(list(data.as_numpy_iterator())), on_array,
                               rtol=1e-5, atol=1e-4)


def test_scale_and_offset_take_the_matrix_form_and_no_options_nothing():
    options = InputOptions(scale=2.0, offset=-1.0)
    fast = _per_channel_function(options, 1)
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1)
    np.testing.assert_array_equal(fast(x).numpy(), x * 2 - 1)
    nothing = InputOptions()
    assert _per_channel_function(nothing, 3).__self__ is nothing
