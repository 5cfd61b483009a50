"""The README's walkthrough (the paper's workflow on an ImageNet-style tree), run as written.

:data:`WALKTHROUGH` is the README's section, read from README.md.  The test builds a small
synthetic ImageNet-style tree (class subfolders of ``.JPEG`` files of varied
sizes, drawn with PIL) and runs every code block of the walkthrough in order:
the model-building Python, the three ``innv-pattern`` commands (the installed
console script, exactly as written) and the API block.  One substitution keeps
the test affordable on two CPU cores, and it is the only one: the model is
built at 32x32 instead of VGG16's 224x224 (:data:`TEST_MODEL_LINE`); the
commands and the API code read the size from the model, so they run unchanged.
The API block runs with the CPU split into two logical devices, so its
``MirroredStrategy`` has two replicas; its patterns must equal those of the
command line's fit (another input pipeline, one replica).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

CLASSES = ("n01440764", "n01443537", "n01484850")   # ImageNet's first synsets, as folder names
TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 2


def _readme_walkthrough() -> str:
    """The README's walkthrough section, from its heading to the next section."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("## Walkthrough: VGG16 on an ImageNet-style folder")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


#: The walkthrough as the README carries it (read from README.md: one copy, which this runs).
WALKTHROUGH = _readme_walkthrough()

#: The walkthrough's model line, and what the test builds instead (the only change).
MODEL_LINE = "model = keras.applications.VGG16(weights=None, classes=3)"
TEST_SIZE = 32
TEST_MODEL_LINE = ("model = keras.applications.VGG16(weights=None, classes=3, "
                   f"input_shape=({TEST_SIZE}, {TEST_SIZE}, 3))")
LAYERS = ["block1_conv2", "block3_conv3", "block5_conv3"]

#: Before the API block: two logical CPU devices (before TensorFlow starts), so the
#: walkthrough's device list gives its MirroredStrategy two replicas.
API_PRELUDE = """\
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
"""
#: After the API block: what the test checks, as one JSON line.
API_EPILOGUE = """
import json
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "samples": patterns.samples_seen,
                  "shape": list(attribution.shape), "finite": bool(np.isfinite(attribution).all()),
                  "rho": {e: {k: float(v) for k, v in r.items()} for e, r in rho.items()},
                  "aopc": {k: float(c["aopc"]) for k, c in degradation.items()}}))
"""


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """The fenced code blocks of ``markdown`` as ``(language, code)``, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", markdown, flags=re.S)


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a bash block (backslash continuations joined), split as bash does."""
    return [shlex.split(line) for line in code.replace("\\\n", " ").splitlines() if line.strip()]


def make_tree(root: Path) -> None:
    """``imagenet/{train,val}/<class>/*.JPEG``: per class a coloured shape on noise, varied sizes."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for label, synset in enumerate(CLASSES):
            folder = root / "imagenet" / split / synset
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = rng.integers(40, 72, size=2)
                noise = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                image = PIL.fromarray(noise)
                box = sorted(rng.integers(4, min(height, width) - 4, size=2))
                colour = tuple(int(c) for c in np.roll([230, 40, 40], label))
                ImageDraw.Draw(image).ellipse([box[0], box[0], box[1] + 2, box[1] + 2],
                                              fill=colour)
                image.save(folder / f"{synset}_{i + 1}.JPEG", quality=90)


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def innv_pattern(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Runs an ``innv-pattern`` command line in this process (the console script calls
    ``innv_pattern.cli:main`` with the same arguments; one TensorFlow start instead of three)."""
    from innv_pattern.cli import main

    assert argv[0] == "innv-pattern"
    status = main(argv[1:])
    out, err = capsys.readouterr()
    assert status == 0, f"{shlex.join(argv)} failed ({status}):\n{out}\n{err}"
    return out


