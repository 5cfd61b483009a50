"""Reading the command line's files: models, arrays, images, folders of images.

Every problem a user can cause (a missing file, an unknown format, data that
does not fit the model) raises :class:`UserError` with one line saying what
was received and what is accepted; :mod:`innv_pattern.cli` prints it.

Example:
    >>> import numpy as np, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.zeros((5, 8, 8), "float32"))
    >>> fit_to_model(load_array(path), (None, 8, 8, 1), path).shape   # channel axis added
    (5, 8, 8, 1)
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any, Iterator

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES", "UserError", "batches", "check_exists", "fit_to_model", "image_files",
    "load_array", "load_image_folder", "load_images", "load_model", "parse_scale",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MODEL_SUFFIXES = (".keras", ".h5")


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


def parse_scale(text: str) -> float:
    """A number or fraction such as ``"1/255"``.

    Example:
        >>> round(parse_scale("1/255"), 6), parse_scale("2")
        (0.003922, 2.0)
    """
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--scale must be a number or a fraction such as 1/255; received {text!r}.")


def load_model(path: str) -> Any:
    """Loads a ``.keras`` or ``.h5`` model file (without compiling it)."""
    import keras

    check_exists(path, "Model file")
    if not path.lower().endswith(MODEL_SUFFIXES):
        raise UserError(f"Model file '{path}' must end in .keras or .h5 (a Keras model saved "
                        "with model.save).")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras reports bad files with many exception types
        raise UserError(f"Could not load a Keras model from '{path}': {_one_line(err)}") from err
    if len(model.inputs) != 1:
        raise UserError(f"Model '{model.name}' in '{path}' has {len(model.inputs)} inputs; the "
                        "command line handles single-input models (use the Python API otherwise).")
    return model


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


def _image_geometry(input_shape: tuple, source: str) -> tuple[tuple[int, int], str]:
    if len(input_shape) != 4 or input_shape[-1] not in (1, 3, 4):
        raise UserError(f"Images ('{source}') need a model that takes images shaped (height, "
                        f"width, 1, 3 or 4 channels); this one takes {_shape_text(input_shape[1:])}.")
    if input_shape[1] is None or input_shape[2] is None:
        raise UserError(f"The model takes images of any size; resize them and pass a .npy file "
                        f"instead of '{source}'.")
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}[input_shape[-1]]
    return (input_shape[1], input_shape[2]), mode


def load_images(paths: list[str], input_shape: tuple, scale: float) -> np.ndarray:
    """Image files as one batch, resized to the model's input and multiplied by ``scale``."""
    import keras

    size, mode = _image_geometry(input_shape, paths[0] if paths else "")
    images = []
    for path in paths:
        try:
            image = keras.utils.load_img(path, color_mode=mode, target_size=size)
        except Exception as err:  # PIL raises several types for unreadable files
            raise UserError(f"Could not read image '{path}': {_one_line(err)}") from err
        images.append(keras.utils.img_to_array(image))
    return np.stack(images).astype("float32") * scale


def load_image_folder(folder: str, input_shape: tuple, scale: float, batch_size: int) -> Any:
    """A folder of images (subfolders included) as a ``tf.data.Dataset`` of scaled batches."""
    import keras

    size, mode = _image_geometry(input_shape, folder)
    image_files(folder)
    data = keras.utils.image_dataset_from_directory(
        folder, labels=None, color_mode=mode, image_size=size, batch_size=batch_size,
        shuffle=False, verbose=False)
    return data.map(lambda x: x * scale)


def image_files(folder: str) -> list[str]:
    """The image files in ``folder`` and its subfolders, sorted; at least one."""
    found = sorted(os.path.join(root, f) for root, _, files in os.walk(folder)
                   for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    if not found:
        raise UserError(f"Folder '{folder}' holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    return found


def batches(x: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of ``x`` as float32 arrays (reads a memory-mapped file lazily)."""
    for start in range(0, len(x), batch_size):
        yield np.asarray(x[start:start + batch_size], dtype=np.float32)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
