"""Gradient-based analyzers, their sampling variants, and the input baselines.

Example:
    >>> import keras, numpy as np
    >>> import innv_pattern as ip
    >>> inp = keras.Input((4,))
    >>> model = keras.Model(inp, keras.layers.Dense(3)(inp))
    >>> x = np.ones((2, 4), "float32")
    >>> bool(np.array_equal(ip.create_analyzer("input", model).analyze(x), x))
    True
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from innv_pattern.analyzer_base import Analyzer, register

__all__ = ["Deconvnet", "Gradient", "GuidedBackprop", "Input", "InputTimesGradient",
           "IntegratedGradients", "Random", "SmoothGrad"]


@register
class Gradient(Analyzer):
    """The gradient of the selected output with respect to the input."""

    name = "gradient"
    display_name = "Gradient"
    in_paper = True
    kind = "function"


@register
class InputTimesGradient(Gradient):
    """Input times gradient."""

    name = "input_t_gradient"
    display_name = "Input x Gradient"
    in_paper = True
    kind = "attribution"

    def _postprocess(self, xs: list[tf.Tensor], grads: list[tf.Tensor]) -> list[tf.Tensor]:
        return [x * g for x, g in zip(xs, grads)]


@register
class Deconvnet(Analyzer):
    """DeConvNet (Zeiler & Fergus): ReLUs rectify the reverse signal."""

    name = "deconvnet"
    display_name = "DeConvNet"
    in_paper = True
    kind = "signal"
    start = "value"
    rule_family = "deconvnet"


@register
class GuidedBackprop(Analyzer):
    """Guided BackProp (Springenberg et al.): gradient mask and rectification."""

    name = "guided_backprop"
    display_name = "Guided BackProp"
    in_paper = True
    kind = "signal"
    start = "value"
    rule_family = "guided_backprop"




class _Sampling(Gradient):
    """Averages gradients over ``n`` modified copies of the input.

    The selected neuron is chosen once, on the unmodified input, and explained
    in every copy.
    """

    def _augment(self, x: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _analyze_batch(self, xs: list[tf.Tensor], index: tf.Tensor) -> list[tf.Tensor]:
        xs = [tf.cast(x, tf.float32) if not x.dtype.is_floating else x for x in xs]
        if self.neuron_selection_mode != "all":
            y = self._forward(xs)
            index = tf.where(index < 0, tf.argmax(y, axis=-1, output_type=tf.int32), index)

        def body(i: tf.Tensor, acc: list[tf.Tensor]) -> tuple:
            grads = self._reverse([self._augment(x, i) for x in xs], index)
            return i + 1, [a + g for a, g in zip(acc, grads)]

        zeros = [tf.zeros_like(x) for x in xs]
        _, total = tf.while_loop(lambda i, _: i < self.n, body, (tf.constant(0), zeros))
        return self._postprocess(xs, [t / float(self.n) for t in total])


@register
class SmoothGrad(_Sampling):
    """SmoothGrad (Smilkov et al., 2017): the mean gradient over noisy copies.

    The noise is absolute by default (``noise_scale``, iNNvestigate's argument
    and default, standard deviation 1), so results match iNNvestigate and its
    reference files.  An absolute scale suits inputs of unit scale only: on
    0-255 images SmoothGrad is then the gradient, on [-1, 1] images mostly
    noise.  ``noise_level`` is the paper's relative noise instead: the standard
    deviation is that fraction of each input's range (``max - min`` of each
    sample, per model input); the paper recommends 0.1-0.2.

    Args:
        augment_by_n: Number of noisy copies.
        noise_scale: Standard deviation of the Gaussian noise (default 1.0,
            absolute).
        noise_level: The standard deviation as a fraction of each sample's
            range; give this or ``noise_scale``, not both.
        seed: Seed of the noise (analyses are reproducible).
    """

    name = "smoothgrad"
    display_name = "SmoothGrad"
    in_paper = True
    kind = "function"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 augment_by_n: int = 64, noise_scale: float | None = None,
                 noise_level: float | None = None, seed: int = 0) -> None:
        if noise_scale is not None and noise_level is not None:
            raise ValueError("Give noise_scale (absolute) or noise_level (a fraction of each "
                             f"input's range), not both; received noise_scale={noise_scale!r}, "
                             f"noise_level={noise_level!r}.")
        noise_scale = 1.0 if noise_scale is None and noise_level is None else noise_scale
        amount = noise_scale if noise_level is None else noise_level
        if int(augment_by_n) < 1 or not amount >= 0:
            raise ValueError("augment_by_n must be >= 1 and the noise >= 0; received "
                             f"augment_by_n={augment_by_n!r}, noise_scale={noise_scale!r}, "
                             f"noise_level={noise_level!r}.")
        self.n = int(augment_by_n)
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.noise_level = None if noise_level is None else float(noise_level)
        self._rng = tf.random.Generator.from_seed(seed)
        super().__init__(model, neuron_selection_mode)

    def _augment(self, x: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        if self.noise_level is None:
            return x + self._rng.normal(tf.shape(x), stddev=self.noise_scale, dtype=x.dtype)
        axes = list(range(1, len(x.shape)))
        spread = tf.reduce_max(x, axis=axes, keepdims=True) - tf.reduce_min(x, axis=axes,
                                                                             keepdims=True)
        return x + self._rng.normal(tf.shape(x), dtype=x.dtype) * (self.noise_level * spread)


@register
class IntegratedGradients(_Sampling):
    """Integrated Gradients (Sundararajan et al.) from a reference input.

    Args:
        steps: Number of points on the straight path, both ends included
            (``alpha = i / (steps - 1)``, iNNvestigate's convention).
        reference_inputs: The path's start (a scalar or an array
            broadcastable to the input).
    """

    name = "integrated_gradients"
    display_name = "Integrated Gradients"
    in_paper = True
    kind = "attribution"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 steps: int = 64, reference_inputs: Any = 0.0) -> None:
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1; received {steps!r}.")
        self.n = int(steps)
        self.reference = np.asarray(reference_inputs, np.float32)
        super().__init__(model, neuron_selection_mode)

    def _augment(self, x: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        alpha = tf.cast(i, x.dtype) / float(max(self.n - 1, 1))
        alpha = alpha if self.n > 1 else tf.ones_like(alpha)
        ref = tf.constant(self.reference, x.dtype)
        return ref + alpha * (x - ref)

    def _postprocess(self, xs: list[tf.Tensor], grads: list[tf.Tensor]) -> list[tf.Tensor]:
        ref = tf.constant(self.reference)
        return [(x - tf.cast(ref, x.dtype)) * g for x, g in zip(xs, grads)]



@register
class Input(Analyzer):
    """The input itself (iNNvestigate's ``input``): a baseline, no reverse pass."""

    name = "input"
    display_name = "Input"
    kind = "signal"
    start = "none"

    def _analyze_batch(self, xs: list[tf.Tensor], index: tf.Tensor) -> list[tf.Tensor]:
        return [tf.cast(x, tf.float32) if not x.dtype.is_floating else x for x in xs]


@register
class Random(Input):
    """The input plus Gaussian noise (iNNvestigate's ``random``): a baseline.

    Args:
        stddev: Standard deviation of the noise.
        seed: Seed of the noise (analyses are reproducible).
    """

    name = "random"
    display_name = "Random"

    def __init__(self, model: keras.Model, neuron_selection_mode: str = "max_activation",
                 stddev: float = 1.0, seed: int = 0) -> None:
        if not stddev >= 0:
            raise ValueError(f"stddev must be >= 0; received {stddev!r}.")
        self.stddev = float(stddev)
        self._rng = tf.random.Generator.from_seed(seed)
        super().__init__(model, neuron_selection_mode)

    def _analyze_batch(self, xs: list[tf.Tensor], index: tf.Tensor) -> list[tf.Tensor]:
        return [x + self._rng.normal(tf.shape(x), stddev=self.stddev, dtype=x.dtype)
                for x in super()._analyze_batch(xs, index)]
