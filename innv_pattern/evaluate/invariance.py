"""Input invariance (Kindermans et al., 2017, "The (un)reliability of saliency methods").

Shift every input by a constant ``m`` and compensate with the first layer's
bias: the *shifted twin* computes ``twin(x + m) == model(x)``, the same
function of the same data.  A method is input-invariant if its explanation of
``x + m`` by the twin equals its explanation of ``x`` by the model.  The 2017
paper finds Gradient, PatternNet and PatternAttribution invariant, and
Input x Gradient, LRP and Integrated Gradients with a zero reference not.

:func:`shifted_twin` builds the twin from a copy of the model (the user's model
is never touched): each Dense or Conv1D/2D/3D layer that reads the input
(directly, or through reshapes, crops and zero padding) gets the bias
``b - sum over fan-in of kernel * m``; zero padding of the shifted input is
made constant padding with ``m`` (``pad(x - m) + m``, with ``keras.ops``
arithmetic and a ``ZeroPadding`` layer, which every analyzer understands), and
a ``padding="same"`` (or ``"causal"``) convolution reading it becomes that
constant padding, at TensorFlow's offsets, followed by a ``"valid"`` one.

:func:`input_invariance` measures each analyzer's relative change.

Example:
    >>> import keras, numpy as np
    >>> inp = keras.Input((3,))
    >>> model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(4)(inp)))
    >>> x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    >>> twin = shifted_twin(model, 0.5)
    >>> bool(np.allclose(twin(x + 0.5), model(x), atol=1e-5))
    True
    >>> errors = input_invariance(model, ["gradient", "input_t_gradient"], x, 0.5)
    >>> errors["gradient"] < 1e-5, errors["input_t_gradient"] > 1e-2
    (True, True)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
import numpy as np

from innv_pattern.evaluate._common import needs_patterns

__all__ = ["input_invariance", "shifted_twin"]

L = keras.layers
#: Layers that read a shifted tensor and keep the shift where it was.
_PASS = (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
         L.GaussianDropout, L.GaussianNoise, L.AlphaDropout, L.Identity,
         L.ActivityRegularization)
#: Layers that move values: the shift moves with them.
_MOVE = (L.Flatten, L.Reshape, L.Permute, L.Cropping1D, L.Cropping2D, L.Cropping3D)
_ZERO_PADDING = {1: L.ZeroPadding1D, 2: L.ZeroPadding2D, 3: L.ZeroPadding3D}
_KERNEL = (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)
_ACCEPTED = ("Dense and Conv1D/2D/3D layers, reading the input directly or through "
             "Flatten, Reshape, Permute, Cropping, ZeroPadding, Dropout or Identity layers")


def shifted_twin(model: keras.Model, shift: Any) -> keras.Model:
    """A copy of ``model`` that computes ``twin(x + shift) == model(x)``.

    Args:
        model: A functional or Sequential Keras 3 model with one input.
        shift: A scalar, or an array broadcastable to one sample (for example
            one value per channel).  Where a convolution or zero padding reads
            the shifted input, the shift must be constant over positions.

    Returns:
        A new functional model with new weights: the first kernel layers' biases
        compensate the shift (a bias is added where there was none), and zero
        padding of the shifted input pads with the shift.  Up to float
        rounding, ``twin(x + shift)`` equals ``model(x)``.

    Raises:
        ValueError: For a model with several inputs, a shift that does not
            broadcast to one sample, or a shifted input read by a layer other
            than those accepted (named in the message).

    Example:
        >>> import keras, numpy as np
        >>> inp = keras.Input((6, 6, 2))
        >>> out = keras.layers.Conv2D(3, 3, padding="same", strides=2)(inp)
        >>> model = keras.Model(inp, out)
        >>> twin = shifted_twin(model, [1.0, -2.0])          # one value per channel
        >>> x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
        >>> bool(np.allclose(twin(x + [1.0, -2.0]), model(x), atol=1e-5))
        True
    """
    functional = _as_functional(model)
    sample_shape = tuple(functional.inputs[0].shape[1:])
    builder = _TwinBuilder(_sample_shift(shift, sample_shape))
    new_input = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype), functional.input)
    builder.mark(keras.tree.flatten(new_input)[0], builder.input_shift)
    twin = keras.models.clone_model(functional, input_tensors=new_input,
                                    clone_function=builder.clone, call_function=builder.call)
    builder.finish(twin)
    return twin


def _as_functional(model: keras.Model) -> keras.Model:
    """``model`` as a functional model over the same layers (a Sequential is wrapped)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"shifted_twin needs a Keras model; received {type(model).__name__}.")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError) as error:
        raise ValueError(f"Model '{model.name}' has no input yet: build it with keras.Input "
                         "(functional or Sequential) first.") from error
    if not inputs or len(inputs) != 1:
        raise ValueError(f"shifted_twin shifts one input; model '{model.name}' has "
                         f"{len(inputs or [])}.")
    if isinstance(model, keras.Sequential):
        return keras.Model(inputs[0], outputs[0] if len(outputs) == 1 else outputs,
                           name=model.name)
    return model


