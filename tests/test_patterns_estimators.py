"""The estimators alone (numpy, no Keras): Eq. 3 and Eq. 7 from sufficient statistics.

Each test checks the statistics against a direct float64 computation on
explicit samples (``pattern_reference.patterns_from_samples``), which forms
``E[x y] - E[x] E[y]`` literally, so the sums, the shift removal and the
merge are checked independently of how they are implemented.
"""

from __future__ import annotations

import numpy as np
import pytest
from pattern_reference import patterns_from_samples

from innv_pattern.patterns import PatternStatistics, estimators, expand_pattern_type
from innv_pattern.patterns.estimators import state_shapes

TYPES = ("linear", "relu.positive", "relu.negative", "relu_eq7.positive", "relu_eq7.negative")


def sums_of(x: np.ndarray, w: np.ndarray, b: np.ndarray, mx: np.ndarray | float = 0.0,
            my: np.ndarray | float = 0.0) -> dict[str, np.ndarray]:
    """Sums of a Dense layer's samples (x: (n, in)) around the shifts mx, my."""
    y = x @ w
    pos = ((y + b) > 0).astype(float)
    xs, ys = x - mx, y - my
    return {"count": float(len(x)), "count_pos": pos.sum(0)[None],
            "sum_x": xs.sum(0)[:, None], "sum_x_pos": xs.T @ pos,
            "sum_y": ys.sum(0)[None], "sum_y_pos": (ys * pos).sum(0)[None],
            "sum_xy": xs.T @ ys, "sum_xy_pos": xs.T @ (ys * pos)}


def dense_stats(in_dim: int, out_dim: int) -> PatternStatistics:
    return PatternStatistics((in_dim, out_dim), (1,), regimes=True, x_shape=(in_dim, 1))


def test_toy_example_linear_pattern_is_the_signal_direction():
    """Section 2: x = a_s y + a_d eps with w = (1, -1): the pattern is a_s, the filter is not."""
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, 5000)
    eps = rng.normal(2.0, 1.0, 5000)  # a distractor with non-zero mean
    eps -= np.polyval(np.polyfit(y, eps, 1), y) - eps.mean()  # exactly uncorrelated with y
    x = np.outer(y, [1.0, 0.0]) + np.outer(eps, [1.0, 1.0])
    w = np.array([[1.0], [-1.0]])
    stats = dense_stats(2, 1)
    stats.update(sums_of(x, w, np.zeros(1)))
    patterns, degenerate = stats.finalize(w, TYPES)
    np.testing.assert_allclose(patterns["linear"][:, 0], [1.0, 0.0], atol=1e-9)
    assert degenerate == {t: 0 for t in TYPES}


def test_toy_example_two_component_patterns_reduce_to_the_linear_one():
    """For zero-mean distractors both regimes' patterns are a_s too (Sec. 4.3), in both forms.

    The tolerance is four standard errors of the estimate: the within-regime
    form divides by var+[y] = 1/12 (y uniform on [0, 1] in a regime), Eq. 7's
    form by E+[y^2] - E+[y] E[y] = 1/3, so the within-regime form is the noisier
    one here (standard error std[eps] / (sqrt(n+) std+[y])).
    """
    n = 200_000
    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, n)
    eps = rng.normal(0.0, 1.0, n)
    x = np.outer(y, [1.0, 0.0]) + np.outer(eps, [1.0, 1.0])
    w = np.array([[1.0], [-1.0]])
    stats = dense_stats(2, 1)
    stats.update(sums_of(x, w, np.zeros(1)))
    patterns, _ = stats.finalize(w, TYPES)
    within = 4 / (np.sqrt(n / 2) * np.sqrt(1 / 12))
    for kind in TYPES:
        np.testing.assert_allclose(patterns[kind][:, 0], [1.0, 0.0], atol=within, err_msg=kind)


