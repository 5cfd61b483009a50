"""Image degradation by patches (Section 5, Fig. 4a; Samek et al., 2016).

The image is split into non-overlapping ``patch_size`` x ``patch_size`` patches
(smaller ones at the right and bottom edges when the size does not divide),
patches are ranked by their summed attribution (decreasing, "most relevant
first"), and in step ``n`` the first ``n`` patches are replaced by their own
per-channel mean.  The curve is the softmax probability of the output
selected on the unperturbed image, averaged over images; a steeper decay is a
better heat map.  Patches of one pixel are their own mean: nothing changes,
so every curve is flat; :func:`degrading_patch_size` never picks them, and a
random-order curve that does not move raises a warning.  The summary is the area over the perturbation curve,
``AOPC = mean_images 1/(S+1) sum_{n=0..S} (f(x^0) - f(x^n))``.  A random
ranking (``analysis="random"``) is the baseline.

Example:
    >>> import keras, numpy as np
    >>> inp = keras.Input((4, 4, 1))
    >>> out = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inp))
    >>> model = keras.Model(inp, out)
    >>> x = np.random.default_rng(0).normal(size=(3, 4, 4, 1)).astype("float32")
    >>> result = perturbation_curve(model, x, x, patch_size=2)
    >>> result["curve"].shape, result["patches"]
    ((5,), 4)
"""

from __future__ import annotations

from typing import Any, Mapping

import warnings

import numpy as np
import tensorflow as tf

from innv_pattern.canonize import canonize

__all__ = ["aopc", "degradation_curves", "degrading_patch_size", "patch_grid",
           "perturbation_curve"]


