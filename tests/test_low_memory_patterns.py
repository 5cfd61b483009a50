"""The low-memory fit, ``pattern_type="relu.positive"``: only the positive-regime statistics.

It keeps two kernel-sized float64 sums instead of three and runs two kernel
gradients per op instead of three; its patterns are those of a ``"relu"``
fit (the same float32 batch sums), so its error against the float64
explicit-patch reference is the ``"relu"`` fit's.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_fit_reliability import BATCH, assert_resumed_equals, batches_of, digits_model
from test_pattern_computer import assert_matches_reference

import innv_pattern as ip
from innv_pattern.patterns import PatternComputer, Patterns
from innv_pattern.patterns.estimators import PatternStatistics


def test_positive_only_fit_equals_the_relu_fit_in_two_thirds_of_the_memory():
    model, x = digits_model()
    x = x[:320]
    full = PatternComputer(model, "relu")
    both = full.compute(x, batch_size=BATCH, verbose=0)
    low = PatternComputer(model, "relu.positive")
    positive = low.compute(x, batch_size=BATCH, verbose=0)
    assert positive.types == ("relu.positive",) and positive.samples_seen == len(x)
    for name in both:
        np.testing.assert_allclose(positive[name], both[name], rtol=1e-6,
                                   atol=1e-6 * np.abs(both[name]).max())
    assert_matches_reference(model, positive, x)

    def kernel_bytes(stats: dict[str, PatternStatistics]) -> int:
        return sum(v.nbytes for s in stats.values() for k, v in s.sums.items()
                   if v.shape == s.kernel_shape)

    assert kernel_bytes(low.statistics) * 3 == kernel_bytes(full.statistics) * 2
    assert all("sum_xy" not in s.sums for s in low.statistics.values())


def test_positive_only_patterns_explain_and_save_with_their_statistics(tmp_path):
    model, x = digits_model()
    patterns = PatternComputer(model, "relu.positive").compute(x[:128], batch_size=BATCH,
                                                               verbose=0)
    assert all(s.regimes == "positive" for s in patterns.statistics.values())
    patterns.save(tmp_path / "p.h5")
    loaded = Patterns.load(tmp_path / "p.h5", model=model)
    assert loaded.types == ("relu.positive",)
    for name, stats in patterns.statistics.items():
        assert loaded.statistics[name].sums.keys() == stats.sums.keys()
        for key, value in stats.sums.items():
            np.testing.assert_array_equal(loaded.statistics[name].sums[key], value)
    analyzer = ip.create_analyzer("pattern.attribution", model, patterns=loaded)
    assert np.isfinite(analyzer.analyze(x[:4])).all()


def test_positive_only_checkpoints_resume_and_merge_like_relu(tmp_path):
    """An interrupted low-memory fit resumes from its checkpoint to the uninterrupted
    patterns, and shards merge into one pass (the float64 sums are the relu fit's)."""
    model, x = digits_model()
    x = x[:320]
    whole = PatternComputer(model, "relu.positive").compute(x, batch_size=BATCH, verbose=0)
    checkpoint = tmp_path / "state.h5"

    def interrupted():
        yield from batches_of(x)[:5]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        PatternComputer(model, "relu.positive").compute(
            interrupted(), checkpoint=checkpoint, checkpoint_every=2, verbose=0)
    assert Patterns.load(checkpoint).samples_seen == 5 * BATCH
    resumed = PatternComputer(model, "relu.positive").compute(
        batches_of(x), checkpoint=checkpoint, checkpoint_every=2, resume=True, verbose=0)
    assert_resumed_equals(whole, resumed)
    first, second = (PatternComputer(model, "relu.positive").compute(part, batch_size=BATCH,
                                                                     verbose=0)
                     for part in (x[:160], x[160:]))
    merged = PatternComputer(model, "relu.positive")
    merged.load_state(first, second)
    assert_resumed_equals(whole, merged.patterns())
    with pytest.raises(ValueError, match="regimes"):
        PatternComputer(model, "relu").load_state(first)   # no all-sample sums to resume


def test_positive_only_refuses_what_needs_the_all_sample_statistics():
    model, x = digits_model()
    computer = PatternComputer(model, "relu.positive")
    computer.compute(x[:64], batch_size=BATCH, verbose=0)
    stats = next(iter(computer.statistics.values()))
    with pytest.raises(ValueError, match="shrinkage needs the all-sample"):
        stats.finalize(np.zeros(stats.kernel_shape), ("relu.positive",), shrinkage=5)
    with pytest.raises(ValueError, match=r"Cannot compute pattern type 'linear'"):
        stats.finalize(np.zeros(stats.kernel_shape), ("linear",))
