"""The pattern computer against an independent float64 reference with explicit patches.

The library never materializes patches: it gets every sum as a kernel
gradient, around a shift, with a padding correction, in float32 per batch.
The reference (``pattern_reference``) takes each layer's input from a Keras
sub-model, builds every receptive field explicitly and applies Eq. 3 / Eq. 7
in float64, so agreement checks all of that machinery at once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from pattern_reference import balance_biases, patterns_from_samples, reference_patterns

from innv_pattern.canonize import canonize
from innv_pattern.patterns import PatternComputer, Patterns, fitter

TYPES = ("linear", "relu.positive", "relu.negative")
WORKER = Path(__file__).with_name("pattern_distributed_worker.py")


def relative_error(found: np.ndarray, expected: np.ndarray) -> float:
    """Largest error relative to the largest entry (NaN reference entries, degenerate, skipped).

    A pattern with no finite reference entry (a regime without samples: the
    negative regime of a layer that no ReLU gates) must be all zeros.
    """
    ok = np.isfinite(expected)
    if not ok.any():
        return float(np.abs(found).max())
    return float(np.abs(found - np.nan_to_num(expected))[ok].max() / np.abs(expected[ok]).max())


def assert_matches_reference(model: keras.Model, patterns: Patterns, x: np.ndarray,
                             rtol: float = 1e-5) -> None:
    for layer in model.layers:
        if getattr(layer, "kernel", None) is None:
            continue
        expected = reference_patterns(model, layer, x)
        for kind in patterns.types:
            err = relative_error(patterns.for_type(kind)[layer.name], expected[kind])
            assert err < rtol, f"{layer.name} {kind}: relative error {err:.2e}"


def numerators(patterns: Patterns, name: str) -> dict[str, np.ndarray]:
    """n_r (E_r[x y] - E_r[x] E[y]) of every regime, from the float64 statistics."""
    s = patterns.statistics[name].sums
    mean_y = s["sum_y"] / s["count"]
    if "sum_xy" not in s:  # positive-regime statistics (pattern_type "relu.positive")
        return {"relu.positive": s["sum_xy_pos"] - s["sum_x_pos"] * mean_y}
    sum_x = np.broadcast_to(s["sum_x"], s["sum_xy"].shape)
    found = {"linear": s["sum_xy"] - sum_x * mean_y}
    if "sum_xy_pos" in s:
        found["relu.positive"] = s["sum_xy_pos"] - s["sum_x_pos"] * mean_y
        found["relu.negative"] = (s["sum_xy"] - s["sum_xy_pos"]) - (sum_x - s["sum_x_pos"]) * mean_y
    return found


def assert_same_fit(a: Patterns, b: Patterns, rtol: float = 1e-6,
                    pattern_rtol: float = 1e-5) -> None:
    """Equal up to float32 summation order.

    Two fits that sum the same samples in another grouping (batch sizes,
    replicas, shards) differ by float32 rounding: their statistics by about
    1e-7 relative, by more for batches with many output positions.  Eq. 7's
    ratio amplifies this for neurons whose denominator nearly cancels (seen
    up to ~3e-6 for ``relu.negative`` here), hence the looser bound on the
    patterns themselves.
    """
    assert a.types == b.types and a.samples_seen == b.samples_seen
    for name in a:
        if a.statistics is not None and b.statistics is not None:
            num_a, num_b = numerators(a, name), numerators(b, name)
            for kind in a.types:
                # Relative to the totals: an empty regime's numerator is rounding noise.
                scale = max(np.abs(num_a[kind]).max(),
                            np.abs(num_a.get("linear", num_a[kind])).max())
                err = np.abs(num_b[kind] - num_a[kind]).max() / scale
                assert err < rtol, f"{name} {kind} statistics: relative difference {err:.2e}"
        for kind in a.types:
            value = a.for_type(kind)[name]
            err = np.abs(b.for_type(kind)[name] - value).max() / max(np.abs(value).max(), 1e-30)
            assert err < pattern_rtol, f"{name} {kind}: relative difference {err:.2e}"


def conv_model() -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras.Sequential([
        keras.Input((9, 9, 2)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="same"),
        keras.layers.Conv2D(4, 3, groups=4, padding="same", activation="relu",
                            name="one_channel_groups"),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same",
                                     activation="relu", name="depthwise"),
        keras.layers.Conv2D(4, 2, groups=2, activation="relu", name="grouped"),
        keras.layers.Conv2D(5, 2, strides=2, activation="relu", name="strided"),
        keras.layers.Flatten(),
        keras.layers.Dense(6, activation="relu", name="dense"),
        keras.layers.Dense(3, name="logits"),
    ])


def small_conv_model() -> keras.Model:
    keras.utils.set_random_seed(6)
    return keras.Sequential([keras.Input((6, 6, 2)),
                             keras.layers.Conv2D(3, 3, padding="same", activation="relu",
                                                 name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(2, name="out")])


def dense_model(inputs: int = 6) -> keras.Model:
    keras.utils.set_random_seed(8)
    return keras.Sequential([
        keras.Input((inputs,)),
        keras.layers.Dense(8, activation="relu", name="hidden1"),
        keras.layers.Dense(7, activation="relu", name="hidden2"),
        keras.layers.Dense(4, activation="softmax", name="out"),
    ])


def data(shape: tuple, n: int, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n,) + shape) + offset).astype("float32")


def test_toy_example_recovers_the_signal_direction():
    """Section 2 through a Keras Dense layer: the linear pattern is a_s = (1, 0), not w."""
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, 4000)
    eps = rng.normal(0.5, 1.0, 4000)
    eps -= np.polyval(np.polyfit(y, eps, 1), y) - eps.mean()
    x = (np.outer(y, [1.0, 0.0]) + np.outer(eps, [1.0, 1.0])).astype("float32")
    inp = keras.Input((2,))
    layer = keras.layers.Dense(1, use_bias=False, name="w")
    model = keras.Model(inp, layer(inp))
    layer.kernel.assign([[1.0], [-1.0]])
    patterns = PatternComputer(model, "linear").compute(x, batch_size=500, verbose=0)
    np.testing.assert_allclose(patterns["w"][:, 0], [1.0, 0.0], atol=1e-5)


def test_dense_model_all_types_match_reference():
    model = dense_model()
    x = data((6,), 500)
    balance_biases(model, x)
    patterns = PatternComputer(model, ("linear", "relu", "relu_eq7")).compute(
        x, batch_size=64, verbose=0)
    assert patterns.types == ("linear",) + TYPES[1:] + ("relu_eq7.positive",
                                                      "relu_eq7.negative")
    assert patterns.samples_seen == 500
    assert_matches_reference(model, patterns, x)


def test_conv_models_match_reference_same_valid_strides_depthwise_groups():
    """'same' and 'valid' padding, strides, depthwise (with multiplier) and grouped kernels.

    The within-regime form subtracts E+[x] E+[y] from float32 batch sums taken
    around the global mean of a first batch, not the regime's mean: where a
    regime's mean lies far from it a digit more cancels (1.5e-5 seen), hence 3e-5.
    """
    model = conv_model()
    x = data((9, 9, 2), 200, offset=1.0)
    balance_biases(model, x)
    patterns = PatternComputer(model, ("relu", "relu_eq7", "linear")).compute(
        x, batch_size=64, verbose=0)
    assert patterns.pattern_type == ("relu", "relu_eq7", "linear")
    assert_matches_reference(model, patterns, x, rtol=3e-5)


def test_transposed_convolution_matches_reference():
    """Transposed convolutions' patches miss kernel taps at the borders and between strides."""
    keras.utils.set_random_seed(9)
    model = keras.Sequential([keras.Input((7, 3)),
                              keras.layers.Conv1DTranspose(4, 3, strides=2, activation="relu",
                                                           name="up"),
                              keras.layers.Flatten(), keras.layers.Dense(2, name="out")])
    x = data((7, 3), 150, offset=2.0)
    balance_biases(model, x)
    patterns = PatternComputer(model, ("linear", "relu")).compute(x, batch_size=50, verbose=0)
    assert_matches_reference(model, patterns, x)


