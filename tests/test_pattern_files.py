"""Pattern files: round trips, atomic saves, and every damaged or mismatched file refused.

Each damage test edits a real file the way a disk, a network copy or a
hostile sender could, and checks that loading raises ``PatternFileError``
naming what was found and what was expected, never returning wrong patterns.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from innv_pattern.patterns import PatternComputer, PatternFileError, Patterns


def make_model(units: int = 4, names: tuple[str, str] = ("hidden", "out")) -> keras.Model:
    keras.utils.set_random_seed(21)
    return keras.Sequential([keras.Input((5,)),
                             keras.layers.Dense(units, activation="relu", name=names[0]),
                             keras.layers.BatchNormalization(name="bn"),
                             keras.layers.Dense(3, name=names[1])])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[keras.Model, Patterns, Path]:
    model = make_model()
    x = np.random.default_rng(0).normal(size=(128, 5)).astype("float32")
    patterns = PatternComputer(model, ("relu", "linear")).compute(x, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("files") / "model.patterns.h5"
    patterns.save(path)
    return model, patterns, path


@pytest.fixture
def copy(fitted, tmp_path) -> Path:
    target = tmp_path / "copy.patterns.h5"
    shutil.copy(fitted[2], target)
    return target


def assert_identical(a: Patterns, b: Patterns) -> None:
    assert (a.pattern_type, a.types, a.samples_seen, a.fingerprint, a.degenerate,
            a.library_version) == (b.pattern_type, b.types, b.samples_seen, b.fingerprint,
                                   b.degenerate, b.library_version)
    for kind in a.types:
        for name, value in a.for_type(kind).items():
            np.testing.assert_array_equal(b.for_type(kind)[name], value)
    for name, stats in a.statistics.items():
        assert b.statistics[name].config() == stats.config()
        for field, value in stats.sums.items():
            np.testing.assert_array_equal(b.statistics[name].sums[field], value)


def edit_metadata(path: Path, change) -> None:
    with h5py.File(path, "r+") as f:
        meta = json.loads(f.attrs["metadata"])
        change(meta)
        f.attrs["metadata"] = json.dumps(meta)


def test_round_trip(fitted):
    model, patterns, path = fitted
    loaded = Patterns.load(path, model=model)
    assert_identical(patterns, loaded)
    assert loaded.format_version == 2 and list(loaded) == ["hidden", "out"]
    assert loaded["hidden"].shape == (5, 4) and loaded.has_type("relu")
    assert_identical(patterns, Patterns.load(path))  # no model: no model checks


def test_round_trip_in_a_fresh_process(fitted, tmp_path):
    model, patterns, path = fitted
    model.save(tmp_path / "model.keras")
    script = (
        "import sys, numpy as np, keras\n"
        "from innv_pattern.patterns import Patterns\n"
        "model = keras.saving.load_model(sys.argv[1])\n"
        "p = Patterns.load(sys.argv[2], model=model)\n"
        "np.savez(sys.argv[3], samples=p.samples_seen,\n"
        "         **{f'{t}/{n}': v for t in p.types for n, v in p.for_type(t).items()})\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.keras"), str(path),
                    str(tmp_path / "out.npz")], check=True, timeout=120)
    found = np.load(tmp_path / "out.npz")
    assert int(found["samples"]) == patterns.samples_seen
    for kind in patterns.types:
        for name, value in patterns.for_type(kind).items():
            np.testing.assert_array_equal(found[f"{kind}/{name}"], value)


def test_save_is_atomic(fitted, copy, monkeypatch):
    """A failure mid-save (here a full disk) leaves the previous file intact."""
    _, patterns, _ = fitted
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    original = h5py.Group.create_dataset
    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="No space left"):
        patterns.save(copy)
    monkeypatch.undo()
    assert_identical(patterns, Patterns.load(copy))
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]


def test_truncated_files_are_refused(fitted, tmp_path):
    data = fitted[2].read_bytes()
    for size in (0, 8, 512, len(data) // 2, len(data) - 200, len(data) - 1):
        target = tmp_path / f"cut{size}.h5"
        target.write_bytes(data[:size])
        with pytest.raises(PatternFileError, match="cut"):
            Patterns.load(target)


def test_flipped_bytes_never_give_wrong_patterns(fitted, tmp_path):
    """Any flipped byte is an error, or (in unused bytes) changes nothing."""
    model, patterns, path = fitted
    data = path.read_bytes()
    refused = 0
    for position in range(0, len(data), max(len(data) // 150, 1)):
        damaged = bytearray(data)
        damaged[position] ^= 0x5A
        target = tmp_path / "flipped.h5"
        target.write_bytes(bytes(damaged))
        try:
            assert_identical(patterns, Patterns.load(target, model=model))
        except PatternFileError:
            refused += 1
    assert refused > 50


def test_flipped_pattern_value_fails_the_checksum(fitted, copy):
    with h5py.File(copy, "r") as f:
        offset = f["patterns/relu.positive/0"].id.get_offset()
    damaged = bytearray(copy.read_bytes())
    damaged[offset + 5] ^= 0x01
    copy.write_bytes(bytes(damaged))
    with pytest.raises(PatternFileError, match="does not match the checksum"):
        Patterns.load(copy)


def test_file_for_another_model_is_refused(fitted):
    _, _, path = fitted
    with pytest.raises(PatternFileError, match=r"no patterns for the model's kernel layer\(s\) "
                                               r"\['first', 'second'\].*the model does not have"):
        Patterns.load(path, model=make_model(names=("first", "second")))
    with pytest.raises(PatternFileError, match=r"layer 'hidden' has kernel shape \(5, 6\) in "
                                               r"the model, \(5, 4\) in the patterns"):
        Patterns.load(path, model=make_model(units=6))


def test_missing_layer_is_refused(fitted):
    model, _, path = fitted
    bigger = keras.Sequential([keras.Input((5,))] + model.layers
                              + [keras.layers.Dense(2, name="extra")])
    with pytest.raises(PatternFileError, match=r"no patterns for the model's kernel layer\(s\) "
                                               r"\['extra'\]"):
        Patterns.load(path, model=bigger)


def test_changed_weights_are_refused_unless_allowed(fitted):
    _, patterns, path = fitted
    model = make_model()
    Patterns.load(path, model=model)
    model.get_layer("out").kernel.assign(model.get_layer("out").kernel * 1.01)
    with pytest.raises(PatternFileError, match=r"weights of layer\(s\) \['out'\] changed.*"
                                               "allow_changed_weights=True"):
        Patterns.load(path, model=model)
    assert_identical(patterns, Patterns.load(path, model=model, allow_changed_weights=True))
    model = make_model()
    model.get_layer("bn").moving_variance.assign([2.0] * 4)
    with pytest.raises(PatternFileError, match="BatchNormalization statistics"):
        Patterns.load(path, model=model)


def test_newer_format_version_is_refused(copy):
    with h5py.File(copy, "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(PatternFileError, match="format version 3 by a newer innv_pattern; this "
                                               "version reads format versions up to 2"):
        Patterns.load(copy)


def test_version_1_relu_patterns_are_refused(copy):
    """Version 1's 'relu' patterns used Eq. 7's global mean and own-sign regimes: refit, say so."""
    with h5py.File(copy, "r+") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(PatternFileError, match="format version 1 .*Fit the patterns again"):
        Patterns.load(copy)


def test_wrong_pattern_type_is_refused(fitted, copy):
    with pytest.raises(PatternFileError, match=r"holds pattern types \['relu.positive', "
                                               r"'relu.negative', 'linear'\]; expected 'signal'"):
        Patterns.load(fitted[2], pattern_type="signal")
    edit_metadata(copy, lambda m: m.update(pattern_type="signal"))
    with pytest.raises(PatternFileError, match="unknown pattern type: Unknown pattern_type "
                                               "'signal'"):
        Patterns.load(copy)


def test_types_not_matching_the_pattern_type_are_refused(copy):
    edit_metadata(copy, lambda m: m.update(pattern_type="linear"))
    with pytest.raises(PatternFileError, match="do not fit its pattern_type 'linear'"):
        Patterns.load(copy)


def test_unexpected_and_missing_objects_are_refused(fitted, tmp_path):
    def damaged(edit) -> Path:
        target = tmp_path / "edited.h5"
        shutil.copy(fitted[2], target)
        with h5py.File(target, "r+") as f:
            edit(f)
        return target

    cases = [
        (lambda f: f.create_dataset("payload", data=np.zeros(3)), r"unexpected objects \['payload'\]"),
        (lambda f: f["patterns/linear/0"].attrs.create("x", 1), "unexpected attributes"),
        (lambda f: f.__setitem__("patterns/link", h5py.SoftLink("/patterns/linear")), "link"),
        (lambda f: f.__delitem__("statistics/1"), r"lacks datasets \['statistics/1/count'"),
        (lambda f: f.attrs.create("pickle", b"cos\nsystem"), "root attributes"),
    ]
    for edit, message in cases:
        with pytest.raises(PatternFileError, match=message):
            Patterns.load(damaged(edit))


def test_wrong_dtypes_and_shapes_are_refused(fitted, tmp_path):
    def replaced(key: str, value: np.ndarray) -> Path:
        target = tmp_path / "replaced.h5"
        shutil.copy(fitted[2], target)
        with h5py.File(target, "r+") as f:
            del f[key]
            f.create_dataset(key, data=value)
        return target

    with pytest.raises(PatternFileError, match="'patterns/linear/0' has dtype float64; "
                                               "expected float32"):
        Patterns.load(replaced("patterns/linear/0", np.zeros((5, 4))))
    with pytest.raises(PatternFileError, match=r"'patterns/linear/0' has shape \(4, 5\); "
                                               r"expected \(5, 4\)"):
        Patterns.load(replaced("patterns/linear/0", np.zeros((4, 5), "float32")))
    with pytest.raises(PatternFileError, match="has dtype object"):
        Patterns.load(replaced("statistics/0/count", np.array([b"x"], dtype=object)))


def test_hostile_declared_sizes_are_refused_before_reading(copy):
    def huge(meta):
        meta["fingerprint"]["shapes"][0] = [100000, 100000]
        meta["layers"][0]["statistics"].update(kernel_shape=[100000, 100000],
                                                x_shape=[100000, 1])
    edit_metadata(copy, huge)
    with pytest.raises(PatternFileError, match="declares .* bytes of arrays but the file has "
                                               "only"):
        Patterns.load(copy)
    edit_metadata(copy, lambda m: m["fingerprint"]["shapes"].__setitem__(0, [5, -4]))
    with pytest.raises(PatternFileError, match=r"kernel shape \[5, -4\].*positive integers"):
        Patterns.load(copy)


def test_unallocated_dataset_is_refused(fitted, tmp_path):
    """A dataset declared but never written would read as fill values."""
    target = tmp_path / "hollow.h5"
    shutil.copy(fitted[2], target)
    with h5py.File(target, "r+") as f:
        del f["patterns/linear/0"]
        f.create_dataset("patterns/linear/0", shape=(5, 4), dtype="<f4")
    with pytest.raises(PatternFileError, match="stores 0 bytes"):
        Patterns.load(target)


def test_not_pattern_files_are_refused(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("just text")
    with pytest.raises(PatternFileError, match="cannot be read as a pattern file"):
        Patterns.load(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("weights", data=np.ones(3))
    with pytest.raises(PatternFileError, match="not an innv_pattern pattern file"):
        Patterns.load(other)
    with pytest.raises(FileNotFoundError, match="No pattern file"):
        Patterns.load(tmp_path / "absent.h5")


def test_malformed_metadata_is_refused(copy):
    with h5py.File(copy, "r+") as f:
        f.attrs["metadata"] = "{not json"
    with pytest.raises(PatternFileError, match="not valid JSON"):
        Patterns.load(copy)
    with h5py.File(copy, "r+") as f:
        f.attrs["metadata"] = json.dumps({"samples_seen": 3})
    with pytest.raises(PatternFileError, match=r"metadata keys \['samples_seen'\]; expected"):
        Patterns.load(copy)


def test_files_without_statistics_load_but_cannot_resume(fitted, tmp_path):
    model, patterns, _ = fitted
    path = tmp_path / "small.h5"
    patterns.save(path, statistics=False)
    loaded = Patterns.load(path, model=model)
    assert loaded.statistics is None
    np.testing.assert_array_equal(loaded["hidden"], patterns["hidden"])
    with pytest.raises(ValueError, match="carry no statistics"):
        PatternComputer(model, ("relu", "linear")).load_state(path)