def test_within_regime_form_is_shift_invariant_and_eq7_moves_by_its_closed_form():
    """x -> x + m with the bias compensated (b - w^T m): same regimes, same y up to w^T m.

    ``relu.*`` (cov_r[x, y] / var_r[y]) must not change.  Eq. 7's numerator
    E_r[x y] - E_r[x] E[y] changes by exactly m (E_r[y] - E[y]) (Kindermans et
    al., 2017, on input invariance), checked here against that closed form.
    """
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2000, 3)) @ rng.normal(size=(3, 3))
    w, b = rng.normal(size=(3, 2)), np.array([0.3, -0.2])
    m = np.array([5.0, -3.0, 2.0])
    plain, shifted = dense_stats(3, 2), dense_stats(3, 2)
    plain.update(sums_of(x, w, b))
    shifted.update(sums_of(x + m, w, b - m @ w))
    found, _ = plain.finalize(w, TYPES)
    moved, _ = shifted.finalize(w, TYPES)
    for kind in ("linear", "relu.positive", "relu.negative"):
        np.testing.assert_allclose(moved[kind], found[kind], rtol=1e-8, atol=1e-10)
    y = x @ w
    pos = (y + b) > 0
    for regime, sel in (("positive", pos), ("negative", ~pos)):
        shift = m[:, None] * ((y * sel).sum(0) / sel.sum(0) - y.mean(0))[None]
        for stats, offset in ((plain, 0.0), (shifted, shift)):
            numerator = np.empty((3, 2))
            stats._numerator(f"relu_eq7.{regime}", numerator)
            count = sel.sum(0)
            expected = (x.T @ (y * sel)) / count - (x.T @ sel) / count * y.mean(0)
            np.testing.assert_allclose(numerator / count, expected + offset, rtol=1e-8)
    assert np.abs(moved["relu_eq7.positive"] - found["relu_eq7.positive"]).max() > 0.1


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_statistics_match_explicit_formulas(offset):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5)) + offset
    w, b = rng.normal(size=(5, 3)), rng.normal(size=3)
    b -= np.median(x @ w + b, axis=0)  # both regimes populated
    stats = dense_stats(5, 3)
    stats.update(sums_of(x, w, b))
    found, _ = stats.finalize(w, TYPES)
    expected = patterns_from_samples(x, w, b)
    for kind in TYPES:
        np.testing.assert_allclose(found[kind], expected[kind], rtol=1e-7, atol=1e-9)


def test_shifted_updates_and_merges_equal_one_unshifted_update():
    """Any shift is removed exactly; chunks and merges add up to the whole."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4)) + 50.0
    w, b = rng.normal(size=(4, 2)), np.array([-10.0, 5.0])
    whole = dense_stats(4, 2)
    whole.update(sums_of(x, w, b))
    parts = []
    for chunk in np.array_split(x, 3):
        mx = chunk.mean(0)
        my = mx @ w
        part = dense_stats(4, 2)
        part.update(sums_of(chunk, w, b, mx, my), x_shift=mx[:, None], y_shift=my[None])
        parts.append(part)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for name, value in whole.sums.items():
        np.testing.assert_allclose(merged.sums[name], value, rtol=1e-10, atol=1e-8)
    assert merged is not parts[0] and parts[0].count == 100


def test_state_dict_round_trip_and_validation():
    stats = dense_stats(3, 2)
    stats.update(sums_of(np.eye(3), np.ones((3, 2)), np.zeros(2)))
    again = PatternStatistics.from_state(stats.state_dict())
    assert again.config() == stats.config()
    for name in stats.sums:
        np.testing.assert_array_equal(again.sums[name], stats.sums[name])
    state = stats.state_dict()
    state["sum_xy"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"'sum_xy' has shape \(2, 3\); expected \(3, 2\)"):
        PatternStatistics.from_state(state)
    del state["sum_xy"]
    with pytest.raises(ValueError, match="lacks 'sum_xy'"):
        PatternStatistics.from_state(state)


def test_degenerate_neurons_get_zero_patterns_and_are_counted():
    """Never active, never inactive, zero weights: defined (zero) patterns, no NaN."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 3))
    w = rng.normal(size=(3, 4))
    w[:, 3] = 0.0                                  # zero filter: zero denominators
    b = np.array([-100.0, 100.0, 0.0, 1.0])        # never active, never inactive
    stats = dense_stats(3, 4)
    stats.update(sums_of(x, w, b))
    patterns, degenerate = stats.finalize(w, TYPES)
    assert degenerate == {"linear": 1, "relu.positive": 2, "relu.negative": 2,
                          "relu_eq7.positive": 2, "relu_eq7.negative": 2}
    for kind in TYPES:
        assert np.isfinite(patterns[kind]).all()
    assert not patterns["relu.positive"][:, 0].any() and not patterns["relu.negative"][:, 1].any()
    assert not patterns["linear"][:, 3].any()
    assert np.abs(patterns["relu.positive"][:, 1]).sum() > 0


def test_empty_statistics_are_all_degenerate():
    stats = dense_stats(2, 2)
    patterns, degenerate = stats.finalize(np.ones((2, 2)), TYPES)
    assert degenerate == {t: 2 for t in TYPES}
    assert all(not p.any() for p in patterns.values())


def test_depthwise_layout_neurons_are_input_channel_and_multiplier():
    """A depthwise kernel (kh, kw, in, mult) has in * mult neurons, each with its own fan-in."""
    rng = np.random.default_rng(5)
    k = rng.normal(size=(2, 2, 3, 2))
    stats = PatternStatistics(k.shape, (2, 3), regimes=False, x_shape=(2, 2, 3, 1))
    assert stats.neuron_shape == (1, 1, 3, 2) and stats.fan_in_axes == (0, 1)
    patches = rng.normal(size=(50, 2, 2, 3, 1))           # one patch per input channel
    y = (patches * k).sum((1, 2), keepdims=True)
    stats.update({"count": 50.0, "sum_x": patches.sum(0), "sum_y": y.sum(0),
                  "sum_xy": (patches * y).sum(0)})
    found, _ = stats.finalize(k, ("linear",))
    for c in range(3):
        expected = patterns_from_samples(patches[..., c, 0].reshape(50, 4),
                                         k[:, :, c, :].reshape(4, 2), np.zeros(2))
        np.testing.assert_allclose(found["linear"][:, :, c, :].reshape(4, 2),
                                   expected["linear"], rtol=1e-9)


