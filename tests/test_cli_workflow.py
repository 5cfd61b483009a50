"""The command line on a small trained digits CNN (8x8, as sklearn ships them): what a
researcher runs, and the silent wrong results issue 17 found.

A module fixture trains the CNN (~90% test accuracy, a few seconds), saves it with its
fitting and held-out data, and fits its patterns through the command line. The tests
run :func:`innv_pattern.cli.main` in-process (the console script's code).
"""

import csv
import json
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

from innv_pattern.cli import main
from innv_pattern.datasets import load_digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("digits")
    x, y = load_digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(10, activation="softmax", name="logits"),
    ], name="digits")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1200], y[:1200], epochs=15, batch_size=32, verbose=0)
    accuracy = model.evaluate(x[1200:], y[1200:], verbose=0)[1]
    assert accuracy > 0.85, accuracy                     # a trained model, not a random one
    paths = {name: str(root / name) for name in ("model.keras", "fit.npy", "test.npy",
                                                  "patterns.h5")}
    model.save(paths["model.keras"])
    np.save(paths["fit.npy"], x[:900])
    np.save(paths["test.npy"], x[1200:1328])
    assert main(["fit", "--model", paths["model.keras"], "--data", paths["fit.npy"], "--out",
                 paths["patterns.h5"], "--pattern-type", "linear+relu"]) == 0
    return {**paths, "model": model, "x": x, "root": root}


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("innv-pattern: warning: ")]


def _evaluate(digits: dict[str, Any], data: str, out: Path, *extra: str) -> dict[str, Any]:
    assert main(["evaluate", "--model", digits["model.keras"], "--patterns",
                 digits["patterns.h5"], "--data", digits[data], "--out", str(out), "--samples",
                 "32", "--methods", "gradient", *extra]) == 0
    return json.loads((out / "evaluation.json").read_text())


def test_evaluate_on_8x8_images_degrades_by_default(digits, tmp_path, capsys):
    """8x8 images once got side/8 = 1-pixel patches: each replaced by its own mean, every
    AOPC 0.000, no warning. The default is now 2x2, and the random order visibly degrades."""
    report = _evaluate(digits, "test.npy", tmp_path / "held_out", "--layers", "hidden")
    captured = capsys.readouterr()
    assert report["degradation"]["patch_size"] == 2 and "patches of 2x2" in captured.out
    aopc = report["degradation"]["aopc"]
    assert aopc["random"] > 0.05 and aopc["gradient"] > aopc["random"], aopc
    assert set(report["signal_quality"]["linear"]) == {"hidden"}          # --layers
    assert _warnings(captured.err) == []              # held-out data, moving curves: all quiet


@pytest.mark.slow
def test_evaluate_warns_about_flat_curves_and_rho_on_the_fitting_data(digits, tmp_path, capsys):
    """One-pixel patches, asked for, and rho measured on the data the patterns were fitted on
    (the dense layers' rho was 1.1-1.4 there, silently): both are warned about."""
    report = _evaluate(digits, "fit.npy", tmp_path / "on_fit_data", "--patch-size", "1")
    warned = " | ".join(_warnings(capsys.readouterr().err))
    assert report["degradation"]["aopc"]["random"] == 0.0
    assert "degradation curve does not move" in warned and "patch_size=2 or more" in warned
    rho = report["signal_quality"]["linear"]["hidden"]
    assert rho > 1.02 and "rho above 1 (linear 'hidden'" in warned, (rho, warned)
    assert "data the patterns were not fitted on" in warned