def test_walkthrough_blocks_are_the_documented_ones():
    """Model, command line, API: the blocks the test runs, the only substitution in place."""
    blocks = code_blocks(WALKTHROUGH)
    assert [language for language, _ in blocks] == ["python", "bash", "python"]
    assert blocks[0][1].count(MODEL_LINE) == 1
    commands = shell_commands(blocks[1][1])
    assert [c[:2] for c in commands] == [["innv-pattern", "fit"], ["innv-pattern", "explain"],
                                         ["innv-pattern", "evaluate"]]
    assert "224x224" in WALKTHROUGH and f"{TEST_SIZE}x{TEST_SIZE} instead of 224x224" in WALKTHROUGH


@pytest.mark.slow
def test_walkthrough_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """Fit, explain and evaluate on a synthetic ImageNet-style tree, command line and API."""
    make_tree(tmp_path)
    model_block, bash_block, api_block = [code for _, code in code_blocks(WALKTHROUGH)]
    (tmp_path / "make_model.py").write_text(model_block.replace(MODEL_LINE, TEST_MODEL_LINE))
    run([sys.executable, "make_model.py"], tmp_path)

    monkeypatch.chdir(tmp_path)
    fit_out, _, _ = [innv_pattern(argv, capsys) for argv in shell_commands(bash_block)]
    train_count = len(CLASSES) * TRAIN_PER_CLASS
    assert f"({train_count} samples)" in fit_out, fit_out

    val_count = len(CLASSES) * VAL_PER_CLASS
    analysis = np.load(tmp_path / "explained" / "val_attribution.npy")
    assert analysis.shape == (val_count, TEST_SIZE, TEST_SIZE, 3) and np.isfinite(analysis).all()
    assert np.abs(analysis).sum(axis=(1, 2, 3)).min() > 0, "an image got no attribution at all"
    with open(tmp_path / "explained" / "val_attribution.files.csv") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in rows] == [
        f"{synset}_{i + 1}.JPEG" for synset in CLASSES for i in range(VAL_PER_CLASS)]
    assert (tmp_path / "explained" / "val_attribution.png").stat().st_size > 10_000

    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    for estimator in ("random", "filter", "two_component"):
        assert sorted(report["signal_quality"][estimator]) == sorted(LAYERS), estimator
        assert all(np.isfinite(v) for v in report["signal_quality"][estimator].values())
    assert set(report["degradation"]["aopc"]) >= {"random"} and len(report["degradation"]["aopc"]) == 3
    assert report["degradation"]["patch_size"] == TEST_SIZE // 8
    for figure in ("signal_quality.png", "degradation.png"):
        assert (tmp_path / "evaluation" / figure).stat().st_size > 10_000, figure

    (tmp_path / "api.py").write_text(API_PRELUDE + api_block + API_EPILOGUE)
    api = json.loads(run([sys.executable, "api.py"], tmp_path).stdout.strip().splitlines()[-1])
    assert api["replicas"] == 2 and api["samples"] == train_count
    assert api["shape"] == [val_count, TEST_SIZE, TEST_SIZE, 3] and api["finite"]
    assert sorted(api["rho"]["two_component"]) == sorted(LAYERS)
    assert set(api["aopc"]) == {"random", "pattern.attribution"}

    # Two pipelines (the CLI's folder reader, keras' image_dataset_from_directory), one and two
    # replicas, the same images: the same statistics up to float32 rounding.  (Not the patterns
    # themselves: an untrained VGG16 seen on 12 images has many neurons with a handful of
    # samples in a regime, whose pattern divides by a near-zero variance.)
    from innv_pattern.patterns import Patterns

    cli, mirrored = (Patterns.load(tmp_path / name).statistics
                     for name in ("vgg16.patterns.h5", "vgg16.api.patterns.h5"))
    assert sorted(cli) == sorted(mirrored) and len(cli) == 16
    for layer, stats in cli.items():
        assert stats.count == mirrored[layer].count, layer
        for name, value in stats.sums.items():
            scale = np.max(np.abs(value)) or 1.0
            difference = np.max(np.abs(value - mirrored[layer].sums[name])) / scale
            assert difference < 1e-4, (layer, name, difference)
