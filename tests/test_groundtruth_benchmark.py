"""The ground-truth benchmark's parts: baselines, models, and a miniature run."""

import json

import numpy as np
import pytest

from innv_pattern import groundtruth_benchmark as gb


def test_sobel_baseline_on_a_step_edge():
    """A vertical step from 0 to 1 between columns 3 and 4: scipy's Sobel derivative
    across columns is (1 + 2 + 1) * (1 - 0) = 4 on the two columns beside the step
    (central difference, smoothing weights 1-2-1 down the rows), 0 elsewhere."""
    x = np.zeros((1, 8, 8, 1), np.float32)
    x[..., 4:, 0] = 1.0
    edges = gb.baseline_map("sobel", x)[0, ..., 0]
    expected = np.zeros((8, 8))
    expected[:, 3:5] = 4.0
    np.testing.assert_allclose(edges, expected)
    assert gb.baseline_map("input", x) is x
    noise = gb.baseline_map("random", np.zeros((400, 8, 8, 1)), seed=1)
    assert noise.std() == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="Unknown baseline"):
        gb.baseline_map("laplace", x)


def test_models_are_the_published_shapes():
    """LLR: Dense(2) without bias on 64 pixels; MLP: 64-32-16-8-2 (XAI-TRIS's Keras code)."""
    linear, mlp = gb.build_model("linear"), gb.build_model("mlp")
    assert [w.shape for w in linear.get_weights()] == [(64, 2)]
    assert [w.shape for w in mlp.get_weights()][::2] == [(64, 32), (32, 16), (16, 8), (8, 2)]
    assert gb.build_model("cnn").output_shape == (None, 2)
    with pytest.raises(ValueError, match="Unknown model"):
        gb.build_model("resnet")


@pytest.mark.slow
def test_miniature_run_writes_every_file(tmp_path, monkeypatch):
    """One data set, one model, two analyzers, tiny settings: the record, the files, the
    table's rows, and the random baseline's mass near k / N = 8 / 64."""
    monkeypatch.setitem(gb.SETTINGS, "quick", {"n": 600, "test": 200, "explain": 40,
                                               "epochs": 4, "patience": 2})
    record = gb.run_benchmark(tmp_path, scenarios=("lin",), backgrounds=("white",),
                              models=("linear",), analyzers=["gradient", "pattern.net"],
                              verbose=0)
    cell, = record["cells"]
    assert set(cell["scores"]) == {"gradient", "pattern.net", "random", "sobel", "input"}
    assert cell["scores"]["random"]["mass"] == pytest.approx(8 / 64, abs=0.03)
    assert record["invariance"]["linear"]["gradient"] < 1e-4
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"groundtruth.json", "groundtruth.md", "groundtruth_scores.png",
                     "groundtruth_precision.png", "groundtruth_examples.png"}
    assert json.loads((tmp_path / "groundtruth.json").read_text())["cells"][0]["model"] == "linear"
    assert "| LIN WHITE linear |" in (tmp_path / "groundtruth.md").read_text()
    with pytest.raises(ValueError, match="scenarios from"):
        gb.run_benchmark(None, scenarios=("spiral",))
