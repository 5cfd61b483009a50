"""Keras 3 graph walking.

This is the only module that touches private Keras attributes
(``_nodes_by_depth``, ``Node.arguments``) and private Keras classes (the
custom layers of ``keras.applications``).  It flattens a
functional or ``Sequential`` model, nested models included, into a list of
:class:`Node` objects in topological order, with every tensor named by an
integer key, and runs that list on real tensors.

Example:
    >>> import keras
    >>> from innv_pattern.graph import Graph
    >>> inp = keras.Input((4,))
    >>> model = keras.Model(inp, keras.layers.Dense(2)(inp))
    >>> graph = Graph.from_model(model)
    >>> [node.layer.__class__.__name__ for node in graph.nodes]
    ['Dense']
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Sequence

import keras

__all__ = ["Graph", "Node", "application_layer_kind", "model_layers", "operation_name"]

_fresh_keys = itertools.count(1 << 40)


def fresh_key() -> int:
    """A tensor key that no Keras tensor can have (used by rewrites)."""
    return next(_fresh_keys)


@dataclasses.dataclass(eq=False)
class Node:
    """One call of a layer (or Keras operation) inside the flattened graph.

    Attributes:
        layer: The called layer or operation.
        inputs: Keys of the tensors the call reads, in call order.
        outputs: Keys of the tensors the call produces.
        name: A unique, readable name: the layer name, with ``@n`` appended
            for the n-th further call of a shared layer.
    """

    layer: Any
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    name: str
    _arguments: Any = dataclasses.field(default=None, repr=False)
    _keys: dict[int, int] = dataclasses.field(default_factory=dict, repr=False)

    def call_args(self, values: dict[int, Any]) -> tuple[tuple, dict]:
        """The positional and keyword arguments of the original call.

        Args:
            values: Computed tensors by key.
        """
        by_id = {kt_id: values[key] for kt_id, key in self._keys.items()}
        if self._arguments is None:
            return tuple(values[k] for k in self.inputs), {}
        return self._arguments.fill_in(by_id)

    def tensor_positions(self) -> tuple[int, ...]:
        """Positions of the positional call arguments that are graph tensors."""
        if self._arguments is None:
            return tuple(range(len(self.inputs)))
        return tuple(i for i, arg in enumerate(self._arguments.args)
                     if isinstance(arg, keras.KerasTensor))

    def run(self, values: dict[int, Any]) -> list[Any]:
        """Calls the layer as the model does (inference mode)."""
        args, kwargs = self.call_args(values)
        if _accepts_training(self.layer):
            kwargs = {**kwargs, "training": False}
        return keras.tree.flatten(self.layer(*args, **kwargs))


def _accepts_training(layer: Any) -> bool:
    return bool(getattr(layer, "_call_has_training_arg", False))


@dataclasses.dataclass(eq=False)
class Graph:
    """A model flattened into calls in topological order.

    Attributes:
        inputs: Keys of the model inputs.
        outputs: Keys of the model outputs.
        nodes: Layer calls, each after every call it depends on.
        shapes: Static shape of every tensor, by key.
        dtypes: Dtype name of every tensor, by key.
    """

    inputs: list[int]
    outputs: list[int]
    nodes: list[Node]
    shapes: dict[int, tuple]
    dtypes: dict[int, str]

    @classmethod
    def from_model(cls, model: keras.Model) -> "Graph":
        """Flattens ``model`` (functional or Sequential, nested allowed)."""
        functional = _as_functional(model)
        walker = _Walker()
        inputs = [walker.key(t) for t in functional.inputs]
        walker.walk(functional)
        outputs = [walker.key(t) for t in functional.outputs]
        return cls(inputs, outputs, walker.nodes, walker.shapes, walker.dtypes)

    def consumers(self) -> dict[int, list[Node]]:
        """Nodes reading each tensor key."""
        result: dict[int, list[Node]] = {}
        for node in self.nodes:
            for key in node.inputs:
                result.setdefault(key, []).append(node)
        return result

    def producers(self) -> dict[int, Node]:
        """The node writing each tensor key (model inputs have none)."""
        return {key: node for node in self.nodes for key in node.outputs}

    def run(
        self,
        inputs: Sequence[Any],
        call: Callable[[Node, dict[int, Any]], list[Any]] | None = None,
        keep: bool = False,
    ) -> list[Any] | tuple[list[Any], dict[int, Any]]:
        """Runs the graph on real tensors.

        Args:
            inputs: One tensor per model input.
            call: ``call(node, values) -> outputs``; defaults to ``node.run``.
            keep: Also return every intermediate tensor by key.
        """
        values = dict(zip(self.inputs, inputs))
        for node in self.nodes:
            outs = (call or Node.run)(node, values)
            values.update(zip(node.outputs, outs))
        result = [values[k] for k in self.outputs]
        return (result, values) if keep else result


def _as_functional(model: Any) -> Any:
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(
                f"Sequential model '{model.name}' has no defined input shape, so "
                "its graph is unknown. Received an unbuilt model; build it with "
                "`model.build((None, ...))` or start it with `keras.Input(shape)`."
            )
        return functional
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise TypeError(
            "Expected a Keras 3 functional or Sequential model; received "
            f"{type(model).__name__}. Subclassed models have no static graph: "
            "wrap their layers in `keras.Model(inputs, outputs)`."
        )
    return model


def _is_nested(layer: Any) -> bool:
    return isinstance(layer, keras.Model) and (
        isinstance(layer, keras.Sequential) or hasattr(layer, "_nodes_by_depth")
    )


class _Walker:
    """Collects nodes of a functional model, inlining nested models.

    Each inlined call of a nested model gets its own scope of keys, so a
    nested model called twice (a Siamese network) yields distinct tensors.
    """

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.shapes: dict[int, tuple] = {}
        self.dtypes: dict[int, str] = {}
        self._scope: dict[int, int] = {}
        self._uses: dict[str, int] = {}

    def key(self, tensor: Any) -> int:
        if id(tensor) not in self._scope:
            key = fresh_key()
            self._scope[id(tensor)] = key
            self.shapes[key] = tuple(tensor.shape)
            self.dtypes[key] = str(tensor.dtype)
        return self._scope[id(tensor)]

    def walk(self, functional: Any) -> None:
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for node in functional._nodes_by_depth[depth]:
                if node.operation is None or node.is_input:
                    continue
                self._add(node)

    def _add(self, node: Any) -> None:
        layer = node.operation
        in_tensors = list(node.input_tensors)
        if _is_nested(layer):
            inner = _as_functional(layer)
            outer_scope = self._scope
            self._scope = {
                id(i): self.key(o) for i, o in zip(inner.inputs, in_tensors)
            }
            self.walk(inner)
            inner_outputs = [self.key(t) for t in inner.outputs]
            self._scope = outer_scope
            self._scope.update(
                {id(o): k for o, k in zip(node.outputs, inner_outputs)}
            )
            return
        keys = {id(t): self.key(t) for t in in_tensors}
        count = self._uses.get(layer.name, 0)
        self._uses[layer.name] = count + 1
        name = layer.name if count == 0 else f"{layer.name}@{count}"
        self.nodes.append(
            Node(
                layer=layer,
                inputs=tuple(keys[id(t)] for t in in_tensors),
                outputs=tuple(self.key(t) for t in node.outputs),
                name=name,
                _arguments=node.arguments,
                _keys=keys,
            )
        )


def model_layers(model: keras.Model) -> list[Any]:
    """Every distinct layer called in ``model``'s flattened graph, in order."""
    seen: dict[int, Any] = {}
    for node in Graph.from_model(model).nodes:
        seen.setdefault(id(node.layer), node.layer)
    return list(seen.values())


def operation_name(layer: Any) -> str | None:
    """The class name of a ``keras.ops`` call recorded in a functional graph.

    ``x * 2``, ``inputs + y`` or ``keras.ops.relu(x)`` on symbolic tensors
    become graph nodes whose operation is not a layer: their class names
    (``"Multiply"``, ``"Add"``, ``"Relu"``) say what they compute.  Returns
    ``None`` for a layer.
    """
    if isinstance(layer, keras.layers.Layer) or not isinstance(layer, keras.Operation):
        return None
    return type(layer).__name__


def application_layer_kind(layer: Any) -> str | None:
    """What a private custom layer of ``keras.applications`` computes at inference.

    Returns ``"channel_scale"`` for ConvNeXt's ``LayerScale`` (``x * gamma``),
    ``"identity"`` for its ``StochasticDepth``, else ``None``.
    """
    try:
        from keras.src.applications import convnext
    except ImportError:  # a Keras without ConvNeXt
        return None
    if isinstance(layer, getattr(convnext, "LayerScale", ())):
        return "channel_scale"
    if isinstance(layer, getattr(convnext, "StochasticDepth", ())):
        return "identity"
    return None
