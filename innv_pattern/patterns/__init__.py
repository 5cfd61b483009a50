"""Fitting, keeping and reusing patterns (PatternNet / PatternAttribution).

* :class:`PatternComputer` fits the patterns of every kernel layer in one
  streaming pass (tf.data, tf.distribute, resumable and mergeable);
* :class:`Patterns` holds them with their metadata and reads and writes
  validated HDF5 files;
* :mod:`~innv_pattern.patterns.estimators` has the estimators themselves as
  float64 sufficient statistics, independent of Keras.

Example:
    >>> import keras, numpy as np
    >>> from innv_pattern.patterns import PatternComputer
    >>> inp = keras.Input((2,))
    >>> model = keras.Model(inp, keras.layers.Dense(1, name="w")(inp))
    >>> patterns = PatternComputer(model, "linear").compute(np.eye(2, dtype="float32"), verbose=0)
    >>> patterns["w"].shape
    (2, 1)
"""

from importlib import import_module
from typing import Any

#: Each export and the module that declares it, imported when first used: the
#: estimators (numpy only) never wait for TensorFlow.
_EXPORTS = {
    "PatternComputer": "computer",
    "ESTIMATORS": "estimators", "Estimator": "estimators", "PATTERN_TYPES": "estimators",
    "PatternStatistics": "estimators", "expand_pattern_type": "estimators",
    "Fingerprint": "fingerprint",
    "FORMAT_VERSION": "io", "PatternFileError": "io", "Patterns": "io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f"innv_pattern.patterns.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'innv_pattern.patterns' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
