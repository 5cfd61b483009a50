"""Reliability of pattern fitting: checkpoints survive a killed process, bad batches are refused.

A fit that runs for hours must neither lose work nor give a silently wrong
result.  References are independent of the code under test: an uninterrupted
fit for a resumed one, the float64 explicit-patch reference
(``pattern_reference``) for the statistics kept when a bad batch stops a fit,
and the file itself (every layer's sample count) for a checkpoint's
consistency.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from pattern_reference import balance_biases, reference_patterns
from sklearn.datasets import load_digits
from test_pattern_computer import assert_matches_reference, assert_same_fit, relative_error

import innv_pattern as ip
from innv_pattern.patterns import PatternComputer, Patterns, fitter

BATCH = 32

#: The fit a user runs, as a script: it resumes from its checkpoint when run again.
CHILD = textwrap.dedent('''
    import os, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras, numpy as np
    from innv_pattern.patterns import PatternComputer

    model_path, data_path, checkpoint, pause = sys.argv[1:5]
    model = keras.saving.load_model(model_path, compile=False)
    x = np.load(data_path)

    def batches():
        for i in range(0, len(x), {batch}):
            time.sleep(float(pause))     # a slow input pipeline: time to kill it mid-fit
            yield x[i:i + {batch}]

    PatternComputer(model).compute(batches(), checkpoint=checkpoint, checkpoint_every=2,
                                   resume=True, verbose=0)
    print("finished")
''').format(batch=BATCH)


def digits_model() -> tuple[keras.Model, np.ndarray]:
    """A small CNN on sklearn's 8x8 digits (1797 images), biases balanced on the data.

    The pixels get a little noise: digits take 17 values, so many identical
    patches can put a pre-activation within float32 rounding of zero, where
    the float32 fit and the float64 reference disagree on its regime (seen:
    1.8e-4 relative on one conv neuron); with noise they agree to ~1e-7.
    """
    x = load_digits().images[..., None] / 16.0
    x = (x + np.random.default_rng(0).normal(0, 0.01, x.shape)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)),
                              keras.layers.Conv2D(6, 3, padding="same", activation="relu",
                                                  name="conv"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(12, activation="relu", name="dense"),
                              keras.layers.Dense(10, name="logits")])
    return balance_biases(model, x), x


def batches_of(x: np.ndarray, size: int = BATCH) -> list[np.ndarray]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def assert_resumed_equals(whole: Patterns, resumed: Patterns) -> None:
    """A resumed fit equals the uninterrupted one up to float32 rounding, not bitwise.

    It sums the same samples in another grouping, and each pass takes its
    float32 shift from its own first batch.  The float64 statistics (Eq. 7's
    numerators) agree to 1e-6 relative (measured: <= 6e-7) and the primary
    ``relu.positive`` patterns to 1e-5 (measured: <= 2e-7); ``relu.negative``
    divides by a denominator that nearly cancels for some neurons here, which
    amplifies the same rounding (measured: up to 1.2e-5), hence 5e-5 for it.
    """
    assert_same_fit(whole, resumed, rtol=1e-6, pattern_rtol=5e-5)
    for name, pattern in whole.items():
        err = np.abs(resumed[name] - pattern).max() / np.abs(pattern).max()
        assert err < 1e-5, f"{name} relu.positive: relative difference {err:.2e}"


def assert_consistent(patterns: Patterns, model: keras.Model) -> None:
    """Every layer counts the same images (count = images x output positions), all finite."""
    positions = {"conv": 64, "dense": 1, "logits": 1}
    for name, stats in patterns.statistics.items():
        assert stats.count == patterns.samples_seen * positions[name], name
        assert all(np.isfinite(v).all() for v in stats.sums.values()), name
    patterns.check_model(model)


@pytest.mark.slow
def test_sigkill_mid_fit_then_the_same_call_resumes_to_the_uninterrupted_patterns(tmp_path):
    """A real process killed with SIGKILL (no handler runs) between checkpoints.

    The resumed fit sums the same batches in another grouping, and its second
    pass takes its float32 shift from its own first batch, so it equals the
    uninterrupted fit up to float32 rounding (1e-5 relative), not bitwise.
    """
    model, x = digits_model()
    model_path, data_path = tmp_path / "model.keras", tmp_path / "x.npy"
    checkpoint, script = tmp_path / "fit.partial.h5", tmp_path / "fit.py"
    model.save(model_path)
    np.save(data_path, x)
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(model_path), str(data_path),
                              str(checkpoint), "0.1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    loads, seen, deadline = 0, 0, time.monotonic() + 300
    try:
        while seen < 4 * BATCH and child.poll() is None and time.monotonic() < deadline:
            if checkpoint.exists():  # every checkpoint the child ever wrote loads, mid-write too
                seen = Patterns.load(checkpoint, model=model).samples_seen
                loads += 1
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    partial = Patterns.load(checkpoint, model=model)
    assert loads > 0 and 0 < partial.samples_seen < len(x)
    assert partial.samples_seen % (2 * BATCH) == 0  # a checkpoint every 2 batches
    assert_consistent(partial, model)

    def batches():  # the same call as the child's, now without the pause
        yield from batches_of(x)

    resumed = PatternComputer(model).compute(batches(), checkpoint=checkpoint,
                                             checkpoint_every=2, resume=True, verbose=0)
    whole = PatternComputer(model).compute(batches_of(x), verbose=0)
    assert resumed.samples_seen == len(x) == Patterns.load(checkpoint).samples_seen
    assert_resumed_equals(whole, resumed)


def test_checkpoints_every_n_batches_and_on_interrupt_then_resume(tmp_path, monkeypatch):
    model, x = digits_model()
    x = x[:320]
    checkpoint = tmp_path / "state.h5"
    saved: list[int] = []
    original = Patterns.save
    monkeypatch.setattr(Patterns, "save", lambda self, path, **kw: (
        saved.append(self.samples_seen), original(self, path, **kw))[1])

    def interrupted():
        yield from batches_of(x)[:5]
        raise KeyboardInterrupt

    first = PatternComputer(model)
    with pytest.raises(KeyboardInterrupt):
        first.compute(interrupted(), checkpoint=checkpoint, checkpoint_every=2, verbose=0)
    assert saved == [64, 128, 160]  # after batches 2 and 4, and the fifth on the interrupt
    assert_consistent(Patterns.load(checkpoint), model)
    whole = PatternComputer(model).compute(x, batch_size=BATCH, verbose=0)
    for data, size in ((batches_of(x), None), (tf.data.Dataset.from_tensor_slices(x).batch(BATCH),
                                               None), (x, 48)):
        saved.clear()
        interrupted_state = PatternComputer(model)
        interrupted_state.load_state(checkpoint)  # as saved at the interrupt: 160 samples
        resumed = PatternComputer(model).compute(data, batch_size=size, checkpoint=checkpoint,
                                                 checkpoint_every=2, resume=True, verbose=0)
        assert_resumed_equals(whole, resumed)
        assert saved[-1] == 320
        interrupted_state.save_state(checkpoint)  # back to 160 samples for the next form


def test_resume_refuses_data_that_does_not_line_up(tmp_path):
    model, x = digits_model()
    checkpoint = tmp_path / "state.h5"
    PatternComputer(model).compute(x[:96], batch_size=BATCH, checkpoint=checkpoint, verbose=0)
    computer = PatternComputer(model)
    with pytest.raises(ValueError, match=r"batch 1 \(0-based\) of the data spans samples 80 to "
                       r"160, so the skip ends inside it"):
        computer.compute(batches_of(x, 80), checkpoint=checkpoint, resume=True, verbose=0)
    with pytest.raises(ValueError, match="skip the 96 samples a checkpoint has seen: the data "
                       "has 64"):
        computer.compute(x[:64], checkpoint=checkpoint, resume=True, verbose=0)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive"):
        computer.compute(x, checkpoint=checkpoint, checkpoint_every=0, verbose=0)


@pytest.mark.parametrize("on_host", [True, False], ids=["host", "device"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_batch_is_refused_and_earlier_batches_are_kept(bad, on_host, tmp_path,
                                                                    monkeypatch):
    """Batch 3 holds one bad value: the error names it; batches 0-2 are kept (and checkpointed)
    exactly as a clean fit on them, checked against the float64 explicit-patch reference."""
    monkeypatch.setattr(fitter, "cpu_only", lambda strategy: on_host)
    model, x = digits_model()
    x = x[:192]
    dirty = x.copy()
    dirty[3 * BATCH + 5, 4, 4, 0] = bad
    computer = PatternComputer(model)
    with pytest.raises(ValueError, match=r"Batch 3 \(0-based\) of the data holds NaN or "
                       "infinite values; it was not added"):
        computer.compute(dirty, batch_size=BATCH, checkpoint=tmp_path / "c.h5", verbose=0)
    assert computer._fitter.on_host is on_host and computer.samples_seen == 3 * BATCH
    kept = computer.patterns()
    assert_consistent(kept, model)
    assert_matches_reference(model, kept, x[:3 * BATCH])
    assert Patterns.load(tmp_path / "c.h5").samples_seen == 3 * BATCH
    resumed = computer.compute(x[3 * BATCH:], batch_size=BATCH, accumulate=True,
                               verbose=0)
    assert_matches_reference(model, resumed, x)  # cleaned data: the fit continues


def test_an_overflow_inside_the_model_is_refused():
    """Finite inputs (1e30) whose layer sums overflow float32: named by the first such layer."""
    model, x = digits_model()
    x = x[:128].copy()
    x[BATCH:2 * BATCH] *= np.float32(1e30)
    computer = PatternComputer(model)
    with pytest.raises(ValueError, match=r"Batch 1 \(0-based\) of the data is finite, but the "
                       "float32 sums of layer 'conv' are not"):
        computer.compute(x, batch_size=BATCH, verbose=0)
    assert computer.samples_seen == BATCH
    assert_matches_reference(model, computer.patterns(), x[:BATCH])


def _bad_batches(x: np.ndarray) -> list[tuple[object, type, str]]:
    labels = tf.data.Dataset.from_tensor_slices(np.arange(100)).batch(BATCH)
    return [
        (batches_of(x[:64]) + [x[64:96, :7, :7]], ValueError,
         r"Batch 2 \(0-based\) of the data has shape \(32, 7, 7, 1\) \(dtype float32\) for the "
         r"model input; the model takes \(None, 8, 8, 1\)"),
        (batches_of(x[:64]) + [x[64:96, :, :, 0]], ValueError, r"Batch 2 .* shape \(32, 8, 8\)"),
        (batches_of(x[:32]) + [np.full((32, 8, 8, 1), "a")], TypeError,
         r"Batch 1 \(0-based\) of the data holds ndarray values of dtype <U1 .*expected numbers"),
        (batches_of(x[:32]) + [x[32:64].astype(complex)], TypeError, "dtype complex128"),
        (labels, ValueError, r"Batch 0 .* shape \(32,\) \(dtype int64\).*look like labels"),
        (batches_of(x[:32]) + [[x[32:64], x[32:64]]], ValueError,
         r"Batch 1 \(0-based\) of the data: model 'sequential.*' has 1 inputs; received "
         "batches with 2"),
    ]


def test_batches_of_the_wrong_shape_or_dtype_are_refused_and_earlier_batches_kept():
    model, x = digits_model()
    computer = PatternComputer(model)
    clean = PatternComputer(model)
    for data, error, message in _bad_batches(x):
        with pytest.raises(error, match=message):
            computer.compute(data, verbose=0)
        kept = sum(len(b) for b in data[:-1]) if isinstance(data, list) else 0
        assert computer.samples_seen == kept
        if kept:  # what was kept equals a clean fit of the same batches
            assert_same_fit(clean.compute(data[:-1], verbose=0), computer.patterns(),
                            rtol=1e-12, pattern_rtol=1e-12)


@pytest.mark.parametrize("empty", [np.zeros((0, 8, 8, 1), "float32"), [], iter(()),
                                   tf.data.Dataset.from_tensor_slices(
                                       np.zeros((0, 8, 8, 1), "float32")).batch(4)],
                         ids=["numpy", "list", "iterator", "dataset"])
def test_empty_data_is_an_error(empty):
    with pytest.raises(ValueError, match="Received no data"):
        PatternComputer(digits_model()[0]).compute(empty, verbose=0)


def test_constant_inputs_and_dead_layers_give_zero_patterns_and_finite_analyses():
    """No covariance (constant input) or no positive regime (dead layer): zero patterns.

    The reference is the estimator itself: every sample of a constant image
    gives the dense layers the same input, so cov[x, y] = 0 and every neuron
    of them is degenerate in every regime (its pattern zero, counted).  The
    'same'-padded conv still sees varying patches (zeros at the borders), so
    its patterns are the float64 explicit-patch reference's.  A dense layer
    whose pre-activations are all negative has an empty positive regime.
    Nothing may be NaN, neither patterns nor PatternNet/PatternAttribution.
    """
    model, x = digits_model()
    constant = np.full((64, 8, 8, 1), 0.3, "float32")
    patterns = PatternComputer(model).compute(constant, verbose=0)
    assert patterns.degenerate["dense"] == {"relu.positive": 12, "relu.negative": 12}
    # No rectifier after the logits: one regime, every sample, no negative one to count.
    assert patterns.degenerate["logits"] == {"relu.positive": 10}
    for name in ("dense", "logits"):
        for kind in patterns.types:
            assert not patterns.for_type(kind)[name].any(), (name, kind)
    expected = reference_patterns(model, model.get_layer("conv"), constant)
    for kind in patterns.types:
        assert relative_error(patterns.for_type(kind)["conv"], expected[kind]) < 1e-5, kind
    dead = keras.models.clone_model(model)
    dead.set_weights(model.get_weights())
    dead.get_layer("dense").bias.assign(np.full(12, -1e3, "float32"))
    patterns_dead = PatternComputer(dead).compute(x[:256], verbose=0)
    assert patterns_dead.degenerate["dense"]["relu.positive"] == 12
    assert not patterns_dead["dense"].any()
    for net, fitted, data in ((model, patterns, constant[:4]), (dead, patterns_dead, x[:4])):
        for name in ("pattern.net", "pattern.attribution"):
            analysis = ip.create_analyzer(name, net, patterns=fitted).analyze(data)
            assert np.isfinite(analysis).all(), name


MIRRORED_CHILD = textwrap.dedent('''
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from innv_pattern.patterns import PatternComputer

    model = keras.saving.load_model(sys.argv[1], compile=False)
    x = np.load(sys.argv[2])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {}
    for kind in ("nan", "shape"):
        dirty = x.copy()
        if kind == "nan":
            dirty[70, 0, 0, 0] = np.nan
            data = tf.data.Dataset.from_tensor_slices(dirty).batch(32)
        else:  # a dataset whose element spec allows any image size
            parts = [x[:32], x[32:64], x[64:96, :7]]
            data = tf.data.Dataset.from_generator(
                lambda: iter(parts), output_signature=tf.TensorSpec((None, None, None, 1)))
        computer = PatternComputer(model, strategy=strategy)
        try:
            computer.compute(data, verbose=0)
        except ValueError as err:
            results[kind] = [str(err), computer.samples_seen]
            computer.save_state(sys.argv[3] + "." + kind + ".h5")
    print(json.dumps(results))
''')


@pytest.mark.slow
def test_bad_batches_under_a_mirrored_strategy(tmp_path):
    """Two logical CPUs (set before TensorFlow starts, hence a subprocess)."""
    model, x = digits_model()
    x = x[:128]
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "child.py").write_text(MIRRORED_CHILD)
    run = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "model.keras"),
                          str(tmp_path / "x.npy"), str(tmp_path / "kept")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert results["nan"][0].startswith("Batch 2 (0-based) of the data holds NaN")
    # the shape checked is each replica's share of the batch: 16 of 32 images
    assert results["shape"][0].startswith("Batch 2 (0-based) of the data has shape (16, 7, 8, 1)")
    assert results["nan"][1] == results["shape"][1] == 64
    for kind in ("nan", "shape"):
        assert_matches_reference(model, Patterns.load(tmp_path / f"kept.{kind}.h5", model), x[:64])


@pytest.mark.parametrize("fraction", [1e9, 0.0], ids=["keep_many", "every_batch"])
def test_ops_that_keep_batches_give_the_sums_of_every_batch(fraction, monkeypatch):
    """An op whose activations are small next to its kernel sums several batches at once
    (up to MAX_KEPT, the rest at flush); keeping as many as allowed, or none, gives the same
    statistics as summing every op in the forward call (float32 round-off) and as the float64
    explicit-patch reference, including a last, partial group of batches."""
    model, x = digits_model()
    x = x[:7 * BATCH + 5]
    reference = PatternComputer(model).compute(x, batch_size=BATCH, verbose=0)  # in one call
    monkeypatch.setattr(fitter, "INLINE_KERNEL", 0)  # every op in calls of its own
    monkeypatch.setattr(fitter, "BUFFER_FRACTION", fraction)
    monkeypatch.setattr(fitter, "MAX_KEPT", 3)
    computer = PatternComputer(model)
    kept = computer.compute(x, batch_size=BATCH, verbose=0)
    assert set(computer._fitter._periods) == ({3} if fraction else {1})
    assert kept.samples_seen == len(x)
    for name in reference:
        for key, value in reference.statistics[name].sums.items():
            np.testing.assert_allclose(kept.statistics[name].sums[key], value, rtol=1e-5,
                                       atol=1e-5 * np.abs(value).max())
    assert_matches_reference(model, kept, x)


def test_resuming_on_a_dataset_reads_each_batch_once(tmp_path):
    """On one device the batches a checkpoint has seen are read once to be skipped, not twice
    (a resumed fit on an image pipeline would otherwise decode the skipped half twice); the
    resumed fit still equals the uninterrupted one."""
    model, x = digits_model()
    x = x[:256]
    checkpoint = tmp_path / "state.h5"
    PatternComputer(model).compute(x[:96], batch_size=BATCH, checkpoint=checkpoint, verbose=0)
    reads: list[int] = []

    def batches():
        for i in range(0, len(x), BATCH):
            reads.append(i)
            yield x[i:i + BATCH]

    dataset = tf.data.Dataset.from_generator(
        batches, output_signature=tf.TensorSpec((None,) + x.shape[1:], tf.float32))
    resumed = PatternComputer(model).compute(dataset, checkpoint=checkpoint, resume=True,
                                             verbose=0)
    assert reads == list(range(0, len(x), BATCH))
    whole = PatternComputer(model).compute(x, batch_size=BATCH, verbose=0)
    assert_resumed_equals(whole, resumed)