def test_errors_say_what_was_received_and_what_is_accepted():
    with pytest.raises(ValueError, match=r"Unknown pattern_type 'relu.negative'.*'linear', 'relu'"):
        expand_pattern_type("relu.negative")
    assert expand_pattern_type(("relu", "linear")) == ("relu.positive", "relu.negative", "linear")
    linear_only = PatternStatistics((2, 2), (1,), regimes=False)
    with pytest.raises(ValueError, match="Cannot compute pattern type 'relu.positive'"):
        linear_only.finalize(np.ones((2, 2)), ("relu.positive",))
    with pytest.raises(ValueError, match=r"Kernel shape \(3, 2\) does not match"):
        linear_only.finalize(np.ones((3, 2)), ("linear",))
    with pytest.raises(ValueError, match="different layouts"):
        linear_only.merge(dense_stats(2, 2))
    with pytest.raises(ValueError, match="not broadcastable"):
        state_shapes((4, 3), (1,), True, (2, 1))
    with pytest.raises(ValueError, match="neuron axes"):
        PatternStatistics((4, 3), (5,))


def test_shrinkage_moves_few_sample_regimes_to_the_linear_pattern():
    """a_r = (n_r cov_r + k cov) / w^T(...): k = 0 is the published form, a large k the
    linear pattern, and w^T a = 1 for any k (independent closed forms, explicit samples)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 3))
    w = rng.normal(size=(3, 2))
    b = -np.sort(x @ w, axis=0)[-4]  # 3 samples in each neuron's positive regime
    stats = dense_stats(3, 2)
    stats.update(sums_of(x, w, b))
    plain, _ = stats.finalize(w, TYPES)
    k = 7.0
    shrunk, _ = stats.finalize(w, TYPES, shrinkage=k)
    y = x @ w
    for j in range(2):
        sel = (y[:, j] + b[j]) > 0
        assert sel.sum() == 3
        xr, yr = x[sel], y[sel, j]
        cov_r = (xr - xr.mean(0)).T @ (yr - yr.mean())
        cov = (x - x.mean(0)).T @ (y[:, j] - y[:, j].mean()) / len(x)
        expected = cov_r + k * cov
        np.testing.assert_allclose(shrunk["relu.positive"][:, j], expected / (w[:, j] @ expected),
                                   rtol=1e-8)
    np.testing.assert_allclose((w * shrunk["relu.positive"]).sum(0), 1.0, rtol=1e-10)
    far, _ = stats.finalize(w, TYPES, shrinkage=1e9)
    np.testing.assert_allclose(far["relu.positive"], plain["linear"], rtol=1e-5)
    np.testing.assert_allclose(stats.finalize(w, TYPES, shrinkage=0.0)[0]["relu.positive"],
                               plain["relu.positive"], rtol=0, atol=0)


@pytest.mark.parametrize("shape, axes, x_shape, regimes", [
    ((5, 7), (1,), (5, 1), True), ((3, 3, 4, 9), (3,), (3, 3, 4, 1), "positive"),
    ((3, 3, 4, 6), (2, 3), (3, 3, 4, 6), True), ((3, 3, 6, 4), (2,), (3, 3, 1, 4), False)],
    ids=["dense", "conv_positive", "depthwise", "transposed"])
def test_large_kernels_finalize_a_slice_of_neurons_at_a_time(shape, axes, x_shape, regimes,
                                                            monkeypatch):
    """Kernels above FINALIZE_CHUNK weights are finalized in slices of neurons along the last
    axis (when it indexes neurons: not for a transposed kernel): the same patterns and
    degenerate counts, to float64 summation order."""
    rng = np.random.default_rng(0)
    stats = PatternStatistics(shape, axes, regimes, x_shape)
    stats.update({k: rng.uniform(1, 2, v.shape) * (50 if k.startswith("count") else 1)
                  for k, v in stats.sums.items()} | {"count": 200.0})
    types = (("relu.positive",) if regimes == "positive" else
             ("linear", "relu.positive", "relu.negative") if regimes else ("linear",))
    w = rng.normal(size=shape)
    whole, degenerate = stats.finalize(w, types)
    monkeypatch.setattr(estimators, "FINALIZE_CHUNK", 5)
    sliced, sliced_degenerate = stats.finalize(w, types)
    assert sliced_degenerate == degenerate
    for kind in types:
        np.testing.assert_allclose(sliced[kind], whole[kind], rtol=1e-12,
                                   atol=1e-12 * np.abs(whole[kind]).max())


def test_readme_estimator_section_runs_as_written(capsys):
    """The README's "Adding a signal estimator" block prints what its comment says."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Adding a signal estimator", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    expected = re.search(r"^# (\{.*\})$", code, re.M).group(1)
    assert capsys.readouterr().out.strip() == expected
