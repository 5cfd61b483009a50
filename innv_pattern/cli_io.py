"""Reading the command line's files: models, arrays, images, folders of images.

Every problem a user can cause (a missing file, an unknown format, data that
does not fit the model) raises :class:`UserError` with one line saying what
was received and what is accepted; :mod:`innv_pattern.cli` prints it.

Inputs pass through :class:`InputOptions` on their way to the model:
``x * scale + offset``, then a named preprocessing (``caffe``, ``tf``,
``torch`` or a ``keras.applications`` module such as ``vgg16``).  Images are
decoded and resized (bilinearly, as ``keras.utils.image_dataset_from_directory``
does) to the model's input size, or to ``size`` where the model takes any.

Example:
    >>> import numpy as np, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.zeros((5, 8, 8), "float32"))
    >>> fit_to_model(load_array(path), (None, 8, 8, 1), path).shape   # channel axis added
    (5, 8, 8, 1)
    >>> InputOptions(scale=2.0, offset=-1.0).apply(np.array([0.0, 0.5, 1.0])).tolist()
    [-1.0, 0.0, 1.0]
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import re
from fractions import Fraction
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES", "InputOptions", "PREPROCESS_MODES", "UserError", "batches",
    "check_exists", "fit_to_model", "image_files", "load_array", "load_image_folder",
    "load_images", "load_model", "output_folder", "parse_number", "parse_size",
    "preprocess_function",
    "read_inputs", "with_input_shape", "write_file_rows",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
#: The modes of ``keras.applications.imagenet_utils.preprocess_input``.
PREPROCESS_MODES = ("caffe", "tf", "torch")


class UserError(Exception):
    """A mistake in the command line or its files: reported in one line, no traceback."""


def check_exists(path: str, what: str, folder_ok: bool = False) -> str:
    """Returns ``path`` if it is an existing file (or folder, if allowed)."""
    if folder_ok and os.path.isdir(path):
        return path
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' does not exist" + (" (expected a file or a folder)."
                                                             if folder_ok else "."))
    return path


def parse_number(text: str, option: str = "--scale") -> float:
    """A number or fraction such as ``"1/255"`` or ``"-1"``.

    Example:
        >>> round(parse_number("1/255"), 6), parse_number("-1", "--offset")
        (0.003922, -1.0)
    """
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{option} must be a number or a fraction such as 1/255; "
                        f"received {text!r}.") from None


def parse_size(text: str) -> tuple[int, int]:
    """``"224x224"`` (height x width) or ``"224"`` (square) as ``(height, width)``.

    Example:
        >>> parse_size("224x192"), parse_size("64")
        ((224, 192), (64, 64))
    """
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"--size must be HEIGHTxWIDTH in pixels, such as 224x224; "
                        f"received {text!r}.")
    return int(parts[0]), int(parts[1])


def preprocess_function(name: str) -> Callable[[Any], Any]:
    """The preprocessing called ``name``: an imagenet_utils mode or a keras.applications module."""
    import keras

    if name in PREPROCESS_MODES:
        return functools.partial(keras.applications.imagenet_utils.preprocess_input, mode=name)
    module = getattr(keras.applications, name, None) if name.isidentifier() else None
    function = getattr(module, "preprocess_input", None)
    if not callable(function):
        known = sorted(m for m in dir(keras.applications) if m.islower() and not
                       m.startswith("_") and m != "imagenet_utils")
        raise UserError(f"--preprocess must be {', '.join(PREPROCESS_MODES)} or a "
                        f"keras.applications module ({', '.join(known)}); received {name!r}.")
    return function


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How files become model inputs: ``x * scale + offset``, then ``preprocess``.

    Attributes:
        scale: Multiplies every input (e.g. 1/255 for 0-255 images).
        offset: Added after scaling (e.g. -1 with scale 2/255 for [-1, 1]).
        preprocess: ``caffe``, ``tf``, ``torch`` or a keras.applications
            module name (``vgg16``, ``resnet50``, ...), applied last.
        size: ``(height, width)`` to resize images to, for models that take
            any size (it must agree with a model's fixed size).
    """

    scale: float = 1.0
    offset: float = 0.0
    preprocess: str | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.preprocess is not None:
            preprocess_function(self.preprocess)       # an unknown name fails before any work

    def apply(self, x: Any) -> Any:
        """``x`` (numpy or a tensor) as the model takes it; numpy input is never modified."""
        if isinstance(x, np.ndarray):
            x = np.array(x, dtype=np.float32)           # a copy: preprocess_input works in place
        if self.scale != 1.0 or self.offset != 0.0:
            x = x * self.scale + self.offset
        if self.preprocess is not None:
            x = preprocess_function(self.preprocess)(x)
        return x


