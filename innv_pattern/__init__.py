"""innv_pattern: PatternNet and PatternAttribution for TensorFlow 2 / Keras 3.

Example:
    >>> import innv_pattern as ip
    >>> "pattern.attribution" in ip.list_analyzers()
    True
"""

__version__ = "0.1.0"

from innv_pattern.analyzers import Analyzer, create_analyzer, list_analyzers  # noqa: E402

__all__ = ["Analyzer", "create_analyzer", "list_analyzers", "__version__"]
