"""How pattern fitting grows with dataset size, batch size and device count.

Each configuration runs in a fresh subprocess, so its peak resident memory
(``ru_maxrss``) is its own and logical CPU devices can be configured before
TensorFlow starts.  Devices are logical CPU devices under a
``MirroredStrategy``: on a 2-core machine they show the overhead of
distribution, not a speed-up.  Prints a table and writes
``benchmarks/results/scaling.json``.

    python benchmarks/scaling.py            # small CNN, all three sweeps
    python benchmarks/scaling.py --quick    # fewer points
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(config: dict) -> dict:
    """Runs one fit in this process and returns its measurements."""
    import resource
    import time

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    devices = config["devices"]
    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    sys.path.insert(0, str(HERE))
    from analyze import small_cnn  # the same small CNN as the analysis benchmark

    import innv_pattern as ip

    model = small_cnn()
    # Batches are generated on the fly, so the data never sits in memory and
    # the peak RSS is the fit's own: it must not grow with the number of samples.
    n, b = config["samples"], config["batch"]
    data = tf.data.Dataset.range(n // b).map(
        lambda i: tf.random.stateless_normal((b, 32, 32, 3), seed=tf.stack([i, 0])))
    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])
                if devices > 1 else None)
    computer = ip.PatternComputer(model, pattern_type="relu", strategy=strategy)
    computer.compute(data.take(1), verbose=0)  # trace outside the timing
    computer.reset()
    before_mb = _current_rss_mb()
    start = time.perf_counter()
    computer.compute(data, verbose=0)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**config, "seconds": seconds, "samples_per_s": config["samples"] / seconds,
            "peak_rss_mb": peak_mb, "rss_before_fit_mb": before_mb}


def _current_rss_mb() -> float:
    """Resident memory now (Linux), after TensorFlow, the model and the traced step exist."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(config: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(config)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweeps(quick: bool) -> dict[str, list[dict]]:
    sizes = [512, 2048] if quick else [512, 2048, 8192, 32768]
    batches = [32, 128] if quick else [16, 32, 64, 128, 256]
    return {
        "dataset_size": [{"samples": n, "batch": 64, "devices": 1} for n in sizes],
        "batch_size": [{"samples": 2048, "batch": b, "devices": 1} for b in batches],
        "devices": [{"samples": 2048, "batch": 64, "devices": d} for d in (1, 2, 4)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results" / "scaling.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    results = {}
    for name, configs in sweeps(args.quick).items():
        results[name] = []
        for config in configs:
            row = run(config)
            results[name].append(row)
            print(f"{name:13s} samples {row['samples']:6d} batch {row['batch']:4d} "
                  f"devices {row['devices']}  {row['seconds']:7.2f} s  "
                  f"{row['samples_per_s']:8.0f} samples/s  peak RSS {row['peak_rss_mb']:7.0f} MB "
                  f"(before the fit {row['rss_before_fit_mb']:5.0f} MB)",
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": "small_cnn (32x32x3)", "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
