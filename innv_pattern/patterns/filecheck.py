"""Validation of pattern files, before any array is read.

Everything in a file is distrusted: the header and the JSON metadata are
checked field by field, the datasets the metadata implies are compared with
what the file holds (names, links, dtypes, shapes, storage) and their declared
sizes with the file's size, and only then are arrays read and checked against
a sha256 checksum.  Errors are :class:`PatternFileError` (exported by
:mod:`innv_pattern.patterns`) with what was found and what was expected.

Example:
    >>> import numpy as np
    >>> len(checksum("{}", {"a": np.zeros(2, "<f4")}))
    64
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import h5py
import numpy as np

from innv_pattern.patterns.estimators import POSITIVE, expand_pattern_type, state_shapes

__all__ = ["PatternFileError", "check_structure", "checksum", "expected_datasets", "header"]

MAX_RANK = 8
_ROOT_ATTRS = {"format", "format_version", "metadata", "checksum"}
_META_TYPES = {"library_version": str, "samples_seen": int, "pattern_type": (str, list),
               "types": list, "fingerprint": dict, "layers": list, "has_statistics": bool}


class PatternFileError(ValueError):
    """A pattern file that cannot be used: damaged, or for another model."""


def checksum(metadata: str, datasets: Mapping[str, Any]) -> str:
    """sha256 of the metadata and every dataset (name, dtype, shape, bytes)."""
    h = hashlib.sha256(metadata.encode("utf-8"))
    for key in sorted(datasets):
        value = np.ascontiguousarray(np.asarray(datasets[key]))
        h.update(f"\0{key}\0{value.dtype.str}\0{value.shape}\0".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def header(f: h5py.File, path: str, format_name: str, version: int) -> dict[str, Any]:
    """The validated metadata (with ``checksum``) of an open pattern file."""
    attrs = set(f.attrs.keys())
    if f.attrs.get("format") != format_name:
        raise PatternFileError(f"'{path}' is not an innv_pattern pattern file: its 'format' "
                               f"attribute is {f.attrs.get('format')!r}; expected "
                               f"{format_name!r}.")
    if attrs != _ROOT_ATTRS:
        raise PatternFileError(f"'{path}' has root attributes {sorted(attrs)}; expected "
                               f"{sorted(_ROOT_ATTRS)}.")
    found = f.attrs["format_version"]
    if not isinstance(found, (int, np.integer)) or found < 1:
        raise PatternFileError(f"'{path}' has format_version {found!r}; expected an integer from "
                               f"1 to {version}.")
    if found > version:
        raise PatternFileError(f"'{path}' was written in format version {int(found)} by a newer "
                               "innv_pattern; this version reads format versions up to "
                               f"{version}. Upgrade innv_pattern to load it.")
    text, digest = f.attrs["metadata"], f.attrs["checksum"]
    if not isinstance(text, str) or not isinstance(digest, str) or len(digest) != 64:
        raise PatternFileError(f"'{path}' has a malformed metadata or checksum attribute "
                               f"(received {type(text).__name__} and {type(digest).__name__}; "
                               "expected strings).")
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise PatternFileError(f"'{path}' has metadata that is not valid JSON ({err}).") from None
    _check_metadata(meta, path)
    return {**meta, "checksum": digest}


def _check_metadata(meta: Any, path: str) -> None:
    if not isinstance(meta, dict) or set(meta) != set(_META_TYPES):
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise PatternFileError(f"'{path}' has metadata keys {keys}; expected "
                               f"{sorted(_META_TYPES)}.")
    for key, kind_of_value in _META_TYPES.items():
        value = meta[key]
        if not isinstance(value, kind_of_value) or (kind_of_value is int
                                                    and isinstance(value, bool)):
            raise PatternFileError(f"'{path}' metadata '{key}' is {value!r}; expected "
                                   f"{kind_of_value}.")
    try:
        expected_types = expand_pattern_type(meta["pattern_type"])
    except (ValueError, TypeError) as err:
        raise PatternFileError(f"'{path}' has an unknown pattern type: {err}") from None
    types = meta["types"]
    if (not types or types[0] != expected_types[0] or len(set(types)) != len(types)
            or any(t not in expected_types for t in types)):
        raise PatternFileError(f"'{path}' holds pattern types {types!r}, which do not fit its "
                               f"pattern_type {meta['pattern_type']!r} (expected types among "
                               f"{list(expected_types)}, starting with {expected_types[0]!r}).")
    _check_fingerprint(meta["fingerprint"], path)
    if meta["samples_seen"] < 0:
        raise PatternFileError(f"'{path}' has samples_seen {meta['samples_seen']}; expected >= 0.")
    _check_layers(meta, path)


def _check_fingerprint(fp: Any, path: str) -> None:
    keys = {"names", "shapes", "kernel_digests", "weights_digest"}
    if set(fp) != keys or not isinstance(fp["weights_digest"], str):
        raise PatternFileError(f"'{path}' has a fingerprint with keys {sorted(fp)}; expected "
                               f"{sorted(keys)}.")
    names, shapes, digests = fp["names"], fp["shapes"], fp["kernel_digests"]
    if not (isinstance(names, list) and isinstance(shapes, list) and isinstance(digests, list)
            and len(names) == len(shapes) == len(digests) and names
            and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
            and all(isinstance(d, str) for d in digests)):
        raise PatternFileError(f"'{path}' has a malformed fingerprint: expected equally long, "
                               "non-empty lists of distinct layer names, kernel shapes and "
                               "digests.")
    for name, shape in zip(names, shapes):
        if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_RANK
                or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape)):
            raise PatternFileError(f"'{path}' declares kernel shape {shape!r} for layer '{name}'; "
                                   f"expected 1 to {MAX_RANK} positive integers.")


def _check_layers(meta: dict[str, Any], path: str) -> None:
    names, shapes = meta["fingerprint"]["names"], meta["fingerprint"]["shapes"]
    layers = meta["layers"]
    if len(layers) != len(names):
        raise PatternFileError(f"'{path}' describes {len(layers)} layers; its fingerprint lists "
                               f"{len(names)}.")
    for name, shape, layer in zip(names, shapes, layers):
        if not isinstance(layer, dict) or set(layer) != {"name", "degenerate", "statistics"}:
            raise PatternFileError(f"'{path}' has a malformed entry for layer '{name}'.")
        if layer["name"] != name:
            raise PatternFileError(f"'{path}' lists layer {layer['name']!r} where its fingerprint "
                                   f"has '{name}'.")
        degenerate = layer["degenerate"]
        if not isinstance(degenerate, dict) or any(
                k not in meta["types"] or not isinstance(v, int) or isinstance(v, bool)
                or not 0 <= v <= int(np.prod(shape)) for k, v in degenerate.items()):
            raise PatternFileError(f"'{path}' has degenerate-neuron counts {degenerate!r} for "
                                   f"layer '{name}'; expected counts per pattern type within the "
                                   "layer's size.")
        stats = layer["statistics"]
        if (stats is None) == meta["has_statistics"]:
            raise PatternFileError(f"'{path}' has statistics for layer '{name}' {stats!r} "
                                   f"although has_statistics is {meta['has_statistics']}.")
        declared = stats.get("kernel_shape") if isinstance(stats, dict) else stats
        if stats is not None and declared != shape:
            raise PatternFileError(f"'{path}' has statistics for layer '{name}' of kernel shape "
                                   f"{declared!r}; expected {shape}.")


def expected_datasets(meta: dict[str, Any], path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every dataset the metadata implies: ``{key: (shape, dtype)}``."""
    names, shapes = meta["fingerprint"]["names"], meta["fingerprint"]["shapes"]
    expected = {f"patterns/{t}/{i}": (tuple(s), "<f4")
                for t in meta["types"] for i, s in enumerate(shapes)}
    if not meta["has_statistics"]:
        return expected
    for i, (name, layer) in enumerate(zip(names, meta["layers"])):
        config = layer["statistics"]
        try:
            fields = state_shapes(config["kernel_shape"], config["neuron_axes"],
                                  config["regimes"], config["x_shape"])
        except (KeyError, TypeError, ValueError) as err:
            raise PatternFileError(f"'{path}' has invalid statistics layout for layer '{name}': "
                                   f"{err}") from None
        if set(config) != {"kernel_shape", "neuron_axes", "regimes", "x_shape"} or not (
                isinstance(config["regimes"], bool) or config["regimes"] == POSITIVE):
            raise PatternFileError(f"'{path}' has statistics layout keys {sorted(config)} for "
                                   f"layer '{name}'; expected kernel_shape, neuron_axes, regimes, "
                                   "x_shape.")
        expected.update({f"statistics/{i}/{k}": (s, "<f8") for k, s in fields.items()})
    return expected