def load_model(path: str) -> Any:
    """Loads a ``.keras``, ``.h5`` or ``.hdf5`` model file (without compiling it)."""
    import keras

    check_exists(path, "Model file")
    if not path.lower().endswith(MODEL_SUFFIXES):
        raise UserError(f"Model file '{path}' must end in .keras, .h5 or .hdf5 (a Keras model "
                        "saved with model.save).")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras reports bad files with many exception types
        raise UserError(f"Could not load a Keras model from '{path}': {_one_line(err)}") from err
    if len(model.inputs) != 1:
        raise UserError(f"Model '{model.name}' in '{path}' has {len(model.inputs)} inputs; the "
                        "command line handles single-input models (use the Python API otherwise).")
    return model


def with_input_shape(model: Any, sample_shape: Sequence[int]) -> Any:
    """``model``, or where it takes inputs of any size a copy fixed to ``sample_shape``.

    Pattern fitting needs fixed shapes; the copy has the same layers and
    weights, so its patterns fit ``model`` too.
    """
    import keras

    if None not in model.input_shape[1:]:
        return model
    copy = keras.models.clone_model(
        model, input_tensors=keras.Input(tuple(sample_shape), dtype=model.inputs[0].dtype))
    copy.set_weights(model.get_weights())
    print(f"The model takes inputs of any size; fitting on {_shape_text(tuple(sample_shape))} "
          "(the patterns fit every size).")
    return copy


def load_array(path: str, key: str | None = None) -> np.ndarray:
    """The samples in a ``.npy`` file, or array ``key`` (default ``x``) of a ``.npz`` file.

    ``.npy`` files are memory-mapped, so large files are read batch by batch.
    """
    check_exists(path, "Data file")
    try:
        if path.lower().endswith(".npy"):
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                return archive[_npz_key(archive.files, key, path)]
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"Could not read '{path}' as a numpy file: {_one_line(err)}") from err
    raise UserError(f"Data file '{path}' must be .npy or .npz, an image ({', '.join(IMAGE_SUFFIXES)}) "
                    "or a folder of images.")


def _npz_key(files: list[str], key: str | None, path: str) -> str:
    if key is not None and key not in files:
        raise UserError(f"'{path}' has no array '{key}'; it has {files}. Choose one with --key.")
    if key is None and "x" not in files and len(files) != 1:
        raise UserError(f"'{path}' has arrays {files}; say which one holds the inputs with --key.")
    return key or ("x" if "x" in files else files[0])


def fit_to_model(x: np.ndarray, input_shape: tuple, source: str) -> np.ndarray:
    """Checks that ``x`` is a batch the model takes; adds a missing batch or channel axis.

    Args:
        x: The array read from ``source``.
        input_shape: The model's input shape, batch axis first (``None`` = any).
        source: Where ``x`` came from, for the message.
    """
    sample = tuple(input_shape[1:])
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise UserError(f"'{source}' holds {x.dtype} values; expected real numbers.")
    if x.ndim == len(sample) and _matches(x.shape, sample):
        x = x[None]                                          # a single sample
    if x.ndim == len(sample) and sample[-1] == 1 and _matches(x.shape[1:], sample[:-1]):
        x = x[..., None]                                     # grayscale without channel axis
    if x.ndim != len(sample) + 1 or not _matches(x.shape[1:], sample):
        raise UserError(f"'{source}' holds an array shaped {x.shape}; the model takes samples "
                        f"shaped {_shape_text(sample)} (a batch of them, or one).")
    if len(x) == 0:
        raise UserError(f"'{source}' holds no samples (shape {x.shape}).")
    return x


