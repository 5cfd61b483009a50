"""Progress that reads well in a terminal and in a log file.

In a terminal, one line is rewritten in place (``\\r``).  Anywhere else (a
file, a pipe, a notebook's captured output, CI logs) it prints plain lines,
at most one per ``interval`` seconds and one at the end, with no control
characters: Keras's ``Progbar`` writes ``\\r``, ``\\b`` and ANSI codes into
log files, and shows ``64/Unknown`` for a dataset whose length is known.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> bar = Progress(40, "batch", stream=out, interval=0)
    >>> bar.update(20, note="640 samples, 1000 samples/s")
    >>> bar.update(40, note="1280 samples, 1000 samples/s")
    >>> bar.done()
    >>> print(out.getvalue())
    20/40 batches (50%), 640 samples, 1000 samples/s
    40/40 batches (100%), 1280 samples, 1000 samples/s
    <BLANKLINE>
"""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["Progress"]


class Progress:
    """A progress line for ``target`` units (``None``: unknown).

    Args:
        target: Units expected in all, or ``None``.
        unit: The unit's name (singular).
        stream: Where to write (default ``sys.stdout``).
        interval: Seconds between lines when the stream is not a terminal.
        terminal: Whether to rewrite one line in place; default: whether
            ``stream`` is a terminal.
    """

    def __init__(self, target: int | None, unit: str, stream: IO[str] | None = None,
                 interval: float = 30.0, terminal: bool | None = None) -> None:
        self.target = None if target is None else int(target)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stdout
        self.interval = float(interval)
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty()) if terminal is None else terminal
        self.current, self.note = 0, ""
        self._last = float("-inf")
        self._width, self._written = 0, None

    def update(self, current: int, note: str = "") -> None:
        """Records ``current`` units done, and a note to show after the count."""
        self.current, self.note = int(current), note
        now = time.monotonic()
        if self.terminal or now - self._last >= self.interval:
            self._last = now
            self._write()

    def done(self) -> None:
        """Writes the final line (the target becomes what was done if it was unknown)."""
        if self.target is None or self.current > self.target:
            self.target = self.current
        self._write(final=True)

    def line(self) -> str:
        """The progress text, without control characters."""
        unit = self.unit + ("es" if self.unit.endswith(("s", "x", "sh", "tch")) else "s")
        if self.target:
            text = (f"{self.current}/{self.target} {unit} "
                    f"({100 * self.current / self.target:.0f}%)")
        else:
            text = f"{self.current} {unit}"
        return text + (f", {self.note}" if self.note else "")

    def _write(self, final: bool = False) -> None:
        text = self.line()
        if final and not self.terminal and text == self._written:
            return
        self._written = text
        if self.terminal:
            pad = " " * max(self._width - len(text), 0)
            self._width = len(text)
            self.stream.write("\r" + text + pad + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
