"""What each layer is to the reverse rules: activation names and layer kinds.

Canonization (:mod:`innv_pattern.canonize`) gives every element-wise
activation a canonical name and every other non-kernel layer one *kind*; the
rule maps (:mod:`innv_pattern.rule_maps`) bind rules by name and kind.  Which
Keras layer is which is data, kept in the tables of this module.

Kinds:
    ``routing``: moves values unchanged (reshapes, crops, zero padding,
        nearest upsampling, dropout and augmentation at inference, concatenation).
    ``max``: passes one input value per output (max pooling, ``Maximum``).
    ``affine``: a linear map plus a constant mixing values (``Add``,
        ``Subtract``, ``Average``, average pooling, bilinear resizing).
    ``diagonal``: ``y = s * x + b`` element by element (a BatchNormalization
        that could not be folded, ``Rescaling``, ``Normalization``, ConvNeXt's
        ``LayerScale``, ``x * 2`` or ``x + 1`` on symbolic tensors).
    ``gate``: the product of a signal and sigmoid gates (squeeze-and-excite).
    ``layer_norm``: ``LayerNormalization``.
    ``other``: anything else (recurrent, attention, ``Lambda``, custom layers).

Example:
    >>> import keras
    >>> from innv_pattern.kinds import activation_name
    >>> activation_name(keras.layers.ReLU(max_value=6.0))
    'relu6'
"""

from __future__ import annotations

import re
from typing import Any

import keras

from innv_pattern.graph import application_layer_kind, operation_name

__all__ = [
    "AFFINE", "DIAGONAL", "ELEMENTWISE", "GATE", "GATE_ACTIVATIONS", "LAYER_NORM", "MAX",
    "OTHER", "PRODUCT", "RECTIFIERS", "ROUTING", "SQUASHING", "activation_name",
    "layer_kind", "operation_activation",
]

ROUTING, MAX, AFFINE, DIAGONAL = "routing", "max", "affine", "diagonal"
GATE, LAYER_NORM, OTHER = "gate", "layer_norm", "other"
#: A product of tensors; canonization turns it into ``gate`` or ``other``.
PRODUCT = "product"

#: Activations shaped like a ReLU: (near) zero for negative input, (near) identity for positive.
RECTIFIERS = frozenset({
    "relu", "relu6", "leaky_relu", "relu_custom", "prelu", "elu", "selu", "celu", "gelu",
    "silu", "hard_silu", "mish", "softplus", "sparse_plus", "squareplus",
})
#: Bounded, monotonic activations.
SQUASHING = frozenset({
    "sigmoid", "hard_sigmoid", "sparse_sigmoid", "log_sigmoid", "tanh", "hard_tanh", "softsign",
})
#: Every activation known to act element by element.
ELEMENTWISE = RECTIFIERS | SQUASHING | frozenset({
    "linear", "exponential", "soft_shrink", "hard_shrink", "tanh_shrink", "threshold",
})
#: Activations whose output, multiplied with another tensor, gates it.
GATE_ACTIVATIONS = frozenset({"sigmoid", "hard_sigmoid"})

L = keras.layers


def _recent(*names: str) -> tuple[type, ...]:
    """Layer classes that only recent Keras versions have (adaptive pooling)."""
    return tuple(getattr(L, name) for name in names if hasattr(L, name))


_LAYER_KINDS: tuple[tuple[str, tuple[type, ...]], ...] = (
    (ROUTING, (
        L.InputLayer, L.Flatten, L.Reshape, L.Permute, L.Dropout, L.SpatialDropout1D,
        L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianDropout, L.GaussianNoise,
        L.AlphaDropout, L.ActivityRegularization, L.ZeroPadding1D, L.ZeroPadding2D,
        L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.Concatenate,
        L.Identity, L.UpSampling1D, L.UpSampling3D, L.RepeatVector, L.RandomFlip,
        L.RandomRotation, L.RandomTranslation, L.RandomZoom, L.RandomContrast,
        L.RandomBrightness)),
    (MAX, (
        L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.GlobalMaxPooling1D,
        L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.Maximum, L.Minimum)
     + _recent("AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D")),
    (AFFINE, (
        L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
        L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
        L.Add, L.Subtract, L.Average, L.Resizing, L.CenterCrop)
     + _recent("AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D",
               "AdaptiveAveragePooling3D")),
    (DIAGONAL, (L.BatchNormalization, L.Rescaling, L.Normalization)),
    (LAYER_NORM, (L.LayerNormalization,)),
    (PRODUCT, (L.Multiply,)),
)