def test_shared_layer_pattern_is_fitted_on_all_its_calls():
    """A layer called twice has one kernel, so one pattern, from both calls' inputs."""
    keras.utils.set_random_seed(12)
    a, b = keras.Input((4,)), keras.Input((4,))
    shared = keras.layers.Dense(3, activation="relu", name="shared")
    joined = keras.layers.Concatenate()([shared(a), shared(b)])
    model = keras.Model([a, b], keras.layers.Dense(2, name="out")(joined))
    shared.bias.assign([0.1, -0.2, 0.3])
    xa, xb = data((4,), 200), data((4,), 200, seed=1, offset=2.0)
    patterns = PatternComputer(model, ("linear", "relu")).compute(
        [[xa[i:i + 50], xb[i:i + 50]] for i in range(0, 200, 50)], verbose=0)
    assert list(patterns) == ["shared", "out"] and patterns.statistics["shared"].count == 400
    w, bias = shared.kernel.numpy().astype(float), shared.bias.numpy().astype(float)
    expected = patterns_from_samples(np.concatenate([xa, xb]).astype(float), w, bias)
    for kind in patterns.types:
        assert relative_error(patterns.for_type(kind)["shared"], expected[kind]) < 1e-5


def test_large_offset_inputs_match_float64_reference():
    """Inputs with mean 100x their std: plain float32 sums would be off by ~3e-2 here."""
    keras.utils.set_random_seed(3)
    dense = keras.layers.Dense(4, activation="relu", name="dense")
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")
    for layer, shape, n in ((dense, (16,), 2048), (conv, (8, 8, 3), 256)):
        inp = keras.Input(shape)
        model = keras.Model(inp, layer(inp))
        layer.kernel.assign(np.abs(layer.kernel.numpy()) + 0.05)  # large mean output, too
        x = data(shape, n, offset=100.0)
        balance_biases(model, x)
        patterns = PatternComputer(model, ("linear", "relu")).compute(x, batch_size=512,
                                                                       verbose=0)
        assert_matches_reference(model, patterns, x, rtol=2e-5)