def _logits(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The pre-softmax outputs, from the last Dense layer's weights (independent of the CLI)."""
    hidden = keras.Model(model.inputs, model.layers[-2].output).predict(x, verbose=0)
    kernel, bias = model.layers[-1].get_weights()
    return hidden @ kernel + bias


def test_explain_labels_rows_with_the_explained_output_and_its_pre_softmax_value(
        digits, tmp_path, capsys, monkeypatch):
    """--neuron 3 once labelled rows with the predicted class and its softmax probability."""
    from innv_pattern import viz

    shown: dict[str, Any] = {}
    original = viz.plot_grid

    def capture(*args: Any, **kwargs: Any) -> Any:
        shown["labels"] = kwargs["row_labels"]
        return original(*args, **kwargs)

    monkeypatch.setattr(viz, "plot_grid", capture)
    x = np.load(digits["test.npy"])[:8]
    assert main(["explain", "--model", digits["model.keras"], "--method", "gradient", "--input",
                 digits["test.npy"], "--neuron", "3", "--out", str(tmp_path / "n3")]) == 0
    assert "the explained output (output 3) and its value before the final softmax" in \
        capsys.readouterr().out
    logits = _logits(digits["model"], x)
    assert (logits.argmax(1) != 3).sum() >= 4           # most rows predict another class
    for label, row in zip(shown["labels"], logits):
        assert label.startswith("output 3 (pre-softmax ")
        assert float(label.split()[-1].rstrip(")")) == pytest.approx(row[3], rel=2e-3, abs=2e-3)


def test_folder_rows_follow_natural_order_and_are_written_down(digits, tmp_path, capsys):
    """digit_0, digit_1, ..., digit_10, digit_11 (not digit_0, digit_1, digit_10, digit_11,
    digit_2): OUT.files.csv names each row's file, and row k is file k's explanation. Images
    are 0-255 while the patterns were fitted on [0, 1]: a warning says to pass --scale 1/255."""
    folder = tmp_path / "images"
    folder.mkdir()
    x = digits["x"][:12]
    for i, image in enumerate(x):
        Image.fromarray(np.round(image[..., 0] * 255).astype("uint8")).save(
            folder / f"digit_{i}.png")
    base = ["explain", "--model", digits["model.keras"], "--method", "pattern.attribution",
            "--patterns", digits["patterns.h5"]]
    assert main([*base, "--input", str(folder), "--out", str(tmp_path / "raw")]) == 0
    warned = " | ".join(_warnings(capsys.readouterr().err))
    assert "look" in warned and "larger" in warned and "pass --scale 1/255" in warned, warned
    assert main([*base, "--input", str(folder), "--scale", "1/255", "--out",
                 str(tmp_path / "all")]) == 0
    assert _warnings(capsys.readouterr().err) == []
    with open(tmp_path / "all.files.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["row", "file"]
    assert [os.path.basename(r[1]) for r in rows[1:]] == [f"digit_{i}.png" for i in range(12)]
    assert main([*base, "--input", str(folder / "digit_10.png"), "--scale", "1/255", "--out",
                 str(tmp_path / "ten")]) == 0
    together, alone = np.load(tmp_path / "all.npy"), np.load(tmp_path / "ten.npy")
    np.testing.assert_allclose(together[10], alone[0], rtol=1e-5, atol=1e-7)
    assert not np.allclose(together[2], alone[0])


def test_patterns_for_a_method_that_needs_none_are_noted_not_refused(digits, tmp_path, capsys):
    assert main(["explain", "--model", digits["model.keras"], "--method", "gradient", "--input",
                 digits["test.npy"], "--patterns", digits["patterns.h5"], "--out",
                 str(tmp_path / "g")]) == 0
    assert "'gradient' does not use patterns" in capsys.readouterr().out


def test_changed_weights_are_refused_unless_allowed(digits, tmp_path, capsys):
    """The refusal names the command-line option (not the API's keyword); passing it works."""
    changed = keras.models.clone_model(digits["model"])
    changed.set_weights([w * 1.01 for w in digits["model"].get_weights()])
    path = str(tmp_path / "changed.keras")
    changed.save(path)
    argv = ["explain", "--model", path, "--method", "pattern.net", "--patterns",
            digits["patterns.h5"], "--input", digits["test.npy"], "--out", str(tmp_path / "c")]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "changed since the patterns were fitted" in error and "--allow-changed-weights" in error
    assert "allow_changed_weights=True" not in error
    assert main([*argv, "--allow-changed-weights"]) == 0


def test_out_into_a_missing_folder_is_created_and_said(digits, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "g"
    assert main(["explain", "--model", digits["model.keras"], "--method", "gradient", "--input",
                 digits["test.npy"], "--out", str(out)]) == 0
    assert f"Created the folder '{out.parent}'" in capsys.readouterr().out
    assert (out.parent / "g.npy").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["fit", "--model", digits["model.keras"], "--data", digits["fit.npy"], "--out",
                 str(blocker / "p.h5")]) == 1
    assert f"writes into '{blocker}', which is a file, not a folder" in capsys.readouterr().err
