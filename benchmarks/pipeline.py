"""Is the input pipeline the bottleneck of a pattern fit? (issue 17)

Fits the patterns of a model on a folder of JPEGs, read as ``innv-pattern fit
--data FOLDER`` reads it (``innv_pattern.cli_io.load_image_folder``: parallel
decoding, resizing and preprocessing in ``tf.data``, prefetched), and on the same
images decoded beforehand into an in-memory array, side by side in one run:
the two fits alternate (folder, array, folder, array, ...) so that both see the
same machine load, and each mode's best run counts.  The ratio folder/array
of samples per second is the result (target: at least 0.9).

Two models: ``vgg16`` (the convolutional part of
``keras.applications.VGG16(weights=None)`` at 224x224, the paper's network,
with average pooling and a Dense(10) head: the paper's 25088x4096 ``fc1``
holds 2.5 GB of float64 statistics (24 bytes per weight, more than one copy
while fitting; the full model's run died here) and adds nothing to the
question) and ``small_cnn`` (three narrow conv layers at 224x224),
whose fit is cheap enough that a slow reader would show.  The JPEGs are
synthetic, 500x375 like a typical ImageNet photo, so decoding and resizing cost
what they cost on ImageNet.

Usage::

    python benchmarks/pipeline.py                  # both models (VGG16 on fewer images)
    python benchmarks/pipeline.py --images 512 --models small_cnn --repeats 3

Writes ``benchmarks/results/pipeline.json`` and prints the ratio per model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from innv_pattern.cli_io import InputOptions, image_files, load_image_folder, load_images  # noqa: E402
from innv_pattern.patterns import PatternComputer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.json"
SIZE = 224
PHOTO = (375, 500)          # height, width of a typical ImageNet JPEG
OPTIONS = InputOptions(preprocess="vgg16")


def build_model(name: str) -> keras.Model:
    """``vgg16`` (random weights, convolutions, pooled, Dense(10)) or ``small_cnn``, at
    224x224x3."""
    if name == "vgg16":
        base = keras.applications.VGG16(weights=None, include_top=False, pooling="avg",
                                        input_shape=(SIZE, SIZE, 3))
        return keras.Model(base.input, keras.layers.Dense(10, name="logits")(base.output),
                           name="vgg16")
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(8, 5, strides=4, activation="relu", name="conv1"),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2"),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv3"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, name="logits")], name="small_cnn")


def make_jpegs(folder: Path, count: int) -> None:
    """``count`` smooth random photos (JPEG compresses them as it does real ones), 10 classes."""
    rng = np.random.default_rng(0)
    for i in range(count):
        low = rng.integers(0, 256, size=(PHOTO[0] // 25, PHOTO[1] // 25, 3), dtype=np.uint8)
        photo = Image.fromarray(low).resize(PHOTO[::-1], Image.BICUBIC)
        noisy = np.clip(np.asarray(photo, np.int16) + rng.integers(-12, 13, (*PHOTO, 3)), 0, 255)
        sub = folder / f"class_{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy.astype(np.uint8)).save(sub / f"img_{i}.JPEG", quality=90)


def timed_fit(model: keras.Model, data, batch_size: int | None) -> tuple[float, int]:
    """Seconds of one full fit (a fresh computer, as the command line makes) and samples seen."""
    start = time.perf_counter()
    patterns = PatternComputer(model, pattern_type="relu").compute(data, batch_size=batch_size,
                                                                   verbose=0)
    return time.perf_counter() - start, patterns.samples_seen


def measure(name: str, folder: Path, batch_size: int, repeats: int) -> dict:
    """Folder and array fits of model ``name``, alternating, ``repeats`` each (+1 warm-up)."""
    model = build_model(name)
    start = time.perf_counter()
    array = OPTIONS.apply(load_images(image_files(str(folder)), model.input_shape))
    array = np.ascontiguousarray(array)
    decode_seconds = time.perf_counter() - start
    runs: dict[str, list[float]] = {"folder": [], "array": []}
    for i in range(repeats + 1):                       # run 0 traces both: not counted
        for mode in ("folder", "array"):
            data = (load_image_folder(str(folder), model.input_shape, OPTIONS, batch_size)
                    if mode == "folder" else array)
            seconds, seen = timed_fit(model, data, None if mode == "folder" else batch_size)
            assert seen == len(array), (mode, seen)
            if i:
                runs[mode].append(seconds)
    rate = {mode: len(array) / min(times) for mode, times in runs.items()}
    result = {"samples": len(array), "batch_size": batch_size, "seconds": runs,
              "samples_per_s": rate, "ratio_folder_to_array": rate["folder"] / rate["array"],
              "decode_to_array_seconds": decode_seconds}
    print(f"{name}: folder {rate['folder']:.1f} samples/s, array {rate['array']:.1f} samples/s, "
          f"ratio {result['ratio_folder_to_array']:.3f} (decoding the folder to an array "
          f"beforehand took {decode_seconds:.1f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs for small_cnn")
    parser.add_argument("--vgg16-images", type=int, default=32,
                        help="JPEGs for vgg16 (about 2 samples/s on 2 CPU cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["small_cnn", "vgg16"],
                        choices=["small_cnn", "vgg16"])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    load_before = os.getloadavg()
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            make_jpegs(folder, args.vgg16_images if name == "vgg16" else args.images)
            models[name] = measure(name, folder, args.batch_size, args.repeats)
    report = {"models": models, "photo_size": list(PHOTO),
              "input_size": [SIZE, SIZE], "preprocess": OPTIONS.preprocess,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "tensorflow": tf.__version__,
                          "load_average_before": load_before,
                          "load_average_after": os.getloadavg()}}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {args.out}.")


if __name__ == "__main__":
    main()
