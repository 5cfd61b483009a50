"""How the command line reads models and inputs as researchers have them: .hdf5 model
files, keras.applications preprocessing, an offset next to the scale, models of any input
size, and ``python -m innv_pattern``.

The model takes RGB images of any size (convolutions and global pooling, as
``include_top=False`` networks do) and is trained briefly on sklearn's digits at 16x16.
"""

import os
import shutil
import subprocess
import sys
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

from innv_pattern.cli import main
from innv_pattern.cli_io import InputOptions, UserError, image_files
from innv_pattern.datasets import load_digits


@pytest.fixture(scope="module")
def any_size(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("any_size")
    x, y = load_digits(size=16, channels=3)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((None, None, 3)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, name="logits"),
    ], name="any_size")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x * 2 - 1, y, epochs=3, batch_size=64, verbose=0)    # a [-1, 1] model
    folder = root / "images"
    for i, image in enumerate(x[:6]):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * 255).astype("uint8")
        Image.fromarray(pixels).save(sub / f"img_{i}.png")
    model.save(root / "model.h5")
    shutil.copy(root / "model.h5", root / "model.hdf5")             # the same file, renamed
    pixels = np.stack([np.asarray(Image.open(f), np.float32) for f in image_files(str(folder))])
    np.save(root / "pixels.npy", pixels)
    np.save(root / "by_hand.npy", pixels / 127.5 - 1)                 # what the model takes
    return {"root": root, "model": model, "folder": str(folder), "pixels": pixels,
            "hdf5": str(root / "model.hdf5"), "npy": str(root / "pixels.npy"),
            "by_hand": str(root / "by_hand.npy")}


def _explain(any_size: dict[str, Any], name: str, *options: str, source: str = "folder") -> Any:
    out = str(any_size["root"] / name)
    assert main(["explain", "--model", any_size["hdf5"], "--method", "gradient", "--input",
                 any_size[source], "--out", out, *options]) == 0
    return np.load(out + ".npy")


def test_preprocess_offset_and_size_give_what_the_model_was_trained_on(any_size, capsys):
    """0-255 PNGs of any size: --size picks 16x16; --preprocess tf, --scale 2/255 --offset -1
    and the same pixels scaled by hand in a .npy all explain the same [-1, 1] inputs."""
    by_mode = _explain(any_size, "tf", "--size", "16x16", "--preprocess", "tf")
    by_offset = _explain(any_size, "offset", "--size", "16", "--scale", "2/255", "--offset", "-1")
    expected = keras.ops.convert_to_numpy(_gradient(any_size["model"],
                                                    np.load(any_size["by_hand"])))
    assert by_mode.shape == (6, 16, 16, 3)
    np.testing.assert_allclose(by_mode, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(by_offset, expected, rtol=1e-4, atol=1e-6)
    on_array = _explain(any_size, "array", "--preprocess", "tf", source="npy")
    np.testing.assert_allclose(on_array, expected, rtol=1e-4, atol=1e-6)


def test_fit_on_a_folder_with_preprocessing_equals_the_fit_on_the_array(any_size, capsys):
    """The folder pipeline (tf.data, parallel decoding, options per batch, --skip) fits the
    same patterns as the hand-preprocessed array, from an .hdf5 model file."""
    from innv_pattern.patterns import Patterns

    root = any_size["root"]
    assert main(["fit", "--model", any_size["hdf5"], "--data", any_size["folder"], "--size",
                 "16x16", "--preprocess", "tf", "--batch-size", "2", "--skip", "1", "--out",
                 str(root / "folder.h5")]) == 0
    np.save(root / "tail.npy", np.load(any_size["by_hand"])[1:])
    assert main(["fit", "--model", any_size["hdf5"], "--data", str(root / "tail.npy"), "--out",
                 str(root / "array.h5")]) == 0
    assert "(5 samples)" in capsys.readouterr().out
    folder, array = Patterns.load(root / "folder.h5"), Patterns.load(root / "array.h5")
    for name in array:
        np.testing.assert_allclose(folder[name], array[name], rtol=1e-4, atol=1e-6)


def _gradient(model: keras.Model, x: np.ndarray) -> Any:
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x)
        selected = tf.reduce_sum(tf.reduce_max(out, axis=1))
    return tape.gradient(selected, x)