def patch_grid(height: int, width: int, patch_size: int) -> np.ndarray:
    """``(height, width)`` map of each pixel's patch index (row-major patches).

    Example:
        >>> patch_grid(3, 5, 2)
        array([[0, 0, 1, 1, 2],
               [0, 0, 1, 1, 2],
               [3, 3, 4, 4, 5]])
    """
    cols = -(-width // patch_size)
    rows = np.arange(height)[:, None] // patch_size
    return rows * cols + np.arange(width)[None, :] // patch_size


def degrading_patch_size(side: int) -> int:
    """The paper's 9x9 patches for images of 72 pixels or more, else ``side // 8``, at least 2.

    A one-pixel patch replaced by its own mean is unchanged, so 2 is the
    smallest size whose curve can move (8x8 digits: 16 patches of 2x2).

    Example:
        >>> degrading_patch_size(224), degrading_patch_size(32), degrading_patch_size(8)
        (9, 4, 2)
    """
    return max(2, min(9, int(side) // 8))


def aopc(curve: np.ndarray) -> float:
    """Area over the perturbation curve: mean of ``curve[..., 0] - curve[..., n]``.

    Example:
        >>> round(aopc(np.array([0.9, 0.5, 0.5])), 4)
        0.2667
    """
    curve = np.asarray(curve, np.float64)
    return float(np.mean(curve[..., :1] - curve))


def _patch_scores(analysis: np.ndarray, grid: np.ndarray, patches: int) -> np.ndarray:
    """Summed attribution per patch, ``(n, patches)``."""
    heat = analysis.reshape(len(analysis), grid.size, -1).sum(-1)
    index = grid.ravel()[None, :] + patches * np.arange(len(analysis))[:, None]
    return np.bincount(index.ravel(), heat.ravel(), minlength=patches * len(analysis)).reshape(
        len(analysis), patches)


def _patch_means(x: np.ndarray, grid: np.ndarray, patches: int) -> np.ndarray:
    """``x`` with every patch replaced by its per-channel mean."""
    n, channels = len(x), x.shape[-1]
    flat = x.reshape(n, grid.size, channels)
    counts = np.bincount(grid.ravel(), minlength=patches)
    sums = np.stack([_patch_scores(flat[..., c], grid, patches) for c in range(channels)], -1)
    means = sums / counts[None, :, None]
    return means[:, grid.ravel()].reshape(x.shape).astype(x.dtype)


def _check_inputs(model: Any, analysis: Any, x: np.ndarray, patch_size: int) -> np.ndarray:
    if x.ndim != 4:
        raise ValueError(f"perturbation_curve needs images shaped (n, height, width, channels) "
                         f"(channels last); received x of shape {x.shape}.")
    if int(patch_size) < 1 or patch_size > max(x.shape[1:3]):
        raise ValueError(f"patch_size must be between 1 and the image side {max(x.shape[1:3])}; "
                         f"received {patch_size!r}.")
    if isinstance(analysis, str):
        if analysis != "random":
            raise ValueError(f"analysis must be an array like x or 'random'; received {analysis!r}.")
        return None
    analysis = np.asarray(analysis, np.float64)
    if analysis.shape[:3] != x.shape[:3] or analysis.ndim not in (3, 4):
        raise ValueError(f"analysis must have the shape of x {x.shape} (or without the channel "
                         f"axis); received {analysis.shape}.")
    return analysis


def perturbation_curve(model: Any, analysis: Any, x: Any, patch_size: int = 9,
                       steps: int | None = None, *, neuron_selection: Any = None,
                       output: str = "probability", batch_size: int = 64,
                       seed: int = 0) -> dict[str, Any]:
    """The degradation curve of ``model`` on ``x`` for the ranking by ``analysis``.

    Args:
        model: A Keras model whose output is a class score vector; a final
            softmax is stripped and re-applied, so logit models work too.
        analysis: Attributions shaped like ``x`` (or without the channel
            axis), or ``"random"`` for the random-order baseline.
        x: Images ``(n, height, width, channels)``.
        patch_size: Side of the square patches (the paper: 9 at 224x224).
        steps: Number of perturbation steps ``S`` (default: every patch).
        neuron_selection: The output to follow: ``None`` (the largest output
            on the unperturbed image, as the analyzers' ``max_activation``),
            an int, or one int per image.
        output: ``"probability"`` (softmax) or ``"logit"``.
        batch_size: Images per model call.
        seed: Seed of the random order.

    Returns:
        ``{"steps", "curve", "per_sample", "aopc", "selected", "patches",
        "patch_size"}``: the mean curve over images for ``n = 0..S``, the
        per-image curves ``(n_images, S + 1)``, their AOPC and the followed
        output per image.
    """
    x = np.asarray(x, np.float32)
    analysis = _check_inputs(model, analysis, x, patch_size)
    if output not in ("probability", "logit"):
        raise ValueError(f"output must be 'probability' or 'logit'; received {output!r}.")
    grid = patch_grid(x.shape[1], x.shape[2], int(patch_size))
    patches = int(grid.max()) + 1
    steps = patches if steps is None else int(steps)
    if not 0 <= steps <= patches:
        raise ValueError(f"steps must be between 0 and the {patches} patches; received {steps}.")
    scores_fn = _score_function(model, output, batch_size)
    first = scores_fn(x)
    selected = _selection(neuron_selection, first, len(x))
    if analysis is None:
        rng = np.random.default_rng(seed)
        order = np.stack([rng.permutation(patches) for _ in range(len(x))])
    else:
        order = np.argsort(-_patch_scores(analysis, grid, patches), axis=1, kind="stable")
    rank = np.argsort(order, axis=1)[:, grid]          # each pixel's patch position in the order
    blurred = _patch_means(x, grid, patches)
    per_sample = np.empty((len(x), steps + 1))
    rows = np.arange(len(x))
    per_sample[:, 0] = first[rows, selected]
    for n in range(1, steps + 1):
        mask = (rank < n)[..., None]
        per_sample[:, n] = scores_fn(np.where(mask, blurred, x))[rows, selected]
    if (analysis is None or patch_size == 1) and steps > 0:
        _warn_if_flat(per_sample, int(patch_size), output)
    return {"steps": np.arange(steps + 1), "curve": per_sample.mean(0), "per_sample": per_sample,
            "aopc": aopc(per_sample), "selected": selected, "patches": patches,
            "patch_size": int(patch_size)}


def degradation_curves(model: Any, x: np.ndarray, analyses: Mapping[str, Any],
                       patch_size: int | None = None, max_steps: int = 100,
                       verbose: int = 1) -> dict[str, dict[str, Any]]:
    """Image degradation (Fig. 4a) for each analysis and the random order.

    Args:
        model: The model the analyses explain.
        x: Images ``(n, height, width, channels)``.
        analyses: Label -> attributions shaped like ``x``.
        patch_size: Side of the patches (default :func:`degrading_patch_size`).
        max_steps: At most this many perturbation steps (default 100).
        verbose: 1 shows a progress bar over the curves.

    Returns:
        ``{label: perturbation_curve(...)}``, ``"random"`` first.
    """
    from innv_pattern.progress import Progress

    size = patch_size or degrading_patch_size(min(x.shape[1:3]))
    steps = min(max_steps, -(-x.shape[1] // size) * -(-x.shape[2] // size))
    orders = {"random": "random", **analyses}
    bar = Progress(len(orders), "curve") if verbose else None
    curves = {}
    for i, (label, analysis) in enumerate(orders.items()):
        curves[label] = perturbation_curve(model, analysis, x, patch_size=size, steps=steps)
        if bar is not None:
            bar.update(i + 1, label)
    if bar is not None:
        bar.done()
    return curves


def _warn_if_flat(per_sample: np.ndarray, patch_size: int, output: str) -> None:
    """Warns when no image's curve moves: every AOPC is then 0 and says nothing."""
    moved = np.max(np.abs(per_sample - per_sample[:, :1]))
    if moved > 1e-6 * max(1.0, float(np.max(np.abs(per_sample)))):
        return
    if patch_size == 1:
        cause = ("patches of one pixel are replaced by their own mean, which changes nothing; "
                 "pass patch_size=2 or more")
    elif output == "probability":
        cause = ("the model ignores what the patch means remove, or its softmax is saturated; "
                 "try output='logit' or larger patches")
    else:
        cause = "the model ignores what the patch means remove; try larger patches"
    warnings.warn(f"The degradation curve does not move (every AOPC is 0): {cause}.",
                  stacklevel=3)


def _score_function(model: Any, output: str, batch_size: int) -> Any:
    graph = canonize(model)
    forward = tf.function(lambda x: graph.run([x])[0], autograph=False, reduce_retracing=True)

    def scores(x: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(x), batch_size):
            out = forward(tf.constant(x[start:start + batch_size]))
            out = tf.reshape(out, [tf.shape(out)[0], -1])
            chunks.append((tf.nn.softmax(out) if output == "probability" else out).numpy())
        return np.concatenate(chunks)

    return scores


def _selection(neuron_selection: Any, first: np.ndarray, n: int) -> np.ndarray:
    if neuron_selection is None:
        return np.argmax(first, axis=1)
    index = np.broadcast_to(np.asarray(neuron_selection), (n,))
    if index.dtype.kind not in "iu" or np.any(index < 0) or np.any(index >= first.shape[1]):
        raise ValueError(f"neuron_selection must be an int or {n} ints in [0, {first.shape[1]}); "
                         f"received {neuron_selection!r}.")
    return index.astype(np.int64)