def test_batch_order_and_size_do_not_matter():
    model = small_conv_model()
    x = data((6, 6, 2), 120, seed=1)
    balance_biases(model, x)
    computer = PatternComputer(model)
    first = computer.compute(x, batch_size=30, verbose=0)
    permuted = x[np.random.default_rng(2).permutation(len(x))]
    for batches, size in ((permuted, 8), (x, 120)):
        assert_same_fit(first, computer.compute(batches, batch_size=size, verbose=0),
                        rtol=3e-6, pattern_rtol=3e-5)


def test_device_and_host_accumulation_agree(monkeypatch):
    """Sums accumulate on the host for CPU strategies, in device variables otherwise."""
    model = small_conv_model()
    x = data((6, 6, 2), 64, seed=5)
    balance_biases(model, x)
    on_host = PatternComputer(model)
    host = on_host.compute(x, batch_size=16, verbose=0)
    monkeypatch.setattr(fitter, "cpu_only", lambda strategy: False)
    on_device = PatternComputer(model)
    device = on_device.compute(x, batch_size=16, verbose=0)
    assert on_host._fitter.on_host and not on_device._fitter.on_host
    assert_same_fit(host, device, rtol=1e-12, pattern_rtol=1e-6)


def test_degenerate_neurons_are_counted_and_never_nan(capsys):
    keras.utils.set_random_seed(4)
    inp = keras.Input((5,))
    layer = keras.layers.Dense(4, activation="relu", name="dense")
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(layer(inp)))
    layer.bias.assign([-100.0, 100.0, 0.0, 0.0])  # never active, never inactive
    patterns = PatternComputer(model).compute(data((5,), 100), verbose=1)
    assert patterns.degenerate["dense"] == {"relu.positive": 1, "relu.negative": 1}
    assert not patterns["dense"][:, 0].any()
    assert not patterns.for_type("relu.negative")["dense"][:, 1].any()
    assert all(np.isfinite(v).all() for t in patterns.types for v in patterns.for_type(t).values())
    out = capsys.readouterr().out
    assert "'dense': 1 relu.positive, 1 relu.negative" in out and "samples/s" in out


