"""What a set of patterns was fitted on: kernel layers, shapes and weights.

Example:
    >>> import keras
    >>> inp = keras.Input((4,))
    >>> model = keras.Model(inp, keras.layers.Dense(2, name="dense_a")(inp))
    >>> fp = Fingerprint.of(model)
    >>> fp.names, fp.shapes
    (('dense_a',), ((4, 2),))
    >>> fp.mismatches(Fingerprint.of(model))
    []
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable

import keras
import numpy as np

from innv_pattern.canonize import CanonicalGraph, canonize

__all__ = ["Fingerprint"]


def _digest(variables: Iterable[Any]) -> str:
    """sha256 of the variables' shapes, dtypes and values, in order."""
    h = hashlib.sha256()
    for v in variables:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(v))
        h.update(f"{value.dtype.str}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """Identifies the model a set of patterns belongs to.

    Attributes:
        names: The pattern keys (kernel-op names, ``Add``-type merges
            included; a shared layer's calls share one), in graph order.
        shapes: Kernel shape of each op.
        kernel_digests: sha256 of the weights of each op's layer.
        weights_digest: sha256 of all the model's weights (BatchNormalization
            statistics and every other layer change the data the patterns
            were fitted on, too).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    kernel_digests: tuple[str, ...]
    weights_digest: str

    @classmethod
    def of(cls, model: keras.Model, graph: CanonicalGraph | None = None) -> "Fingerprint":
        """The fingerprint of ``model`` (``graph``: its canonical graph, if at hand)."""
        graph = canonize(model, merge_kernels=True) if graph is None else graph
        ops = {}  # one per pattern key: the calls of a shared layer share its kernel
        for op in graph.kernel_ops:
            ops.setdefault(op.pattern_key, op)
        return cls(tuple(ops),
                   tuple(tuple(int(d) for d in op.kernel_shape) for op in ops.values()),
                   tuple(_digest(op.layer.weights) for op in ops.values()),
                   _digest(model.weights))

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible form (see :meth:`from_json`)."""
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "kernel_digests": list(self.kernel_digests),
                "weights_digest": self.weights_digest}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Fingerprint":
        """Inverse of :meth:`to_json`."""
        return cls(tuple(data["names"]), tuple(tuple(s) for s in data["shapes"]),
                   tuple(data["kernel_digests"]), data["weights_digest"])

    def mismatches(self, model: "Fingerprint", check_weights: bool = True) -> list[str]:
        """What differs between these patterns (``self``) and ``model``'s.

        Returns:
            One sentence per problem, empty if the patterns fit the model.
        """
        problems = []
        missing = [n for n in model.names if n not in self.names]
        extra = [n for n in self.names if n not in model.names]
        if missing:
            problems.append(f"no patterns for the model's kernel layer(s) {missing}")
        if extra:
            problems.append(f"patterns for layer(s) {extra} that the model does not have "
                            f"(the model's kernel layers: {list(model.names)})")
        ours = dict(zip(self.names, zip(self.shapes, self.kernel_digests)))
        changed = []
        for name, shape, digest in zip(model.names, model.shapes, model.kernel_digests):
            if name not in ours:
                continue
            if tuple(ours[name][0]) != tuple(shape):
                problems.append(f"layer '{name}' has kernel shape {tuple(shape)} in the model, "
                                f"{tuple(ours[name][0])} in the patterns")
            elif ours[name][1] != digest:
                changed.append(name)
        if check_weights and not problems:
            if changed:
                problems.append(f"the weights of layer(s) {changed} changed since the patterns "
                                "were fitted")
            elif self.weights_digest != model.weights_digest:
                problems.append("weights outside the kernel layers (such as BatchNormalization "
                                "statistics) changed since the patterns were fitted")
        return problems
