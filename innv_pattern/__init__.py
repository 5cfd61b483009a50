"""innv_pattern."""
__version__ = "0.1.0"
