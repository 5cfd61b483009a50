"""Pattern files on the command line: loading with clear messages, a scale check, and
where an interrupted fit keeps its statistics (and what to say when a worker is lost).

Example:
    >>> _scale_note(117.0, 0.42, "conv")[:38]
    "inputs average 117 at layer 'conv', bu"
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Any, NoReturn

import numpy as np

from innv_pattern.cli_io import UserError, check_exists

__all__ = [
    "check_input_scale", "is_lost_peer", "load_patterns", "lost_peer_message", "partial_path",
    "save_partial",
]

#: How much larger (or smaller) the inputs' mean may be than the fitting data's before a note.
SCALE_RATIO = 20.0


def load_patterns(path: str, model: Any, allow_changed_weights: bool = False) -> Any:
    """The pattern file ``path`` for ``model``; a file of another kind says what it is."""
    import h5py

    from innv_pattern.patterns import PatternFileError, Patterns

    check_exists(path, "Pattern file")
    if not h5py.is_hdf5(path):
        raise UserError(f"Pattern file '{path}' is not an HDF5 file; --patterns takes the .h5 "
                        "file that 'innv-pattern fit' writes.")
    try:
        return Patterns.load(path, model=model, allow_changed_weights=allow_changed_weights)
    except PatternFileError as err:
        text = str(err).replace("pass allow_changed_weights=True",
                                "pass --allow-changed-weights")
        raise UserError(text) from None


def check_input_scale(model: Any, patterns: Any, x: np.ndarray) -> None:
    """Warns when ``x`` is on another scale than the data the patterns were fitted on.

    Compares the mean input of the first kernel layer over (up to 64 samples
    of) ``x`` with the mean the fit recorded in its statistics (a file saved
    without statistics cannot be checked).
    """
    import tensorflow as tf

    from innv_pattern.canonize import canonize

    graph = canonize(model)
    first = next((op for op in graph.kernel_ops if patterns.statistics is not None
                  and op.pattern_key in patterns.statistics), None)
    if first is None:
        return
    stats = patterns.statistics[first.pattern_key]
    fitted = float(np.sum(stats.sums["sum_x"]) / max(stats.count * stats.sums["sum_x"].size, 1))
    _, values = graph.run([tf.constant(x[:64], tf.float32)], keep=True)
    seen = float(np.mean(values[first.inputs[0]]))
    low, high = sorted((abs(fitted), abs(seen)))
    if high > SCALE_RATIO * max(low, 0.05):
        warnings.warn(_scale_note(seen, fitted, first.name), stacklevel=2)


def _scale_note(seen: float, fitted: float, layer: str) -> str:
    larger = abs(seen) > abs(fitted)
    word, example = (("larger", "0-255 images against a fit on [0, 1]: pass --scale 1/255")
                     if larger else
                     ("smaller", "[0, 1] inputs against a fit on 0-255 images: pass --scale 255"))
    factor = max(abs(seen), abs(fitted)) / max(min(abs(seen), abs(fitted)), 1e-12)
    return (f"inputs average {seen:.3g} at layer '{layer}', but the data the patterns were "
            f"fitted on averaged {fitted:.3g} there: the inputs look {factor:.0f}x {word} than "
            f"the fit's (e.g. {example}; see also --offset and --preprocess).")


def partial_path(out: str) -> str:
    """Where an interrupted (or checkpointed) fit keeps its statistics: OUT.partial.h5."""
    return os.path.splitext(out)[0] + ".partial.h5"


def save_partial(computer: Any, partial: str, resumed: int, skipped: int,
                 checkpointed: bool) -> NoReturn:
    """Saves the statistics of an interrupted fit and says how to continue it."""
    seen = computer.samples_seen - resumed
    if computer.samples_seen == 0:
        raise KeyboardInterrupt
    if checkpointed:  # compute saved them when interrupted
        raise UserError(f"Interrupted after {computer.samples_seen} samples; their statistics "
                        f"are in '{partial}'. Continue with the same command: it resumes from "
                        "there and skips the samples already seen.")
    computer.save_state(partial)
    raise UserError(f"Interrupted after {computer.samples_seen} samples; their statistics are in "
                    f"'{partial}'. Continue with: --resume {partial} --skip {skipped + seen}")


def is_lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow's report of a worker (or device) that stopped answering."""
    import tensorflow as tf

    return isinstance(err, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError))


def lost_peer_message(err: BaseException, partial: str) -> str:
    """Which worker was lost, where the statistics are, and the command that continues."""
    from innv_pattern.patterns import Patterns

    task = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", str(err))
    who = f"{task.group(1)} {task.group(2)}" if task else "a worker"
    saved = 0
    with contextlib.suppress(Exception):
        saved = Patterns.load(partial).samples_seen
    where = (f"the statistics of {saved} samples are in '{partial}': continue on one machine "
             "with the same command and --strategy default (it resumes from there)" if saved
             else "no statistics were kept (--checkpoint-every N keeps them); start again")
    return (f"The multi-worker fit lost {who} (it stopped answering: "
            f"{type(err).__name__}); {where}, or restart the lost worker and run the same "
            "command on every worker.")
