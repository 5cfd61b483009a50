"""The low-memory fit, ``pattern_type="relu.positive"``: only the positive-regime statistics.

It keeps two kernel-sized float64 sums instead of three and runs two kernel
gradients per op instead of three; its patterns are those of a ``"relu"``
fit (the same float32 batch sums), so its error against the float64
explicit-patch reference is the ``"relu"`` fit's.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_fit_reliability import BATCH, digits_model
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


def test_positive_only_patterns_explain_and_save_without_statistics(tmp_path):
    model, x = digits_model()
    patterns = PatternComputer(model, "relu.positive").compute(x[:128], batch_size=BATCH,
                                                               verbose=0)
    assert patterns.statistics is None
    patterns.save(tmp_path / "p.h5")
    loaded = Patterns.load(tmp_path / "p.h5", model=model)
    assert loaded.types == ("relu.positive",)
    analyzer = ip.create_analyzer("pattern.attribution", model, patterns=loaded)
    assert np.isfinite(analyzer.analyze(x[:4])).all()


def test_positive_only_refuses_what_needs_the_all_sample_statistics(tmp_path):
    model, x = digits_model()
    computer = PatternComputer(model, "relu.positive")
    with pytest.raises(ValueError, match="pattern files do not hold"):
        computer.compute(x[:64], batch_size=BATCH, checkpoint=tmp_path / "c.h5", verbose=0)
    computer.compute(x[:64], batch_size=BATCH, verbose=0)
    with pytest.raises(ValueError, match="pattern files do not hold"):
        computer.save_state(tmp_path / "s.h5")
    stats = next(iter(computer.statistics.values()))
    with pytest.raises(ValueError, match="shrinkage needs the all-sample"):
        stats.finalize(np.zeros(stats.kernel_shape), ("relu.positive",), shrinkage=5)
    with pytest.raises(ValueError, match=r"Cannot compute pattern type 'linear'"):
        stats.finalize(np.zeros(stats.kernel_shape), ("linear",))