# keras.ops calls on symbolic tensors, by class name.
_ROUTING_OPS = frozenset({
    "Reshape", "Transpose", "ExpandDims", "Squeeze", "Concatenate", "Stack", "Ravel",
    "Moveaxis", "Swapaxes", "Copy", "Flip", "Repeat", "Tile", "BroadcastTo", "Roll", "GetItem",
})
_MAX_OPS = frozenset({"Max", "Amax", "Min", "Amin", "Maximum", "Minimum"})
_LINEAR_OPS = frozenset({"Mean", "Sum", "Pad", "Matmul", "Dot", "Tensordot", "Einsum", "Average"})
_ARITHMETIC_OPS = frozenset({"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Negative"})
_OP_ACTIVATIONS = frozenset({
    "Relu", "Relu6", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Silu", "HardSilu", "Mish",
    "Softplus", "SparsePlus", "Squareplus", "Sigmoid", "HardSigmoid", "SparseSigmoid",
    "LogSigmoid", "Tanh", "HardTanh", "Softsign", "SoftShrink", "HardShrink", "TanhShrink",
    "Softmax", "LogSoftmax",
})


def activation_name(fn: Any) -> str:
    """Canonical name of a Keras activation function or activation layer."""
    if isinstance(fn, keras.layers.ReLU):
        if fn.max_value is None and not fn.negative_slope and not fn.threshold:
            return "relu"
        if fn.max_value == 6 and not fn.negative_slope and not fn.threshold:
            return "relu6"
        return "relu_custom"
    named = {keras.layers.LeakyReLU: "leaky_relu", keras.layers.Softmax: "softmax",
             keras.layers.ELU: "elu", keras.layers.PReLU: "prelu"}
    for cls, name in named.items():
        if isinstance(fn, cls):
            return name
    if isinstance(fn, keras.layers.Activation):
        return activation_name(fn.activation)
    if fn is None:
        return "linear"
    return getattr(fn, "__name__", type(fn).__name__)


def operation_activation(layer: Any) -> str | None:
    """The activation name of a ``keras.ops`` activation call, else ``None``."""
    name = operation_name(layer)
    if name not in _OP_ACTIVATIONS:
        return None
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def layer_kind(layer: Any, n_inputs: int, same_shape: bool,
               positions: tuple[int, ...] = (0,)) -> str:
    """The kind of a layer or ``keras.ops`` call that is no kernel layer or activation.

    Args:
        layer: The called layer or operation.
        n_inputs: How many tensor arguments the call has (``x * x`` has two).
        same_shape: Its output has the shape of its (first) input.
        positions: Positions of the tensors among the positional arguments
            (``2 / x`` has the tensor at 1: not affine).
    """
    special = application_layer_kind(layer)
    if special is not None:
        return DIAGONAL if special == "channel_scale" else ROUTING
    op = operation_name(layer)
    if op is not None:
        return _operation_kind(op, n_inputs, same_shape, positions)
    if isinstance(layer, L.UpSampling2D):
        return ROUTING if layer.interpolation == "nearest" else AFFINE
    for kind, classes in _LAYER_KINDS:
        if isinstance(layer, classes):
            return kind
    return OTHER


def _operation_kind(op: str, n_inputs: int, same_shape: bool,
                    positions: tuple[int, ...]) -> str:
    if op in _ROUTING_OPS:
        return ROUTING
    if op in _MAX_OPS:
        return MAX
    if op in _LINEAR_OPS and n_inputs == 1:
        return AFFINE
    if op in ("Divide", "TrueDivide") and positions != (0,):
        return OTHER
    if op in _ARITHMETIC_OPS and n_inputs == 1:
        return DIAGONAL if same_shape else AFFINE
    if op in ("Add", "Subtract"):
        return AFFINE
    if op == "Multiply":
        return PRODUCT
    return OTHER
