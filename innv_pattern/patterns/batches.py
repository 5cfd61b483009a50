"""Helpers for the batches a :class:`~innv_pattern.patterns.PatternComputer` reads.

Example:
    >>> skipped_batches(iter([4, 4, 4]), 8)
    2
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import tensorflow as tf

__all__ = ["generator_dataset", "samples_in_batch", "skipped_batches"]


def samples_in_batch(batch: Any) -> int:
    """Samples in a batch: the length of its first array (``x``'s first input)."""
    first = tf.nest.flatten(batch)[0]
    return int(first.shape[0]) if hasattr(first, "shape") else len(first)


def skipped_batches(sizes: Iterator[int], skip: int) -> int:
    """Consumes batch sizes until they add up to ``skip``; returns how many batches that took."""
    counted = batches = 0
    while counted < skip:
        size = next(sizes, None)
        if size is None:
            raise ValueError(f"Cannot skip the {skip} samples a checkpoint has seen: the data "
                             f"has {counted}. Resume on the data of that fit.")
        counted, batches = counted + int(size), batches + 1
    if counted > skip:
        raise ValueError(f"Cannot skip the {skip} samples a checkpoint has seen: batch "
                         f"{batches - 1} (0-based) of the data spans samples "
                         f"{counted - int(size)} to {counted}, so the skip ends inside it. Resume "
                         "with the batching of the interrupted fit (the same batch size).")
    return batches


def generator_dataset(iterator: Iterator[Any]) -> tf.data.Dataset:
    first = next(iterator, None)
    if first is None:
        return tf.data.Dataset.from_tensors(np.zeros((0,))).take(0)
    signature = tf.nest.map_structure(
        lambda t: tf.TensorSpec((None,) + np.shape(t)[1:], tf.as_dtype(np.asarray(t).dtype)),
        first)

    def generate() -> Iterator[Any]:
        yield first
        yield from iterator

    return tf.data.Dataset.from_generator(generate, output_signature=signature)