def test_images_for_a_model_of_any_size_need_size(any_size, capsys):
    argv = ["explain", "--model", any_size["hdf5"], "--method", "gradient", "--input",
            any_size["folder"], "--out", str(any_size["root"] / "never")]
    assert main(argv) == 1
    assert "pass --size HEIGHTxWIDTH (e.g. --size 224x224)" in capsys.readouterr().err
    fixed = any_size["root"] / "fixed.keras"
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
                     ).save(fixed)
    argv[2] = str(fixed)
    assert main([*argv, "--size", "16x16"]) == 1
    assert "--size 16x16 does not fit the model, which takes images of (8, 8)" in \
        capsys.readouterr().err


def test_keras_applications_preprocessing_by_module_name():
    """'vgg16' is keras.applications.vgg16.preprocess_input (caffe: BGR, mean-subtracted);
    the input array, which may be a read-only memory map, is left untouched."""
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    frozen = x.copy()
    frozen.flags.writeable = False
    got = InputOptions(preprocess="vgg16").apply(frozen)
    expected = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got, InputOptions(preprocess="caffe").apply(x), rtol=1e-6)
    np.testing.assert_array_equal(frozen, x)
    with pytest.raises(UserError, match="--preprocess must be caffe, tf, torch or a "
                       "keras.applications module .*vgg16.*; received 'vgg17'"):
        InputOptions(preprocess="vgg17")


@pytest.mark.parametrize("argv, expected", [
    (["--offset", "one"], "--offset must be a number or a fraction"),
    (["--size", "224by224"], "--size must be HEIGHTxWIDTH in pixels"),
])
def test_bad_option_values_are_usage_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--model", "m.keras", "--method", "gradient", "--input", "x.npy",
              "--out", "o", *argv])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_an_unknown_preprocessing_is_one_line(any_size, capsys):
    assert main(["explain", "--model", any_size["hdf5"], "--method", "gradient", "--input",
                 any_size["npy"], "--out", str(any_size["root"] / "never"), "--preprocess",
                 "nope"]) == 1
    err = capsys.readouterr().err
    assert "innv-pattern: error: --preprocess must be caffe, tf, torch" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_python_dash_m_and_lazy_subpackages():
    """``python -m innv_pattern`` is the command; ``ip.evaluate``, ``ip.viz`` and
    ``ip.datasets`` are attributes of the package without importing them first."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-m", "innv_pattern", "--help"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0 and "fit" in run.stdout and "evaluate" in run.stdout
    code = ("import innv_pattern as ip; print(ip.evaluate.signal_quality.__name__, "
            "ip.viz.__name__, ip.datasets.load_digits.__name__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["signal_quality", "innv_pattern.viz", "load_digits"]


def test_the_explain_figure_shows_the_images_before_preprocessing(any_size, monkeypatch):
    """keras.applications preprocessing ('caffe': BGR, means subtracted) is what the model
    reads, not a picture: the figure's input column gets the pixels as read, scaled only."""
    import innv_pattern.cli as cli

    drawn = {}
    real = cli._explain_figure

    def spy(x, analysis, method, labels):
        drawn["x"] = x
        return real(x, analysis, method, labels)

    monkeypatch.setattr(cli, "_explain_figure", spy)
    for source in ("folder", "npy"):
        _explain(any_size, f"caffe_{source}", "--size", "16x16", "--scale", "1/255",
                 "--preprocess", "caffe", source=source)
        np.testing.assert_allclose(drawn["x"], any_size["pixels"] / 255, atol=1e-6,
                                   err_msg=source)
