"""Subprocess for the distributed pattern-fit tests (devices are set before TF starts).

Usage: ``python pattern_distributed_worker.py MODE MODEL.keras DATA.npy OUT``
with MODE ``mirrored`` (two logical CPU devices; numpy, dataset and generator
input, saved as ``OUT.numpy.h5``, ``OUT.dataset.h5``, ``OUT.generator.h5``)
or ``multiworker`` (one worker of a ``MultiWorkerMirroredStrategy`` whose
cluster is in ``TF_CONFIG``; saved as ``OUT.multiworker.h5``).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from innv_pattern.patterns import PatternComputer  # noqa: E402

BATCH = 24


def mirrored(model: keras.Model, x: np.ndarray, out: str) -> None:
    """Mirrored fits of numpy, tf.data and generator input."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    computer = PatternComputer(model, ("linear", "relu"), strategy=strategy)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(BATCH)
    generator = (x[i:i + BATCH] for i in range(0, len(x), BATCH))
    for name, data, size in (("numpy", x, BATCH), ("dataset", dataset, None),
                             ("generator", generator, None)):
        computer.compute(data, batch_size=size, verbose=0).save(f"{out}.{name}.h5")


def main() -> None:
    mode, model_path, data_path, out = sys.argv[1:5]
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model = keras.saving.load_model(model_path, compile=False)
    x = np.load(data_path)
    if mode == "mirrored":
        mirrored(model, x, out)
    else:
        computer = PatternComputer(model, ("linear", "relu"), strategy=strategy)
        computer.compute(x, batch_size=BATCH, verbose=0).save(f"{out}.multiworker.h5")


if __name__ == "__main__":
    main()