def check_structure(f: h5py.File, expected: dict[str, tuple[tuple[int, ...], str]],
                    file_size: int, path: str) -> None:
    """Compares the file's objects with ``expected``; reads no array."""
    declared = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
                   for shape, dtype in expected.values())
    if declared > file_size:
        raise PatternFileError(f"'{path}' declares {declared} bytes of arrays but the file has "
                               f"only {file_size} bytes: truncated, or its shapes are not to be "
                               "believed.")
    groups = {key.rsplit("/", i)[0] for key in expected for i in range(1, key.count("/") + 1)}
    found: dict[str, Any] = {}
    _walk(f, "", found, path)
    unexpected = sorted(set(found) - set(expected) - groups)
    missing = sorted(set(expected) - set(found))
    if unexpected:
        raise PatternFileError(f"'{path}' holds unexpected objects {unexpected[:10]}; expected "
                               "only pattern and statistics arrays of the layers its metadata "
                               "lists.")
    if missing:
        raise PatternFileError(f"'{path}' lacks datasets {missing[:10]} that its metadata implies "
                               "(missing layer or pattern type).")
    for key, (shape, dtype) in expected.items():
        _check_dataset(found[key], key, shape, dtype, path)


def _walk(group: h5py.Group, prefix: str, found: dict[str, Any], path: str) -> None:
    for name in group:
        key = f"{prefix}{name}"
        if not isinstance(group.get(name, getlink=True), h5py.HardLink):
            raise PatternFileError(f"'{path}' holds a link '{key}'; pattern files hold no links.")
        obj = group[name]
        if len(obj.attrs):
            raise PatternFileError(f"'{path}' has unexpected attributes {list(obj.attrs)} on "
                                   f"'{key}'.")
        found[key] = obj
        if isinstance(obj, h5py.Group):
            _walk(obj, key + "/", found, path)


def _check_dataset(obj: Any, key: str, shape: tuple[int, ...], dtype: str, path: str) -> None:
    if not isinstance(obj, h5py.Dataset):
        raise PatternFileError(f"'{path}': '{key}' is a {type(obj).__name__}; expected a dataset.")
    if obj.dtype != np.dtype(dtype):
        raise PatternFileError(f"'{path}': dataset '{key}' has dtype {obj.dtype}; expected "
                               f"{np.dtype(dtype)}.")
    if tuple(obj.shape) != tuple(shape):
        raise PatternFileError(f"'{path}': dataset '{key}' has shape {tuple(obj.shape)}; expected "
                               f"{tuple(shape)}.")
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if obj.chunks is not None or obj.id.get_create_plist().get_nfilters() or (
            obj.id.get_storage_size() != nbytes):
        raise PatternFileError(f"'{path}': dataset '{key}' stores {obj.id.get_storage_size()} "
                               f"bytes (chunks {obj.chunks}); expected {nbytes} contiguous, "
                               "unfiltered bytes.")