def test_a_regime_of_one_sample_is_degenerate_not_rounding_noise():
    """A covariance of one sample is exactly zero; the float32 sums leave rounding noise
    in it, which dividing by its own projection turned into a pattern of any size
    (seen up to 25 on a trained CNN, and different on every regrouping of the
    batches).  Eq. 7's regime numerator E+[x] (y - E[y]) is defined from one sample."""
    keras.utils.set_random_seed(5)
    layer = keras.layers.Dense(4, activation="relu", name="dense")
    model = keras.Sequential([keras.Input((6,)), layer])
    x = data((6,), 256) + 3.0  # an offset, so the shift matters
    w, b = (v.numpy() for v in (layer.kernel, layer.bias))
    y = np.sort(x.astype(np.float64) @ w, axis=0)
    b[0] = -(y[-1, 0] + y[-2, 0]) / 2   # one sample in neuron 0's positive regime
    b[1] = -(y[0, 1] + y[1, 1]) / 2     # one sample in neuron 1's negative regime
    b[2] = -(y[1, 2] + y[2, 2]) / 2     # two samples in neuron 2's negative regime
    b[3] = -np.median(y[:, 3])          # neuron 3: half the samples in each regime
    layer.bias.assign(b)
    both = PatternComputer(model, pattern_type=("relu", "relu_eq7"))
    patterns = both.compute(x, batch_size=64, verbose=0)
    relu_only = PatternComputer(model)
    relu_only.compute(x, batch_size=64, verbose=0)
    # Reported as noisy: neurons 0-2 where Eq. 7 gives them patterns; with relu, neuron 2 only.
    assert both.few_sample_neurons() == {"dense": 3}
    assert relu_only.few_sample_neurons() == {"dense": 1}
    assert patterns.degenerate["dense"] == {"relu.positive": 1, "relu.negative": 1,
                                            "relu_eq7.positive": 0, "relu_eq7.negative": 0}
    assert not patterns.for_type("relu.positive")["dense"][:, 0].any()
    assert not patterns.for_type("relu.negative")["dense"][:, 1].any()
    expected = reference_patterns(model, layer, x)
    for kind in ("relu.positive", "relu.negative", "relu_eq7.positive", "relu_eq7.negative"):
        found = patterns.for_type(kind)["dense"]
        ok = np.isfinite(expected[kind]).all(axis=0)  # NaN: the one-sample covariances
        assert ok.sum() == (4 if kind.startswith("relu_eq7") else 3), kind
        err = relative_error(found[:, ok], expected[kind][:, ok])
        # 1e-4: neuron 2's two-sample regime amplifies float32 rounding (1.3e-5 measured).
        assert err < 1e-4, f"{kind}: relative error {err:.2e}"


