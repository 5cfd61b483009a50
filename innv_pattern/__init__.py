"""innv_pattern: PatternNet and PatternAttribution for TensorFlow 2 / Keras 3.

The public names are loaded on first use, so ``import innv_pattern`` (and the
``innv-pattern`` command's argument checks) do not wait for TensorFlow.

Example:
    >>> import innv_pattern as ip
    >>> "pattern.attribution" in ip.list_analyzers()
    True
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Analyzer": "innv_pattern.analyzers",
    "analyzer_classes": "innv_pattern.analyzers",
    "create_analyzer": "innv_pattern.analyzers",
    "list_analyzers": "innv_pattern.analyzers",
    "PatternComputer": "innv_pattern.patterns",
    "Patterns": "innv_pattern.patterns",
    "PatternFileError": "innv_pattern.patterns",
}

__all__ = sorted(_EXPORTS) + ["__version__"]
#: Subpackages reachable as attributes (``ip.evaluate``), imported on first use.
_SUBMODULES = ("datasets", "evaluate", "viz")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return import_module(f"innv_pattern.{name}")
    raise AttributeError(f"module 'innv_pattern' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