def _sample_shift(shift: Any, sample_shape: tuple) -> np.ndarray:
    """``shift`` as a float64 array of the sample's rank, broadcastable to one sample."""
    m = np.asarray(shift, np.float64)
    rank = len(sample_shape)
    if m.ndim > rank or not np.all(np.isfinite(m)):
        raise ValueError(f"shift must be a finite scalar or broadcastable to one sample of "
                         f"shape {sample_shape}; received an array of shape {m.shape}.")
    m = m.reshape((1,) * (rank - m.ndim) + m.shape)
    for size, dim in zip(m.shape, sample_shape):
        if size != 1 and dim is not None and size != dim:
            raise ValueError(f"shift must be a scalar or broadcastable to one sample of shape "
                             f"{sample_shape}; received an array of shape {np.shape(shift)}.")
    return m


def _describe(layer: Any) -> str:
    return f"'{getattr(layer, 'name', layer)}' ({type(layer).__name__})"


def _unsupported(layer: Any) -> ValueError:
    return ValueError(f"The shifted input is read by {_describe(layer)}; shifted_twin "
                      f"supports {_ACCEPTED}.")


def _channel_axis(layer: Any, rank: int) -> int:
    """The channel axis of a sample (batch axis removed) as ``layer`` reads it."""
    return 0 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


def _channel_shift(layer: Any, shift: np.ndarray, channels: int) -> np.ndarray:
    """The per-channel shift seen by ``layer``, which must not vary over positions."""
    axis = _channel_axis(layer, shift.ndim)
    for a in range(shift.ndim):
        if a != axis and not np.all(shift == np.take(shift, [0], axis=a)):
            raise ValueError(
                f"Layer {_describe(layer)} reads the shifted input, whose shift varies along "
                f"sample axis {a} (shift of shape {shift.shape}); its bias can only compensate "
                "a shift that is the same at every position (one value per channel).")
    index = tuple(slice(None) if a == axis else 0 for a in range(shift.ndim))
    return np.broadcast_to(shift[index], (channels,)).astype(np.float64)