def _matches(shape: tuple, expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"


def read_inputs(path: str, key: str | None, input_shape: tuple,
                options: InputOptions) -> tuple[np.ndarray, list[str] | None]:
    """An image file, a folder of images or a .npy/.npz file as the model's inputs.

    Returns:
        The float32 batch (options applied) and the image file of each row
        (``None`` for arrays).
    """
    files = None
    if os.path.isdir(path):
        files = image_files(path)
    elif check_exists(path, "Input").lower().endswith(IMAGE_SUFFIXES):
        files = [path]
    if files is not None:
        return options.apply(load_images(files, input_shape, options.size)), files
    return options.apply(fit_to_model(load_array(path, key), input_shape, path)), None


def _image_geometry(input_shape: tuple, source: str,
                    size: tuple[int, int] | None) -> tuple[tuple[int, int], int]:
    """The ``(height, width)`` to resize to and the number of channels."""
    if len(input_shape) != 4 or input_shape[-1] not in (1, 3, 4):
        raise UserError(f"Images ('{source}') need a model that takes images shaped (height, "
                        f"width, 1, 3 or 4 channels); this one takes {_shape_text(input_shape[1:])}.")
    fixed = tuple(input_shape[1:3])
    if size is not None and not _matches(size, fixed):
        raise UserError(f"--size {size[0]}x{size[1]} does not fit the model, which takes images "
                        f"of {_shape_text(fixed)} pixels; leave --size out.")
    if size is None and None in fixed:
        raise UserError(f"The model takes images of any size {_shape_text(fixed)}; pass "
                        f"--size HEIGHTxWIDTH (e.g. --size 224x224) to resize '{source}' to.")
    return tuple(size or fixed), int(input_shape[-1])


def _decode(path: Any, size: tuple[int, int], channels: int) -> Any:
    """One image file (a string tensor) as a float32 ``(height, width, channels)`` tensor.

    Colour and alpha are picked in ``uint8`` at the file's size and converted to
    float by the resize itself (bilinear resizing reads ``uint8`` as float, so
    the values are those of a float copy resized, without making that copy).
    """
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
    native = tf.shape(image)[-1]                 # 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    gray = image[..., :1]
    if channels == 1:                            # luma as PIL's convert("L") computes it
        def luma() -> Any:                       # only for 3 or 4 channels (gray+alpha has 2)
            rgb = tf.cast(image[..., :3], tf.float32)
            return tf.cast(tf.round(tf.reduce_sum(rgb * [0.299, 0.587, 0.114], -1,
                                                  keepdims=True)), tf.uint8)
        color = tf.cond(native < 3, lambda: gray, luma)
    else:
        color = tf.cond(native < 3, lambda: tf.tile(gray, [1, 1, 3]), lambda: image[..., :3])
    if channels == 4:
        opaque = tf.fill(tf.concat([tf.shape(image)[:2], [1]], 0), tf.constant(255, tf.uint8))
        alpha = tf.cond(tf.equal(native % 2, 0), lambda: image[..., -1:], lambda: opaque)
        color = tf.concat([color, alpha], -1)
    resized = tf.cast(tf.image.resize(color, size), tf.float32)
    resized.set_shape(tuple(size) + (channels,))
    return resized


def load_images(paths: Sequence[str], input_shape: tuple,
                size: tuple[int, int] | None = None) -> np.ndarray:
    """Image files as one float32 batch (values 0-255), resized to the model's input."""
    import tensorflow as tf

    target, channels = _image_geometry(input_shape, paths[0] if paths else "", size)
    images = []
    for path in paths:
        try:
            images.append(_decode(tf.constant(path), target, channels).numpy())
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as err:
            raise UserError(f"Could not read image '{path}': {_one_line(err.message)}") from err
    return np.stack(images)


def load_image_folder(folder: str, input_shape: tuple, options: InputOptions, batch_size: int,
                      skip: int = 0) -> Any:
    """A folder of images (subfolders included, natural order) as a ``tf.data.Dataset``.

    Files are decoded, resized and ``options`` applied in parallel, image by
    image, and batches are prefetched.  ``skip`` leaves out the first files.
    """
    import tensorflow as tf

    target, channels = _image_geometry(input_shape, folder, options.size)
    files = image_files(folder)
    if skip >= len(files):
        raise UserError(f"--skip {skip} leaves no data: '{folder}' has {len(files)} images.")
    transform = _per_channel_function(options, channels)
    auto = tf.data.AUTOTUNE
    data = tf.data.Dataset.from_tensor_slices(files[skip:]).map(
        lambda p: transform(_decode(p, target, channels)), num_parallel_calls=auto,
        deterministic=True)
    return data.batch(batch_size).prefetch(auto)


def _per_channel_function(options: InputOptions, channels: int) -> Callable[[Any], Any]:
    """``options.apply`` for image tensors, as one matrix product and add where it is that.

    Every keras.applications preprocessing is, per pixel, a channel
    permutation (RGB to BGR) followed by a per-channel scale and shift.  The
    form is read off ``options.apply`` at a few probe pixels and checked on
    random images; anything else runs as it is.  Keras writes the permutation
    as ``x[..., ::-1]``; TensorFlow on CPU runs that, a gather on the channel
    axis, and even a per-channel add broadcast over an image several times
    slower than a matrix product on rows of pixels (a tf.data map over
    224x224 images on 2 cores: 380 images/s for gather, multiply and add,
    2300 for the product and add), and preprocessing cost more than decoding
    (benchmarks/pipeline.py).  A matrix whose one non-zero
    per column is the scale gives ``x[..., source] * scale`` exactly (the
    other products are exact zeros); that is checked too.
    """
    if options == InputOptions(size=options.size):
        return options.apply                                # nothing to do
    probes = np.concatenate([np.zeros((1, channels)), 100.0 * np.eye(channels)])
    out = np.asarray(options.apply(probes.reshape(-1, 1, 1, channels).astype(np.float32)),
                     np.float64).reshape(-1, channels)
    bias, matrix = out[0], (out[1:] - out[0]) / 100.0
    source = np.abs(matrix).argmax(axis=0)                 # the input channel of each output
    scale = matrix[source, np.arange(channels)].astype(np.float32)
    if np.count_nonzero(np.round(matrix, 6)) != channels or len(set(source)) != channels:
        return options.apply
    fast = _channel_map(source, scale, bias.astype(np.float32))
    check = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, channels)).astype(np.float32)
    got, expected = fast(check).numpy(), np.asarray(options.apply(check))
    if not np.array_equal(got, check[..., source] * scale + bias.astype(np.float32)) or \
            not np.allclose(got, expected, rtol=1e-5,
                            atol=1e-5 * float(np.max(np.abs(expected), initial=1.0))):
        return options.apply
    return fast