def test_patterns_are_normalized_by_the_folded_kernel():
    """w^T a = 1 for every non-degenerate neuron, BatchNorm folded into w."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    bn = model.layers[1]
    bn.moving_mean.assign([0.5, -0.2, 0.1])
    bn.moving_variance.assign([2.0, 0.5, 1.5])
    patterns = PatternComputer(model).compute(data((6, 6, 2), 64), verbose=0)
    for op in canonize(model).kernel_ops:
        w = op.get_kernel().numpy()
        norm = (w * patterns[op.name]).reshape(-1, w.shape[-1]).sum(0)
        degenerate = ~patterns[op.name].reshape(-1, w.shape[-1]).any(0)
        np.testing.assert_allclose(norm[~degenerate], 1.0, rtol=1e-5)


def test_input_forms_dataset_generator_and_multiple_inputs():
    a, b = keras.Input((3,)), keras.Input((2,))
    joined = keras.layers.Concatenate()([keras.layers.Dense(4, name="da")(a),
                                         keras.layers.Dense(4, name="db")(b)])
    model = keras.Model([a, b], keras.layers.Dense(2, name="out")(joined))
    xa, xb = data((3,), 60), data((2,), 60, seed=1)
    computer = PatternComputer(model, "linear")
    labels = np.zeros(60)
    from_dataset = computer.compute(
        tf.data.Dataset.from_tensor_slices(((xa, xb), labels)).batch(16), verbose=0)
    from_lists = computer.compute(([xa[i:i + 16], xb[i:i + 16]] for i in range(0, 60, 16)),
                                  verbose=0)
    assert_same_fit(from_dataset, from_lists)
    with pytest.raises(ValueError, match="has 2 inputs; received batches with 1"):
        computer.compute([xa], verbose=0)


def test_input_errors_are_clear():
    computer = PatternComputer(dense_model())
    with pytest.raises(ValueError, match="batch_size must be None for .*Dataset"):
        computer.compute(tf.data.Dataset.from_tensor_slices(data((6,), 8)).batch(4), batch_size=4)
    with pytest.raises(ValueError, match="Received no data"):
        computer.compute(data((6,), 0), verbose=0)
    with pytest.raises(TypeError, match="Expected a numpy array, a tf.data.Dataset"):
        computer.compute(42)
    with pytest.raises(ValueError, match="Unknown pattern_type 'signal'"):
        PatternComputer(dense_model(), "signal")
    inp = keras.Input((3,))
    with pytest.raises(ValueError, match="has no kernel layer"):
        PatternComputer(keras.Model(inp, keras.layers.ReLU()(inp)))


def test_resume_after_interruption_equals_one_pass(tmp_path):
    model = small_conv_model()
    x = data((6, 6, 2), 96, seed=3)
    balance_biases(model, x)
    batches = [x[i:i + 16] for i in range(0, 96, 16)]
    whole = PatternComputer(model).compute(batches, verbose=0)

    def interrupted():
        yield from batches[:2]
        raise KeyboardInterrupt

    first = PatternComputer(model)
    with pytest.raises(KeyboardInterrupt):
        first.compute(interrupted(), verbose=0)
    assert first.samples_seen == 32  # every completed batch is kept
    first.save_state(tmp_path / "state.h5")
    second = PatternComputer(model)
    second.load_state(tmp_path / "state.h5")
    stream = iter(batches[2:])
    second.compute(stream, steps=2, verbose=0, accumulate=True)
    assert_same_fit(whole, second.compute(stream, verbose=0, accumulate=True))


def test_computing_twice_never_counts_the_data_twice(tmp_path):
    """The README's sequence: a fit, then the checkpointed fit of the same data on the same
    computer.  resume=True continues the checkpoint file only; it used to add to the
    statistics held (2,800 samples reported for 1,400).  Run again, a completed checkpoint
    gives the same patterns instead of being counted again.  Adding is explicit."""
    model = dense_model()
    x = data((6,), 200, seed=4)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(50)
    checkpoint = tmp_path / "fit.partial.h5"
    for run in range(2):  # the script, then the same script again
        computer = PatternComputer(model)
        first = computer.compute(dataset, verbose=0)
        second = computer.compute(dataset, checkpoint=checkpoint, resume=True, verbose=0)
        assert first.samples_seen == second.samples_seen == len(x), f"run {run}"
        assert_same_fit(first, second)
    assert computer.compute(x, accumulate=True, verbose=0).samples_seen == 2 * len(x)
    with pytest.warns(FutureWarning, match="pass accumulate=True"):
        assert computer.compute(x, resume=True, verbose=0).samples_seen == 3 * len(x)


def test_progress_reads_well_in_a_log_file(capsys):
    """Output that is not a terminal gets plain lines: no carriage returns, backspaces or
    ANSI codes, and a batched dataset of known length shows its batch count, not
    '64/Unknown' (Keras's Progbar did both)."""
    model = dense_model()
    x = data((6,), 200, seed=5)
    PatternComputer(model).compute(tf.data.Dataset.from_tensor_slices(x).batch(50))
    PatternComputer(model).compute(x, batch_size=40)
    out = capsys.readouterr().out
    assert not any(c in out for c in "\r\b\x1b"), repr(out)
    assert "4/4 batches (100%), 200 samples" in out and "Unknown" not in out
    assert "200/200 samples (100%)" in out


def test_merged_shards_equal_one_pass(tmp_path):
    model = dense_model()
    x = data((6,), 300, seed=4)
    balance_biases(model, x)
    whole = PatternComputer(model, ("linear", "relu")).compute(x, batch_size=50, verbose=0)
    paths = []
    for i, shard in enumerate(np.array_split(x, 3)):
        computer = PatternComputer(model, ("linear", "relu"))
        computer.compute(shard, batch_size=50, verbose=0)
        paths.append(tmp_path / f"shard{i}.h5")
        computer.save_state(paths[-1])
    merger = PatternComputer(model, ("linear", "relu"))
    merger.load_state(*paths[:2], Patterns.load(paths[2]))
    assert_same_fit(whole, merger.patterns())
    with pytest.raises(ValueError, match="do not fit this computer"):
        PatternComputer(model, "linear").load_state(paths[0])


def _single_device(model: keras.Model, x: np.ndarray) -> Patterns:
    return PatternComputer(model, ("linear", "relu")).compute(x, batch_size=24, verbose=0)


def _distributed_fixture(tmp_path: Path) -> tuple[keras.Model, np.ndarray, Path, Path]:
    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((8, 8, 2)),
                              keras.layers.Conv2D(4, 3, padding="same", activation="relu",
                                                  name="c1"),
                              keras.layers.Conv2D(5, 3, strides=2, activation="relu", name="c2"),
                              keras.layers.Flatten(),
                              keras.layers.Dense(6, activation="relu", name="d1"),
                              keras.layers.Dense(3, name="d2")])
    x = data((8, 8, 2), 101, offset=3.0)  # 101: the last batch splits unevenly
    balance_biases(model, x)
    model_path, data_path = tmp_path / "model.keras", tmp_path / "x.npy"
    model.save(model_path)
    np.save(data_path, x)
    return model, x, model_path, data_path


@pytest.mark.slow
def test_mirrored_strategy_equals_single_device(tmp_path):
    """Two logical CPU devices (set up in a subprocess, before TF starts)."""
    model, x, model_path, data_path = _distributed_fixture(tmp_path)
    subprocess.run([sys.executable, str(WORKER), "mirrored", str(model_path), str(data_path),
                    str(tmp_path / "mirrored")], check=True, timeout=300)
    single = _single_device(model, x)
    for source in ("numpy", "dataset", "generator"):
        assert_same_fit(single, Patterns.load(tmp_path / f"mirrored.{source}.h5", model))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_strategy_equals_single_device(tmp_path):
    """Two worker processes on loopback, each a MultiWorkerMirroredStrategy replica."""
    model, x, model_path, data_path = _distributed_fixture(tmp_path)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, str(WORKER), "multiworker", str(model_path), str(data_path),
             str(tmp_path / f"worker{index}")], env=env))
    for worker in workers:
        assert worker.wait(timeout=300) == 0
    single = _single_device(model, x)
    for index in range(2):
        assert_same_fit(single, Patterns.load(tmp_path / f"worker{index}.multiworker.h5", model))