def _padding(layer: Any, shape: tuple) -> list[tuple[int, int]] | None:
    """TensorFlow's (before, after) zero padding per spatial axis of a conv, or ``None``."""
    if isinstance(layer, L.Dense) or layer.padding == "valid":
        return None
    rank = len(layer.kernel_size)
    spatial = shape[1:1 + rank] if layer.data_format == "channels_last" else shape[2:2 + rank]
    pads = []
    for n, k, s, d in zip(spatial, layer.kernel_size, layer.strides, layer.dilation_rate):
        span = (k - 1) * d + 1
        if layer.padding == "causal":
            pads.append((span - 1, 0))
            continue
        if s > 1 and n is None:
            raise ValueError(f"Layer {_describe(layer)} pads 'same' with strides {layer.strides} "
                             f"an input of unknown size {shape}; shifted_twin needs static "
                             "spatial sizes to pad it with the shift.")
        total = span - 1 if s == 1 else max((math.ceil(n / s) - 1) * s + span - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _bias_correction(kernel: np.ndarray, m: np.ndarray, groups: int) -> np.ndarray:
    """``sum over fan-in of kernel * m`` per output channel (grouped kernels too)."""
    per_input = kernel.reshape(-1, *kernel.shape[-2:]).sum(axis=0)  # (in per group, out)
    outputs = per_input.shape[-1]
    group_of = np.arange(outputs) // (outputs // groups)
    m_by_group = m.reshape(groups, -1)[group_of]                     # (out, in per group)
    return np.einsum("oi,io->o", m_by_group, per_input)


def _constant_pad(x: Any, pad_layer: Any, c: np.ndarray) -> Any:
    """``pad_layer(x - c) + c``: zero padding made padding with the constant ``c``."""
    return keras.ops.add(pad_layer(keras.ops.subtract(x, c)), c)


class _TwinBuilder:
    """``clone_function`` and ``call_function`` for ``clone_model``, and the weight copy.

    Tracks, for each tensor of the twin that carries the shift, the shift (an
    array broadcastable to one sample).
    """

    def __init__(self, input_shift: np.ndarray) -> None:
        self.input_shift = input_shift
        self.shifts: dict[int, tuple[Any, np.ndarray]] = {}  # id -> (tensor, shift)
        self.originals: dict[int, Any] = {}                   # id(twin layer) -> user's layer
        self.compensated: dict[int, tuple[Any, Any, np.ndarray]] = {}  # clone id -> (new, old, m)
        self.unshifted_calls: set[int] = set()

    def mark(self, tensor: Any, shift: np.ndarray) -> Any:
        self.shifts[id(tensor)] = (tensor, shift)
        return tensor

    def clone(self, layer: Any) -> Any:
        new = type(layer).from_config(layer.get_config())
        self.originals[id(new)] = layer
        return new

    def call(self, layer: Any, *args: Any, **kwargs: Any) -> Any:
        tensors = keras.tree.flatten((args, kwargs))
        shifted = [t for t in tensors if id(t) in self.shifts]
        if not shifted:
            if id(layer) in self.compensated:
                self._refuse_shared(layer)
            self.unshifted_calls.add(id(layer))
            return layer(*args, **kwargs)
        if len(shifted) != 1 or args[0] is not shifted[0] or isinstance(layer, keras.Model):
            raise _unsupported(layer)
        x, shift = args[0], self.shifts[id(args[0])][1]
        if isinstance(layer, _PASS):
            return self.mark(layer(*args, **kwargs), shift)
        if isinstance(layer, _MOVE):
            return self.mark(layer(*args, **kwargs), self._moved(layer, x, shift))
        if isinstance(layer, tuple(_ZERO_PADDING.values())):
            c = self._broadcastable(layer, x, self._per_channel(layer, x, shift))
            return self.mark(_constant_pad(x, lambda v: layer(v, **kwargs), c), c[0])
        if isinstance(layer, _KERNEL):
            return self._kernel_call(layer, x, shift, args[1:], kwargs)
        raise _unsupported(layer)

    def _refuse_shared(self, layer: Any) -> None:
        raise ValueError(f"Layer {_describe(layer)} reads both the shifted input and other "
                         "tensors; a shared layer cannot compensate the shift for one of its "
                         "calls only.")

    def _per_channel(self, layer: Any, x: Any, shift: np.ndarray) -> np.ndarray:
        """The shift of each of ``x``'s channels, as ``layer`` reads them."""
        channels = int(x.shape[1 + _channel_axis(layer, len(x.shape) - 1)])
        return _channel_shift(layer, shift, channels)

    def _broadcastable(self, layer: Any, x: Any, m: np.ndarray) -> np.ndarray:
        """``m`` (per channel) shaped to broadcast against ``x`` (batch axis included)."""
        shape = [1] * len(x.shape)
        shape[1 + _channel_axis(layer, len(x.shape) - 1)] = len(m)
        return m.reshape(shape).astype(x.dtype)

    def _moved(self, layer: Any, x: Any, shift: np.ndarray) -> np.ndarray:
        sample = tuple(x.shape[1:])
        if any(d is None for d in sample):
            raise ValueError(f"Layer {_describe(layer)} moves the shifted input of unknown "
                             f"shape {x.shape}; shifted_twin needs its static shape.")
        full = np.broadcast_to(shift, sample)[None].astype(x.dtype)
        return np.asarray(keras.ops.convert_to_numpy(layer(full)), np.float64)[0]

    def _kernel_call(self, layer: Any, x: Any, shift: np.ndarray, rest: tuple,
                     kwargs: dict) -> Any:
        if id(layer) in self.unshifted_calls:
            self._refuse_shared(layer)
        m = self._per_channel(layer, x, shift)
        pads = _padding(layer, tuple(x.shape))
        if id(layer) not in self.compensated:
            config = {**layer.get_config(), "use_bias": True}
            if pads is not None:
                config["padding"] = "valid"
            new = type(layer).from_config(config)
            self.compensated[id(layer)] = (new, self.originals[id(layer)], m)
        new, _, first_m = self.compensated[id(layer)]
        if not np.array_equal(first_m, m):
            raise ValueError(f"Layer {_describe(layer)} reads the input twice with different "
                             "shifts; one bias cannot compensate both.")
        if pads is not None and any(p for pair in pads for p in pair):
            pad = _ZERO_PADDING[len(pads)](padding=pads[0] if len(pads) == 1 else tuple(pads),
                                           data_format=layer.data_format)
            x = _constant_pad(x, pad, self._broadcastable(layer, x, m))
        return new(x, *rest, **kwargs)

    def finish(self, twin: keras.Model) -> None:
        """Copies the user's weights into ``twin``; compensates the first kernel layers' biases."""
        if any(id(t) in self.shifts for t in twin.outputs):
            raise ValueError("A model output carries the shifted input unchanged; no bias can "
                             "compensate it.")
        replaced = {id(new): (old, m) for new, old, m in self.compensated.values()}
        for layer in twin.layers:
            if id(layer) in replaced:
                old, m = replaced[id(layer)]
                kernel = np.asarray(keras.ops.convert_to_numpy(old.kernel), np.float64)
                bias = (np.zeros(kernel.shape[-1]) if old.bias is None else
                        np.asarray(keras.ops.convert_to_numpy(old.bias), np.float64))
                correction = _bias_correction(kernel, m, getattr(old, "groups", 1))
                layer.kernel.assign(keras.ops.convert_to_numpy(old.kernel))
                layer.bias.assign((bias - correction).astype(layer.bias.dtype))
            elif id(layer) in self.originals and layer.weights:
                layer.set_weights(self.originals[id(layer)].get_weights())


def _shift_data(data: Any, shift: np.ndarray) -> Any:
    """``data + shift``: a numpy array, or a ``tf.data.Dataset`` of ``x`` or ``(x, ...)``."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        def add(*item: Any) -> Any:
            x = item[0] + tf.cast(shift, item[0].dtype)
            return x if len(item) == 1 else (x,) + tuple(item[1:])
        return data.map(add)
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        array = np.asarray(data)
        return (array + shift).astype(array.dtype)
    raise TypeError(f"fit_data must be a numpy array or a tf.data.Dataset (to shift it); "
                    f"received {type(data).__name__}.")


def _analyzers_for(model: keras.Model, names: Sequence[str], patterns: Any,
                   pattern_type: str, kwargs: dict) -> dict[str, Any]:
    import innv_pattern as ip

    result = {}
    for name in names:
        extra = dict(kwargs)
        if needs_patterns(name):
            extra.update(patterns=patterns, pattern_type=pattern_type)
        try:
            result[name] = ip.create_analyzer(name, model, neuron_selection_mode="index",
                                              **extra)
        except TypeError as error:
            raise ValueError(f"Analyzer '{name}' does not accept the options "
                             f"{sorted(kwargs)} ({error}); measure analyzers with different "
                             "options in separate input_invariance calls.") from error
    return result


def input_invariance(model: keras.Model, analyzers: Sequence[str], x: Any, shift: Any,
                     fit_data: Any = None, pattern_type: str = "relu",
                     **analyzer_kwargs: Any) -> dict[str, float]:
    """Each analyzer's relative change under a compensated shift of the input.

    For each name, ``||a_twin(x + shift) - a_model(x)|| / ||a_model(x)||``
    (Frobenius norm over the batch; 0 when both are 0), where ``twin`` is
    :func:`shifted_twin` of ``model``.  Both explain the same output: the class
    ``model`` predicts for ``x`` (neuron selection ``"index"``).

    Args:
        model: A Keras model with one input and one output.
        analyzers: Names of :func:`innv_pattern.list_analyzers`.
        x: Inputs to explain (a numpy array).
        shift: The shift: a scalar or an array broadcastable to one sample.
        fit_data: Data to fit patterns for ``pattern.net`` and
            ``pattern.attribution``: on ``fit_data`` for the model and on
            ``fit_data + shift`` for the twin (a numpy array or a
            ``tf.data.Dataset`` of ``x`` or ``(x, y)`` batches).
        pattern_type: The patterns' type (``"relu"`` or ``"linear"``).
        **analyzer_kwargs: Options given to every analyzer (for example
            ``steps=32`` for ``integrated_gradients``, whose reference stays 0
            unless given: the 2017 paper shows that a zero reference breaks
            invariance).

    Returns:
        ``{name: relative error}``; ``inf`` where only the twin's analysis is non-zero.

    Raises:
        ValueError: For unknown analyzers, pattern analyzers without
            ``fit_data``, options an analyzer does not accept, or a model
            :func:`shifted_twin` cannot compensate.

    Example:
        >>> import keras, numpy as np
        >>> inp = keras.Input((4,))
        >>> hidden = keras.layers.Dense(8, activation="relu")(inp)
        >>> model = keras.Model(inp, keras.layers.Dense(3)(hidden))
        >>> data = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
        >>> errors = input_invariance(model, ["pattern.attribution", "lrp.z"], data[:8], -1.0,
        ...                           fit_data=data, pattern_type="linear")
        >>> errors["pattern.attribution"] < 1e-3, errors["lrp.z"] > 1e-2
        (True, True)
    """
    import innv_pattern as ip

    unknown = [n for n in analyzers if n not in ip.list_analyzers()]
    if unknown:
        raise ValueError(f"Unknown analyzer(s) {unknown}; accepted: {ip.list_analyzers()}.")
    if "neuron_selection_mode" in analyzer_kwargs:
        raise ValueError("input_invariance explains the class the model predicts "
                         "(neuron_selection_mode='index'); do not pass neuron_selection_mode.")
    x = np.asarray(x)
    twin = shifted_twin(model, shift)
    m = np.broadcast_to(np.asarray(shift, np.float64), x.shape[1:])
    x_twin = (x + m).astype(x.dtype)
    patterns = twin_patterns = None
    if any(needs_patterns(n) for n in analyzers):
        if fit_data is None:
            raise ValueError("pattern.net and pattern.attribution need fit_data: their "
                             "patterns are fitted on fit_data for the model and on "
                             "fit_data + shift for the twin.")
        patterns = ip.PatternComputer(model, pattern_type=pattern_type).compute(fit_data,
                                                                                verbose=0)
        twin_patterns = ip.PatternComputer(twin, pattern_type=pattern_type).compute(
            _shift_data(fit_data, np.asarray(m)), verbose=0)
    selection = np.argmax(np.reshape(keras.ops.convert_to_numpy(model(x, training=False)),
                                     (len(x), -1)), axis=1).astype(np.int32)
    ours = _analyzers_for(model, analyzers, patterns, pattern_type, analyzer_kwargs)
    theirs = _analyzers_for(twin, analyzers, twin_patterns, pattern_type, analyzer_kwargs)
    return {name: _relative_error(theirs[name].analyze(x_twin, neuron_selection=selection),
                                  ours[name].analyze(x, neuron_selection=selection))
            for name in analyzers}


def _relative_error(shifted: np.ndarray, original: np.ndarray) -> float:
    """``||shifted - original|| / ||original||`` in float64; 0 if both are 0."""
    a, b = np.asarray(shifted, np.float64), np.asarray(original, np.float64)
    diff, norm = np.linalg.norm(a - b), np.linalg.norm(b)
    if norm == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / norm)
