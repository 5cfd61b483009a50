"""Fitted patterns, and HDF5 pattern files that are safe to keep and share.

A file holds, per kernel layer and pattern type, the pattern (float32), the
float64 statistics it came from (so a fit can be resumed or merged later),
the samples seen, the model fingerprint, and the library and format
versions.  Saving is atomic.  Loading checks the structure (declared shapes
and sizes before any array is read), a sha256 checksum over the content, and
the model; it never unpickles or evaluates anything from the file.

Example:
    >>> import os, tempfile, keras, numpy as np
    >>> from innv_pattern.patterns import PatternComputer, Patterns
    >>> inp = keras.Input((3,))
    >>> model = keras.Model(inp, keras.layers.Dense(2, activation="relu", name="d")(inp))
    >>> x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    >>> patterns = PatternComputer(model).compute(x, verbose=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.patterns.h5")
    >>> patterns.save(path)
    >>> loaded = Patterns.load(path, model=model)
    >>> bool(np.array_equal(loaded["d"], patterns["d"])), loaded.pattern_type
    (True, 'relu')
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Iterator, Mapping

import h5py
import keras
import numpy as np

from innv_pattern.canonize import CanonicalGraph
from innv_pattern.patterns import filecheck
from innv_pattern.patterns.estimators import (PATTERN_TYPES, PatternStatistics,
                                              expand_pattern_type)
from innv_pattern.patterns.filecheck import PatternFileError
from innv_pattern.patterns.fingerprint import Fingerprint

__all__ = ["FORMAT_VERSION", "PatternFileError", "Patterns"]

#: Version of the file layout written by :meth:`Patterns.save`.
#: 2: ``relu`` is the within-regime estimator, regimes only where a rectifier gates a
#: layer, and ``Add``-type merges have patterns (version 1's ``relu`` was Eq. 7's
#: global-mean form with every layer's own sign as regime: refused, refit).
FORMAT_VERSION = 2
FORMAT_NAME = "innv_pattern.patterns"


def _library_version() -> str:
    from innv_pattern import __version__

    return __version__


class Patterns(Mapping[str, np.ndarray]):
    """Patterns by kernel-op name (the primary type's), with their metadata.

    ``patterns[name]`` is the pattern of the kernel op ``name``, shaped like
    its kernel: ``relu.positive`` for ``pattern_type="relu"`` (what
    PatternNet and PatternAttribution use), ``linear`` for ``"linear"``, the
    first one's for a tuple.  :meth:`for_type` gives any other type.

    Args:
        patterns: ``{type: {op name: array}}`` with concrete types
            (``"linear"``, ``"relu.positive"``, ``"relu.negative"``).
        pattern_type: What was fitted: ``"relu"``, ``"linear"`` or a tuple.
        fingerprint: The model's :class:`Fingerprint`.
        samples_seen: Number of input samples the patterns were fitted on.
        degenerate: ``{op name: {type: count}}`` of neurons whose pattern is
            zero because their regime had too few samples
            (:attr:`~innv_pattern.patterns.estimators.Estimator.min_samples`)
            or they had a zero denominator.
        statistics: ``{op name: PatternStatistics}`` to resume or merge, or
            ``None``.
        library_version: The innv_pattern version that fitted them.

    Attributes:
        types: The concrete pattern types held, the primary one first.
        format_version: Version of the file format (:data:`FORMAT_VERSION`).
    """

    format_version = FORMAT_VERSION

    def __init__(self, patterns: Mapping[str, Mapping[str, np.ndarray]],
                 pattern_type: str | tuple[str, ...], fingerprint: Fingerprint,
                 samples_seen: int = 0, degenerate: Mapping[str, Mapping[str, int]] | None = None,
                 statistics: Mapping[str, PatternStatistics] | None = None,
                 library_version: str | None = None) -> None:
        self.pattern_type = pattern_type if isinstance(pattern_type, str) else tuple(pattern_type)
        expected = expand_pattern_type(self.pattern_type)
        unknown = [t for t in patterns if t not in expected]
        if unknown or expected[0] not in patterns:
            raise ValueError(f"Pattern types {list(patterns)} do not fit pattern_type "
                             f"{self.pattern_type!r}, which gives {list(expected)} (the first "
                             "is required).")
        self.types = tuple(t for t in expected if t in patterns)
        self.fingerprint = fingerprint
        self._by_type = {t: _checked_arrays(patterns[t], t, fingerprint) for t in self.types}
        self.samples_seen = int(samples_seen)
        self.degenerate = {n: dict((degenerate or {}).get(n, {})) for n in fingerprint.names}
        self.statistics = None if statistics is None else {n: statistics[n]
                                                           for n in fingerprint.names}
        self.library_version = library_version or _library_version()

    def __getitem__(self, name: str) -> np.ndarray:
        return self._by_type[self.types[0]][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fingerprint.names)

    def __len__(self) -> int:
        return len(self.fingerprint.names)

    def __repr__(self) -> str:
        return (f"Patterns(pattern_type={self.pattern_type!r}, layers={len(self)}, "
                f"samples_seen={self.samples_seen})")

    def has_type(self, pattern_type: str) -> bool:
        """Whether :meth:`for_type` accepts ``pattern_type``."""
        return _resolve(pattern_type) in self.types

    def for_type(self, pattern_type: str) -> dict[str, np.ndarray]:
        """``{op name: pattern}`` of a concrete type, or ``"relu"`` / ``"linear"``.

        ``"relu"`` means ``"relu.positive"``, the pattern PatternNet uses.
        """
        concrete = _resolve(pattern_type)
        if concrete not in self.types:
            raise ValueError(f"These patterns hold types {list(self.types)}; received "
                             f"{pattern_type!r}. Fit them with pattern_type including it.")
        return dict(self._by_type[concrete])

    def check_model(self, model: keras.Model, allow_changed_weights: bool = False,
                    graph: CanonicalGraph | None = None) -> None:
        """Raises ``ValueError`` saying what differs if these patterns do not fit ``model``.

        Args:
            model: The model the patterns are meant for.
            allow_changed_weights: Accept kernels (or other weights) that
                changed since the fit; layer names and shapes must still match.
            graph: ``model``'s canonical graph, if at hand.
        """
        problems = self.fingerprint.mismatches(Fingerprint.of(model, graph),
                                               check_weights=not allow_changed_weights)
        if problems:
            hint = (" Fit the patterns again on this model, or pass allow_changed_weights=True "
                    "to use them anyway." if "changed" in problems[-1] else "")
            raise ValueError(f"These patterns do not fit model '{model.name}': "
                             + "; ".join(problems) + "." + hint)

    def save(self, path: str | os.PathLike, statistics: bool = True) -> None:
        """Writes an HDF5 file atomically (a crash never leaves a damaged file).

        The file is written next to ``path`` under a temporary name, flushed
        to disk, then renamed over ``path``.

        Args:
            path: Destination, conventionally ``*.patterns.h5``.
            statistics: Include the float64 statistics (needed to resume or
                merge fits; they are several times larger than the patterns).
        """
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with h5py.File(tmp, "x", libver="latest") as f:
                self._write(f, statistics and self.statistics is not None)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        _fsync_directory(directory)

    def _write(self, f: h5py.File, statistics: bool) -> None:
        datasets = {}
        for concrete in self.types:
            for i, name in enumerate(self.fingerprint.names):
                datasets[f"patterns/{concrete}/{i}"] = np.asarray(
                    self._by_type[concrete][name], "<f4")
        if statistics:
            for i, name in enumerate(self.fingerprint.names):
                for field, value in self.statistics[name].sums.items():
                    datasets[f"statistics/{i}/{field}"] = np.asarray(value, "<f8")
        metadata = json.dumps(self._metadata(statistics), sort_keys=True)
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["metadata"] = metadata
        f.attrs["checksum"] = filecheck.checksum(metadata, datasets)

    def _metadata(self, statistics: bool) -> dict[str, Any]:
        layers = []
        for name in self.fingerprint.names:
            stats = self.statistics[name].config() if statistics else None
            layers.append({"name": name, "degenerate": self.degenerate[name],
                           "statistics": stats})
        return {"library_version": self.library_version, "samples_seen": self.samples_seen,
                "pattern_type": self.pattern_type, "types": list(self.types),
                "fingerprint": self.fingerprint.to_json(), "layers": layers,
                "has_statistics": bool(statistics)}

    @classmethod
    def load(cls, path: str | os.PathLike, model: keras.Model | None = None,
             allow_changed_weights: bool = False, pattern_type: str | None = None) -> "Patterns":
        """Reads and validates a pattern file.

        Args:
            path: A file written by :meth:`save`.
            model: If given, the file must have been fitted on this model:
                same kernel layers, shapes and weights.
            allow_changed_weights: Accept a model whose weights changed since
                the fit (names and shapes must still match).
            pattern_type: If given (``"relu"``, ``"linear"`` or a concrete
                type), the file must hold it.

        Raises:
            PatternFileError: The file is not a pattern file, is truncated,
                corrupted or from a newer format version, holds unexpected
                objects, or does not fit ``model`` / ``pattern_type``. The
                message says what was found and what was expected.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No pattern file at '{path}'.")
        try:
            patterns = cls._read(path)
        except PatternFileError:
            raise
        except Exception as err:  # h5py reports damage with many exception types
            raise PatternFileError(f"'{path}' cannot be read as a pattern file; it is truncated "
                                   f"or corrupted ({type(err).__name__}: {err}).") from err
        if pattern_type is not None and not patterns.has_type(pattern_type):
            raise PatternFileError(f"'{path}' holds pattern types {list(patterns.types)}; "
                                   f"expected {pattern_type!r}.")
        if model is not None:
            try:
                patterns.check_model(model, allow_changed_weights)
            except ValueError as err:
                raise PatternFileError(f"'{path}': {err}") from None
        return patterns

    @classmethod
    def _read(cls, path: str) -> "Patterns":
        with h5py.File(path, "r") as f:
            meta = filecheck.header(f, path, FORMAT_NAME, FORMAT_VERSION)
            if int(f.attrs["format_version"]) == 1 and any(
                    t.startswith("relu") for t in meta.get("types", [])):
                raise PatternFileError(
                    f"'{path}' holds 'relu' patterns of format version 1 (innv_pattern < 0.2), "
                    "fitted with Eq. 7's global mean of y and every layer's own sign as its "
                    "regime; this version's estimators differ (see the README, 'Which "
                    "estimator'). Fit the patterns again.")
            expected = filecheck.expected_datasets(meta, path)
            filecheck.check_structure(f, expected, os.path.getsize(path), path)
            datasets = {key: f[key][()] for key in expected}
            if filecheck.checksum(f.attrs["metadata"], datasets) != meta["checksum"]:
                raise PatternFileError(f"'{path}' is corrupted: its content does not match the "
                                       "checksum written with it.")
        fingerprint = Fingerprint.from_json(meta["fingerprint"])
        names = fingerprint.names
        by_type = {t: {n: datasets[f"patterns/{t}/{i}"] for i, n in enumerate(names)}
                   for t in meta["types"]}
        statistics = None
        if meta["has_statistics"]:
            statistics = {}
            for i, (name, layer) in enumerate(zip(names, meta["layers"])):
                arrays = {k.rsplit("/", 1)[1]: v for k, v in datasets.items()
                          if k.startswith(f"statistics/{i}/")}
                statistics[name] = PatternStatistics.from_state({**layer["statistics"], **arrays})
        degenerate = {n: layer["degenerate"] for n, layer in zip(names, meta["layers"])}
        pattern_type = meta["pattern_type"]
        return cls(by_type, pattern_type if isinstance(pattern_type, str) else tuple(pattern_type),
                   fingerprint, meta["samples_seen"], degenerate, statistics,
                   meta["library_version"])


def _resolve(pattern_type: str) -> str:
    """``"relu"`` -> ``"relu.positive"``; concrete types unchanged."""
    return PATTERN_TYPES[pattern_type][0] if pattern_type in PATTERN_TYPES else pattern_type


def _checked_arrays(arrays: Mapping[str, np.ndarray], concrete: str,
                    fingerprint: Fingerprint) -> dict[str, np.ndarray]:
    missing = [n for n in fingerprint.names if n not in arrays]
    extra = [n for n in arrays if n not in fingerprint.names]
    if missing or extra:
        raise ValueError(f"'{concrete}' patterns are for layers {sorted(arrays)}; the fingerprint "
                         f"lists {list(fingerprint.names)} (missing {missing}, extra {extra}).")
    result = {}
    for name, shape in zip(fingerprint.names, fingerprint.shapes):
        value = np.asarray(arrays[name], np.float32)
        if value.shape != tuple(shape):
            raise ValueError(f"'{concrete}' pattern of layer '{name}' has shape {value.shape}; "
                             f"its kernel has shape {tuple(shape)}.")
        result[name] = value
    return result


def _fsync_directory(directory: str) -> None:
    """Makes the rename durable (where the platform allows opening directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