def _channel_map(source: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> Callable[[Any], Any]:
    """``x[..., source] * scale + bias`` for tensors, as a matrix product on rows of pixels."""
    import tensorflow as tf

    channels = len(source)
    matrix = np.zeros((channels, channels), np.float32)
    matrix[source, np.arange(channels)] = scale

    def fast(x: Any) -> Any:
        x = tf.convert_to_tensor(x, tf.float32)
        rows = tf.matmul(tf.reshape(x, [-1, channels]), matrix) + bias
        return tf.reshape(rows, tf.shape(x))

    return fast


def _natural_key(path: str) -> list[list[Any]]:
    """Sorts ``digit_2`` before ``digit_10``, folder by folder."""
    return [[int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", part))]
            for part in path.split(os.sep)]


def image_files(folder: str) -> list[str]:
    """The image files in ``folder`` and its subfolders, in natural order; at least one.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> for name in ("digit_10.png", "digit_2.png", "digit_1.png"):
        ...     open(os.path.join(root, name), "w").close()
        >>> [os.path.basename(f) for f in image_files(root)]
        ['digit_1.png', 'digit_2.png', 'digit_10.png']
    """
    found = [os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder)
             for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise UserError(f"Folder '{folder}' holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    return [os.path.join(folder, f) for f in sorted(found, key=_natural_key)]


def write_file_rows(path: str, files: Sequence[str]) -> None:
    """A CSV of which input file is which row (``row,file``) of an output array."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "file"])
        writer.writerows(enumerate(files))


def batches(x: np.ndarray, batch_size: int,
            options: InputOptions | None = None) -> Iterator[np.ndarray]:
    """Consecutive float32 batches of ``x`` (a memory-mapped file is read lazily)."""
    for start in range(0, len(x), batch_size):
        batch = np.asarray(x[start:start + batch_size], dtype=np.float32)
        yield batch if options is None else options.apply(batch)


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def output_folder(folder: str, option: str = "--out") -> None:
    """Makes sure the folder that ``option`` writes into exists; says so when it creates it."""
    folder = folder or "."
    if os.path.isdir(folder):
        return
    if os.path.exists(folder):
        raise UserError(f"{option} writes into '{folder}', which is a file, not a folder.")
    try:
        os.makedirs(folder)
    except OSError as err:
        raise UserError(f"{option} writes into the folder '{folder}', which does not exist and "
                        f"cannot be created ({err.strerror or _one_line(err)}).") from err
    print(f"Created the folder '{folder}' ({option}'s folder did not exist).")
