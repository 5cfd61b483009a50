"""Rewrites of the flattened graph that never touch the user's model.

A :class:`~innv_pattern.graph.Graph` becomes a list of canonical operations:

* :class:`KernelOp`: the linear part of a kernel layer, ``linear(x, K) + b``
  (Dense, Conv1D/2D/3D, DepthwiseConv1D/2D, Conv1D/2D/3DTranspose, each half
  of a SeparableConv1D/2D), with a BatchNormalization that follows it folded
  into ``K`` and ``b``;
* :class:`ActivationOp`: an element-wise activation, split off the layer it was
  fused into (activation layers and ``keras.ops`` activations too);
* :class:`LayerOp`: any other layer or ``keras.ops`` call, called as the model
  calls it, with its kind (:mod:`innv_pattern.kinds`): a BatchNormalization
  with no kernel layer before it stays a ``diagonal`` (affine) layer, a
  product with sigmoid gates (squeeze-and-excite) becomes a ``gate``.

The model's final softmax is replaced by the identity, so analyses explain the
pre-softmax output.  Kernels are read from the layer's variables at call time,
so the rewrite follows later changes of the weights.

Precision: every op computes in float32 (or float64 for a float64 model), also
for float16/bfloat16 models and mixed-precision policies.  Kernels, biases and
folded BatchNormalization parameters are cast to float32; activations run on
float32 tensors; other layers without weights (pooling, reshapes, merges,
padding) run as float32 copies of themselves.  Only a low-precision layer with
weights that is not folded (e.g. a BatchNormalization after an ``Add``) still
computes at its own precision; its output is cast back to float32.

Example:
    >>> import keras
    >>> inp = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, use_bias=False)(inp)
    >>> x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    >>> graph = canonize(keras.Model(inp, x))
    >>> [type(op).__name__ for op in graph.ops]
    ['KernelOp', 'ActivationOp']
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import keras
import tensorflow as tf

from innv_pattern import kinds
from innv_pattern.graph import Graph, Node, fresh_key
from innv_pattern.linear_maps import (KERNEL_LAYERS, SEPARABLE, KernelLayout, channel_axis,
                                      layout_of, linear_map, pointwise, pointwise_strides)

__all__ = [
    "ActivationOp",
    "CanonicalGraph",
    "MergeInputs",
    "KernelOp",
    "LayerOp",
    "KERNEL_LAYERS",
    "Op",
    "canonize",
    "widen",
]

#: Float dtypes that analyses and statistics never compute in: widened to float32.
NARROW_FLOATS = ("float16", "bfloat16")


def widen(t: Any) -> Any:
    """``t`` cast to float32 if it is a float16 or bfloat16 tensor (or variable), else ``t``.

    Example:
        >>> widen(tf.ones(2, tf.float16)).dtype.name
        'float32'
    """
    dtype = getattr(t, "dtype", None)
    if dtype is not None and tf.as_dtype(dtype).name in NARROW_FLOATS:
        return tf.cast(t, tf.float32)
    return t


@dataclasses.dataclass(eq=False)
class Op:
    """A canonical operation: reads ``inputs`` keys, writes ``outputs`` keys.

    Attributes:
        name: Unique name (the layer's name, suffixed where a layer is split).
        layer: The Keras layer the operation comes from.
    """

    name: str
    layer: Any
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def forward(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        """The operation's output tensors for the input tensors ``xs``."""
        raise NotImplementedError


@dataclasses.dataclass(eq=False)
class KernelOp(Op):
    """``y = linear(x, kernel) + bias``, linear in ``x`` and in ``kernel``.

    Attributes:
        linear: ``linear(x, kernel)``, the layer's linear map without bias.
        get_kernel: Returns the (folded) kernel as a tensor.
        get_bias: Returns the (folded) bias as a tensor, or ``None``.
        kernel_shape: Static shape of the kernel.
        channel_axis: Axis of ``y`` that indexes the neurons (output channels).
        layout: The roles of the kernel's axes (neurons, fan-in, depthwise,
            transposed), see :class:`~innv_pattern.linear_maps.KernelLayout`.
    """

    linear: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] = None
    get_kernel: Callable[[], tf.Tensor] = None
    get_bias: Callable[[], tf.Tensor | None] = None
    kernel_shape: tuple[int, ...] = ()
    channel_axis: int = -1
    layout: KernelLayout = None

    @property
    def pattern_key(self) -> str:
        """The key of this kernel's pattern: shared by every call of a shared layer."""
        return re.sub(r"@\d+", "", self.name)

    def forward(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        y = self.linear(xs[0], self.get_kernel())
        bias = self.get_bias()
        return [y if bias is None else y + self.broadcast_bias(bias)]

    def broadcast_bias(self, bias: tf.Tensor) -> tf.Tensor:
        """``bias`` shaped to add to this op's output."""
        if self.channel_axis == -1:
            return bias
        return tf.reshape(bias, [-1] + [1] * (-self.channel_axis - 1))


@dataclasses.dataclass(eq=False)
class ActivationOp(Op):
    """An element-wise activation.

    Attributes:
        activation: Canonical name: ``relu``, ``linear``, ``softmax``,
            ``relu6``, ``leaky_relu``, ``sigmoid``, ... or the function's name.
        fn: The function itself.
    """

    activation: str = "linear"
    fn: Callable[[tf.Tensor], tf.Tensor] = None

    def forward(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        return [widen(self.fn(xs[0]))]


@dataclasses.dataclass(eq=False)
class LayerOp(Op):
    """Any other layer or ``keras.ops`` call, called exactly as the model calls it.

    Attributes:
        node: The graph node of the call.
        kind: What the layer computes (see :mod:`innv_pattern.kinds`).
        gates: For kind ``gate``, the positions of the inputs that gate the
            one other input.
    """

    node: Node = None
    kind: str = kinds.OTHER
    gates: tuple[int, ...] = ()

    def forward(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        return [widen(t) for t in self.node.run(dict(zip(self.node.inputs, xs)))]


@dataclasses.dataclass(eq=False)
class CanonicalGraph:
    """The canonical operations of a model, in topological order."""

    inputs: list[int]
    outputs: list[int]
    ops: list[Op]
    shapes: dict[int, tuple]
    dtypes: dict[int, str]

    @property
    def kernel_ops(self) -> list[KernelOp]:
        """The kernel operations, whose kernels get patterns."""
        return [op for op in self.ops if isinstance(op, KernelOp)]

    def cut_tensors(self) -> set[int]:
        """The tensors that every path from an input to an output passes through.

        Example:
            >>> import keras
            >>> inp = keras.Input((3,))
            >>> h = keras.layers.Dense(3, activation="relu", name="h")(inp)
            >>> out = keras.layers.Add(name="add")([keras.layers.Dense(3, name="d")(h), h])
            >>> graph = canonize(keras.Model(inp, out))
            >>> cuts = graph.cut_tensors()
            >>> [op.name for op in graph.ops if op.outputs[0] in cuts]
            ['h', 'h/activation', 'add']
        """
        paths_in = {key: 1 for key in self.inputs}  # paths from any input to each tensor
        for op in self.ops:
            total = sum(paths_in.get(key, 0) for key in op.inputs)
            paths_in.update((key, total) for key in op.outputs)
        paths_out = {key: 1 for key in self.outputs}  # paths from each tensor to an output
        for op in reversed(self.ops):
            total = sum(paths_out.get(key, 0) for key in op.outputs)
            for key in op.inputs:
                paths_out[key] = paths_out.get(key, 0) + total
        every = sum(paths_out.get(key, 0) for key in self.inputs)
        return {key for key, n in paths_in.items()
                if every and n * paths_out.get(key, 0) == every}

    def run(self, inputs: list[tf.Tensor], call: Callable | None = None,
            keep: bool = False) -> Any:
        """Runs the ops; ``call(op, *xs)`` replaces ``op.forward`` if given."""
        values = dict(zip(self.inputs, inputs))
        for op in self.ops:
            xs = [values[k] for k in op.inputs]
            outs = call(op, *xs) if call is not None else op.forward(*xs)
            values.update(zip(op.outputs, outs))
        result = [values[k] for k in self.outputs]
        return (result, values) if keep else result


def canonize(model: keras.Model, strip_softmax: bool = True,
             merge_kernels: bool = False) -> CanonicalGraph:
    """The canonical graph of ``model``; the model itself is not modified.

    Args:
        model: A functional or Sequential Keras 3 model.
        strip_softmax: Replace a softmax producing a model output by the
            identity.
        merge_kernels: Make every ``Add``, ``Subtract`` and ``Average`` layer a
            kernel op with fixed weights (:func:`_merge_ops`), so that the
            pattern methods fit a pattern for it as for any linear layer.
    """
    graph = Graph.from_model(model)
    ops: list[Op] = []
    shapes = dict(graph.shapes)
    dtypes = {k: "float32" if d in NARROW_FLOATS else d for k, d in graph.dtypes.items()}
    for node in graph.nodes:
        merged = _merge_ops(node, shapes, dtypes) if merge_kernels else None
        ops.extend(merged or _split(node, shapes, dtypes))
    ops = _resolve_products(_fold_batchnorm(ops, graph.outputs, shapes))
    if strip_softmax:
        ops = [_strip_softmax(op, graph.outputs) for op in ops]
    return CanonicalGraph(graph.inputs, graph.outputs, ops, shapes, dtypes)


_ACTIVATION_LAYERS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                      keras.layers.Softmax, keras.layers.ELU, keras.layers.PReLU)


def _split(node: Node, shapes: dict, dtypes: dict) -> list[Op]:
    layer = node.layer
    activation = _activation_of(node)
    if activation is not None:
        return [ActivationOp(node.name, layer, node.inputs, node.outputs,
                             activation=activation, fn=_activation_fn(node))]
    if not isinstance(layer, KERNEL_LAYERS) or len(node.inputs) != 1:
        same = bool(node.inputs) and shapes[node.outputs[0]] == shapes[node.inputs[0]]
        kind = kinds.layer_kind(layer, len(node.inputs), same, node.tensor_positions())
        return [LayerOp(node.name, layer, node.inputs, node.outputs, node=_in_float32(node),
                        kind=kind)]
    kernel_ops = _kernel_ops(node, shapes, dtypes)
    act = getattr(layer, "activation", None)
    name = kinds.activation_name(act)
    if name == "linear":
        return kernel_ops
    # Split the fused activation off: the kernel op writes a fresh tensor.
    pre = fresh_key()
    shapes[pre], dtypes[pre] = shapes[node.outputs[0]], dtypes[node.outputs[0]]
    last = kernel_ops[-1]
    kernel_ops[-1] = dataclasses.replace(last, outputs=(pre,))
    return kernel_ops + [ActivationOp(node.name + "/activation", layer, (pre,),
                                      node.outputs, activation=name, fn=act)]


def _in_float32(node: Node) -> Node:
    """The call of a low-precision layer without weights, made by a float32 copy of the layer.

    Keras casts a layer's inputs to its compute dtype; a copy made from the
    layer's config with ``dtype="float32"`` computes the same function in
    float32.  Layers with weights, and layers that cannot be rebuilt from
    their config, are called as they are.
    """
    layer = node.layer
    policy = getattr(layer, "dtype_policy", None)
    if (not isinstance(layer, keras.layers.Layer) or policy is None or layer.weights
            or policy.compute_dtype not in NARROW_FLOATS):
        return node
    try:
        twin = type(layer).from_config({**layer.get_config(), "dtype": "float32"})
    except Exception:  # noqa: BLE001 - any layer that cannot be rebuilt keeps its precision
        return node
    return dataclasses.replace(node, layer=twin)


def _activation_of(node: Node) -> str | None:
    """The activation name of an activation layer or ``keras.ops`` activation call."""
    if len(node.inputs) != 1:
        return None
    if isinstance(node.layer, _ACTIVATION_LAYERS):
        return kinds.activation_name(node.layer)
    return kinds.operation_activation(node.layer)


def _activation_fn(node: Node) -> Callable[[tf.Tensor], tf.Tensor]:
    if isinstance(node.layer, keras.layers.Activation):
        return node.layer.activation
    if isinstance(node.layer, keras.layers.Layer):
        return node.layer.call
    return lambda x: node.run({node.inputs[0]: x})[0]


def _kernel_ops(node: Node, shapes: dict, dtypes: dict) -> list[KernelOp]:
    layer = node.layer
    common = dict(layer=layer, channel_axis=channel_axis(layer), get_bias=_bias_fn(layer))
    if isinstance(layer, SEPARABLE):
        return _separable_ops(node, common, shapes, dtypes)
    strides = pointwise_strides(layer)
    return [KernelOp(node.name, inputs=node.inputs, outputs=node.outputs,
                     linear=(linear_map(layer) if strides is None
                             else pointwise(strides, layer.data_format)),
                     get_kernel=lambda: widen(tf.convert_to_tensor(layer.kernel)),
                     kernel_shape=tuple(layer.kernel.shape),
                     layout=layout_of(layer, tuple(layer.kernel.shape)), **common)]


def _bias_fn(layer: Any) -> Callable[[], tf.Tensor | None]:
    if getattr(layer, "use_bias", True) and getattr(layer, "bias", None) is not None:
        return lambda: widen(tf.convert_to_tensor(layer.bias))
    return lambda: None


def _separable_ops(node: Node, common: dict, shapes: dict, dtypes: dict) -> list[KernelOp]:
    """A depthwise op (no bias) writing a fresh tensor, then a pointwise op with the bias."""
    layer, axis = node.layer, common["channel_axis"]
    mid = fresh_key()
    mid_shape = list(shapes[node.outputs[0]])
    mid_shape[axis] = shapes[node.inputs[0]][axis] * layer.depth_multiplier
    shapes[mid], dtypes[mid] = tuple(mid_shape), dtypes[node.outputs[0]]
    conv = dict(strides=layer.strides, padding=layer.padding,
                data_format=layer.data_format, dilation_rate=layer.dilation_rate)
    depthwise_op = KernelOp(
        node.name + "/depthwise", inputs=node.inputs, outputs=(mid,),
        linear=lambda x, k: keras.ops.depthwise_conv(x, k, **conv),
        get_kernel=lambda: widen(tf.convert_to_tensor(layer.depthwise_kernel)),
        kernel_shape=tuple(layer.depthwise_kernel.shape),
        layout=KernelLayout.of_depthwise(tuple(layer.depthwise_kernel.shape),
                                         layer.padding != "valid"),
        **{**common, "get_bias": lambda: None})
    pointwise_op = KernelOp(
        node.name + "/pointwise", inputs=(mid,), outputs=node.outputs,
        linear=pointwise((1,) * len(layer.strides), layer.data_format),
        get_kernel=lambda: widen(tf.convert_to_tensor(layer.pointwise_kernel)),
        kernel_shape=tuple(layer.pointwise_kernel.shape),
        layout=KernelLayout.of_dense(tuple(layer.pointwise_kernel.shape)), **common)
    return [depthwise_op, pointwise_op]


def _fold_batchnorm(ops: list[Op], outputs: list[int], shapes: dict) -> list[Op]:
    """Folds an inference-mode BatchNormalization into the kernel op before it."""
    readers: dict[int, int] = {}
    for op in ops:
        for key in op.inputs:
            readers[key] = readers.get(key, 0) + 1
    producer = {op.outputs[0]: op for op in ops if isinstance(op, KernelOp)}
    result: list[Op] = []
    for op in ops:
        prev = producer.get(op.inputs[0]) if op.inputs else None
        if (isinstance(op.layer, keras.layers.BatchNormalization) and prev is not None
                and readers[op.inputs[0]] == 1 and op.inputs[0] not in outputs
                and _bn_axis_matches(op.layer, prev, len(shapes[op.inputs[0]]))):
            folded = _folded(prev, op)
            result[result.index(prev)] = folded
            producer[folded.outputs[0]] = folded
            continue
        result.append(op)
    return result


def _bn_axis_matches(bn: Any, kernel_op: KernelOp, rank: int) -> bool:
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    if axis is None:
        return False
    return (axis - rank if axis >= 0 else axis) == kernel_op.channel_axis


def _folded(kernel_op: KernelOp, bn_op: Op) -> KernelOp:
    bn = bn_op.layer
    old_kernel, old_bias = kernel_op.get_kernel, kernel_op.get_bias
    depthwise, transpose = kernel_op.layout.depthwise, kernel_op.layout.transposed

    def scale() -> tf.Tensor:
        gamma = widen(tf.convert_to_tensor(bn.gamma)) if bn.scale else 1.0
        return gamma * tf.math.rsqrt(widen(tf.convert_to_tensor(bn.moving_variance))
                                     + bn.epsilon)

    def kernel() -> tf.Tensor:
        k = old_kernel()
        s = scale()
        if depthwise:  # kernel (..., in, multiplier); output channel = in * multiplier
            s = tf.reshape(s, k.shape[-2:])
        elif transpose:  # kernel (..., out, in)
            s = tf.reshape(s, (-1, 1))
        return k * s

    def bias() -> tf.Tensor:
        b = old_bias()
        mean = widen(tf.convert_to_tensor(bn.moving_mean))
        beta = widen(tf.convert_to_tensor(bn.beta)) if bn.center else 0.0
        return ((b if b is not None else 0.0) - mean) * scale() + beta

    return dataclasses.replace(kernel_op, outputs=bn_op.outputs, get_kernel=kernel,
                               get_bias=bias, name=kernel_op.name)


def _resolve_products(ops: list[Op]) -> list[Op]:
    """Products of one signal and sigmoid gates become ``gate`` ops, others ``other``."""
    producer = {key: op for op in ops for key in op.outputs}
    result: list[Op] = []
    for op in ops:
        if isinstance(op, LayerOp) and op.kind == kinds.PRODUCT:
            gates = tuple(i for i, key in enumerate(op.inputs) if _is_gate(key, producer))
            if len(op.inputs) - len(gates) == 1:
                op = dataclasses.replace(op, kind=kinds.GATE, gates=gates)
            else:
                op = dataclasses.replace(op, kind=kinds.OTHER)
        result.append(op)
    return result


def _is_gate(key: int, producer: dict[int, Op]) -> bool:
    """``key`` is a sigmoid's output, maybe reshaped or scaled."""
    op = producer.get(key)
    while (isinstance(op, LayerOp) and op.kind in (kinds.ROUTING, kinds.DIAGONAL)
           and len(op.inputs) == 1):
        op = producer.get(op.inputs[0])
    return isinstance(op, ActivationOp) and op.activation in kinds.GATE_ACTIVATIONS


#: Merge layers that are linear with fixed weights: the weight of input ``k`` of ``n``.
_MERGE_WEIGHTS = {keras.layers.Add: lambda k, n: 1.0,
                  keras.layers.Subtract: lambda k, n: 1.0 if k == 0 else -1.0,
                  keras.layers.Average: lambda k, n: 1.0 / n}


def _merge_ops(node: Node, shapes: dict, dtypes: dict) -> list[Op] | None:
    """``Add``/``Subtract``/``Average`` of ``n`` same-shaped tensors as two ops, or ``None``.

    A :class:`LayerOp` (kind ``routing``) concatenates the inputs along the
    last axis (entry ``k * channels + c`` is input ``k``'s channel ``c``), and
    a :class:`KernelOp` with a constant ``(n, channels)`` kernel of the merge's
    weights sums each channel's ``n`` entries: a grouped linear layer whose
    neurons are the channels, each reading one entry of every input.  (Blocks:
    a split and a weighted sum back-propagate ~4x faster on CPU than
    interleaved entries' stack, reshape and sum over a last axis of size n.)
    """
    weight = next((w for cls, w in _MERGE_WEIGHTS.items() if type(node.layer) is cls), None)
    out = tuple(shapes[node.outputs[0]])
    n = len(node.inputs)
    if weight is None or n < 2 or any(tuple(shapes[k]) != out for k in node.inputs):
        return None
    stacked = fresh_key()
    shapes[stacked], dtypes[stacked] = out[:-1] + (out[-1] * n,), dtypes[node.outputs[0]]
    dtype = dtypes[node.outputs[0]] if "float" in str(dtypes[node.outputs[0]]) else "float32"
    kernel = tf.constant([[weight(k, n)] * out[-1] for k in range(n)], dtype)

    def concatenated(*xs: tf.Tensor) -> list[tf.Tensor]:
        return [tf.concat([widen(x) for x in xs], axis=-1)]

    def linear(x: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
        return tf.add_n([part * k[i] for i, part in enumerate(tf.split(x, n, axis=-1))])

    stack = MergeInputs(node.name + "/inputs", node.layer, node.inputs, (stacked,),
                        kind=kinds.ROUTING, fn=concatenated)
    return [stack, KernelOp(node.name, node.layer, (stacked,), node.outputs, linear=linear,
                            get_kernel=lambda: kernel, get_bias=lambda: None,
                            kernel_shape=(n, out[-1]), channel_axis=-1,
                            layout=KernelLayout((n, out[-1]), (1,), 1, 0, groups=out[-1],
                                                blocked=True))]


@dataclasses.dataclass(eq=False)
class MergeInputs(LayerOp):
    """The inputs of a merge kernel op, concatenated along the last axis (:func:`_merge_ops`)."""

    fn: Callable[..., list[tf.Tensor]] = None

    def forward(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        return self.fn(*xs)


def _strip_softmax(op: Op, outputs: list[int]) -> Op:
    if isinstance(op, ActivationOp) and op.activation == "softmax" and op.outputs[0] in outputs:
        return dataclasses.replace(op, activation="linear", fn=lambda x: x)
    return op
