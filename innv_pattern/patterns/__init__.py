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

from innv_pattern.patterns.computer import PatternComputer
from innv_pattern.patterns.estimators import PATTERN_TYPES, PatternStatistics, expand_pattern_type
from innv_pattern.patterns.fingerprint import Fingerprint
from innv_pattern.patterns.io import FORMAT_VERSION, PatternFileError, Patterns

__all__ = [
    "FORMAT_VERSION",
    "Fingerprint",
    "PATTERN_TYPES",
    "PatternComputer",
    "PatternFileError",
    "PatternStatistics",
    "Patterns",
    "expand_pattern_type",
]
