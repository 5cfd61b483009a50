"""Is the input pipeline the bottleneck of a pattern fit? (issue 17)

Fits the patterns of a model on a folder of JPEGs, read as ``innv-pattern fit
--data FOLDER`` reads it (``innv_pattern.cli_io.load_image_folder``: parallel
decoding, resizing and preprocessing in ``tf.data``, prefetched), and on the same
images decoded beforehand into an in-memory array, side by side in one run;
and reads the folder without fitting (``decode``: what the reader alone
delivers).  The three alternate (folder, array, decode, folder, ...) so that
all see the same machine load, and each mode's best run counts.  The ratio
folder/array of samples per second is the result (target: at least 0.9).

Every run also records the CPU time this process used and the cores the rest
of the machine used meanwhile (from ``/proc/stat``): the ratio of CPU time
per sample (``ratio_by_cpu_time``) does not depend on what else runs.  A
folder fit does the array fit's work and the reader's work on the cores it
gets, so where the fit keeps them busy it reaches at most
``fit / (fit + read)`` core-ms per sample of the array fit's rate; the JSON
gives that bound next to the measured ratios (``ratio_bound_from_cpu``).
Where it is below 0.9, decoding the JPEGs on these cores, not the pipeline's
plumbing, keeps the folder fit from the target.

Two models: ``vgg16`` (the convolutional part of
``keras.applications.VGG16(weights=None)`` at 224x224, the paper's network,
with average pooling and a Dense(10) head: the paper's 25088x4096 ``fc1``
holds 2.5 GB of float64 statistics (24 bytes per weight, more than one copy
while fitting; the full model's run died here) and adds nothing to the
question) and ``small_cnn`` (three narrow conv layers at 224x224),
whose fit is cheap enough that a slow reader would show.  The JPEGs are
synthetic, 500x375 like a typical ImageNet photo, so decoding and resizing cost
what they cost on ImageNet.  One pattern computer per model serves all its
runs, so only the warm-up round traces the fit and the timed runs measure
throughput.

Usage::

    python benchmarks/pipeline.py                  # both models (VGG16 on fewer images)
    python benchmarks/pipeline.py --images 1024 --models small_cnn --repeats 4

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


def _cpu_now() -> tuple[float, float, float | None]:
    """Wall clock, this process's CPU seconds, and the whole machine's busy CPU seconds."""
    busy = None
    try:
        with open("/proc/stat") as f:                    # Linux: user nice system ... in ticks
            ticks = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait
    except (OSError, ValueError, IndexError):
        pass
    return time.perf_counter(), time.process_time(), busy


def _usage(before: tuple, after: tuple) -> dict:
    """Seconds, cores this process used, and cores the rest of the machine used meanwhile."""
    wall, cpu = after[0] - before[0], after[1] - before[1]
    other = None if before[2] is None else max(0.0, (after[2] - before[2] - cpu) / wall)
    return {"seconds": wall, "cores": cpu / wall, "other_cores": other}


def timed_run(mode: str, computer: PatternComputer, data, batch_size: int) -> tuple[dict, int]:
    """One fit (``folder``, ``array``) or one pass reading the folder without fitting
    (``decode``); its :func:`_usage` and the samples seen."""
    before = _cpu_now()
    if mode == "decode":
        seen = sum(int(batch.shape[0]) for batch in data)
    else:
        computer.compute(data, batch_size=batch_size if mode == "array" else None, verbose=0)
        seen = computer.samples_seen
    return _usage(before, _cpu_now()), seen


def measure(name: str, folder: Path, batch_size: int, repeats: int) -> dict:
    """Folder fits, array fits and folder reads (no fit) of model ``name``, alternating,
    ``repeats`` each after one warm-up round (which traces the fit's functions; one
    computer per model, so the timed runs are the fit's steady state)."""
    model, load_before = build_model(name), os.getloadavg()
    start = time.perf_counter()
    array = np.ascontiguousarray(OPTIONS.apply(load_images(image_files(str(folder)),
                                                           model.input_shape)))
    decode_seconds = time.perf_counter() - start
    computer = PatternComputer(model, pattern_type="relu")
    runs: dict[str, list[dict]] = {"folder": [], "array": [], "decode": []}
    for i in range(repeats + 1):                       # round 0 traces: not counted
        for mode in runs:
            data = array if mode == "array" else load_image_folder(
                str(folder), model.input_shape, OPTIONS, batch_size)
            usage, seen = timed_run(mode, computer, data, batch_size)
            assert seen == len(array), (mode, seen)
            if i:
                runs[mode].append(usage)
    result = summarize(runs, len(array))
    result.update(batch_size=batch_size, decode_to_array_seconds=decode_seconds,
                  load_average_before=load_before, load_average_after=os.getloadavg())
    rate = result["samples_per_s"]
    print(f"{name}: folder {rate['folder']:.1f} samples/s, array {rate['array']:.1f}, reading "
          f"the folder alone {rate['decode']:.1f}; ratio {result['ratio_folder_to_array']:.3f} "
          f"(by CPU time {result['ratio_by_cpu_time']:.3f}, bound from decoding "
          f"{result['ratio_bound_from_cpu']:.3f}; core-ms per sample "
          + ", ".join(f"{m} {v:.2f}" for m, v in result["core_ms_per_sample"].items())
          + f"; other processes {result['other_cores_mean'] or 0.0:.2f} cores)", flush=True)
    return result


def summarize(runs: dict[str, list[dict]], samples: int) -> dict:
    """Best run per mode, CPU time per sample, and the ratios the CPU time gives.

    The best runs of two modes may have met different loads from other
    processes; CPU time per sample does not depend on them.  A folder fit does
    the array fit's work and the reader's work on the cores it gets, so where
    the fit keeps those cores busy it reaches at most
    ``fit / (fit + read)`` (core-ms per sample) of the array fit's rate
    (``ratio_bound_from_cpu``); only cores the array fit leaves idle can do
    better.  ``ratio_by_cpu_time`` is the ratio at equal cores.
    """
    best = {mode: min(times, key=lambda r: r["seconds"]) for mode, times in runs.items()}
    rate = {mode: samples / r["seconds"] for mode, r in best.items()}
    core_ms = {mode: 1e3 * float(np.median([r["seconds"] * r["cores"] for r in times])) / samples
               for mode, times in runs.items()}
    others = [r["other_cores"] for times in runs.values() for r in times
              if r["other_cores"] is not None]
    return {"samples": samples, "runs": runs, "samples_per_s": rate,
            "ratio_folder_to_array": rate["folder"] / rate["array"],
            "ratio_decode_to_array": rate["decode"] / rate["array"],
            "core_ms_per_sample": core_ms,
            "ratio_by_cpu_time": core_ms["array"] / core_ms["folder"],
            "ratio_bound_from_cpu": core_ms["array"] / (core_ms["array"] + core_ms["decode"]),
            "other_cores_mean": float(np.mean(others)) if others else None,
            "other_cores_max": max(others) if others else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512, help="JPEGs for small_cnn")
    parser.add_argument("--vgg16-images", type=int, default=64,
                        help="JPEGs for vgg16 (a few samples/s on 2 CPU cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vgg16-repeats", type=int, default=2)
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
            models[name] = measure(name, folder, args.batch_size,
                                   args.vgg16_repeats if name == "vgg16" else args.repeats)
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
