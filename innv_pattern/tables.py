"""Plain-text tables for reports and the command line.

Example:
    >>> print(markdown_table(["analyzer", "AOPC"], [["Gradient", 0.12345]]))
    | analyzer | AOPC |
    |---|---|
    | Gradient | 0.123 |
"""

from __future__ import annotations

from typing import Any

__all__ = ["markdown_table"]


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats with 3 decimals."""
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])
