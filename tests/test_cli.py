"""The ``innv-pattern`` command on files it did not make: models saved by plain Keras code
(.keras and .h5), .npy/.npz arrays and a folder of PNG images.

A few runs go through a real subprocess (the installed console script's code path,
``python -m innv_pattern.cli``); the full matrix of user errors runs in-process
through :func:`innv_pattern.cli.main`, which is the same code without the ~10 s
TensorFlow start-up per case.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

from innv_pattern.cli import main

SHAPE = (12, 12, 3)


def _model(seed: int, name: str) -> keras.Model:
    """Plain Keras code, as a user would write it."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(SHAPE),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(3, activation="softmax"),
    ], name=name)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (48,) + SHAPE).astype("float32")
    paths = {name: str(root / name) for name in
             ("model.keras", "model.h5", "other.keras", "x.npy", "x.npz", "images", "one.png",
              "dense.keras", "garbage.keras", "garbage.h5", "notes.txt")}
    model = _model(0, "user_model")
    model.save(paths["model.keras"])
    model.save(paths["model.h5"])
    _model(1, "other_model").save(paths["other.keras"])
    keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)]).save(paths["dense.keras"])
    np.save(paths["x.npy"], x)
    np.savez(paths["x.npz"], images=x, labels=np.zeros(len(x)))
    os.makedirs(os.path.join(paths["images"], "sub"))
    for i in range(6):
        sub = "sub" if i % 2 else ""
        Image.fromarray((x[i] * 255).astype("uint8")).save(
            os.path.join(paths["images"], sub, f"img{i}.png"))
    Image.fromarray((x[0] * 255).astype("uint8")).resize((30, 20)).save(paths["one.png"])
    for name in ("garbage.keras", "garbage.h5", "notes.txt"):
        Path(paths[name]).write_bytes(b"not what it claims to be" * 10)
    paths["root"] = str(root)
    return paths


def _command() -> list[str]:
    """The installed console script, else the module (same code)."""
    script = Path(sys.executable).parent / "innv-pattern"
    return [str(script)] if script.exists() else [sys.executable, "-m", "innv_pattern.cli"]


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([*_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def _error_line(stderr: str) -> str:
    """The command's one error line (TensorFlow's start-up chatter and warnings removed)."""
    lines = [line for line in stderr.splitlines()
             if line.startswith("innv-pattern") and ": error: " in line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def subprocess_runs(files, tmp_path_factory) -> dict[str, Any]:
    """fit, explain and a user error through the console script, run at the same time
    (most of each is TensorFlow starting)."""
    root = tmp_path_factory.mktemp("subprocess")
    fitted = _fitted(files, root)
    paths = {"patterns": str(root / "p.h5"), "explained": str(root / "explained" / "one")}
    runs = {
        "fit": _start("fit", "--model", files["model.keras"], "--data", files["x.npy"], "--out",
                      paths["patterns"], "--batch-size", "16"),
        "explain": _start("explain", "--model", files["model.h5"], "--patterns", fitted,
                          "--method", "pattern.attribution", "--input", files["one.png"],
                          "--scale", "1/255", "--out", paths["explained"]),
        "error": _start("explain", "--model", files["other.keras"], "--patterns", fitted,
                        "--method", "pattern.net", "--input", files["x.npy"], "--out",
                        str(root / "never")),
    }
    return {**paths, **{name: _finish(process) for name, process in runs.items()}}


@pytest.mark.slow
def test_fit_in_a_subprocess(subprocess_runs):
    code, out, err = subprocess_runs["fit"]
    assert code == 0, err
    assert "Saved relu.positive+relu.negative patterns of 3 layers (48 samples)" in out
    assert os.path.getsize(subprocess_runs["patterns"]) > 0


@pytest.mark.slow
def test_explain_a_png_in_a_subprocess(subprocess_runs):
    code, out, err = subprocess_runs["explain"]
    assert code == 0, err
    analysis = np.load(subprocess_runs["explained"] + ".npy")
    assert analysis.shape == (1,) + SHAPE and np.isfinite(analysis).all()
    assert Image.open(subprocess_runs["explained"] + ".png").size[0] > 100


@pytest.mark.slow
def test_a_user_error_in_a_subprocess_is_one_line(subprocess_runs):
    code, out, err = subprocess_runs["error"]
    assert code == 1
    assert "do not fit model 'other_model'" in _error_line(err)


def _fitted(files: dict[str, str], tmp_path: Path, *extra: str) -> str:
    path = str(tmp_path / "fitted.h5")
    if not os.path.exists(path):
        assert main(["fit", "--model", files["model.keras"], "--data", files["x.npy"], "--out",
                     path, *extra]) == 0
    return path


def test_fit_on_a_folder_of_png_images_with_an_h5_model(files, tmp_path, capsys):
    out = str(tmp_path / "folder.h5")
    assert main(["fit", "--model", files["model.h5"], "--data", files["images"], "--scale",
                 "1/255", "--out", out, "--strategy", "mirrored", "--batch-size", "4"]) == 0
    assert "(6 samples)" in capsys.readouterr().out


def test_fit_resumes_and_merges_saved_statistics(files, tmp_path, capsys):
    first = _fitted(files, tmp_path)
    merged = str(tmp_path / "merged.h5")
    assert main(["fit", "--model", files["model.keras"], "--data", files["x.npz"], "--key",
                 "images", "--steps", "1", "--batch-size", "8", "--resume", first, "--out",
                 merged]) == 0
    out = capsys.readouterr().out
    assert "Resuming from 48 samples" in out and "(56 samples)" in out


def test_an_interrupted_fit_keeps_its_statistics(files, tmp_path, capsys, monkeypatch):
    from innv_pattern.patterns import PatternComputer, Patterns

    original = PatternComputer.compute

    def interrupted(self, data, **kwargs):          # Ctrl-C after the first batch
        original(self, data, **{**kwargs, "steps": 1})
        raise KeyboardInterrupt

    monkeypatch.setattr(PatternComputer, "compute", interrupted)
    out = str(tmp_path / "big.h5")
    assert main(["fit", "--model", files["model.keras"], "--data", files["x.npy"], "--out", out,
                 "--batch-size", "16"]) == 1
    line = _error_line(capsys.readouterr().err)
    partial = str(tmp_path / "big.partial.h5")
    assert f"Interrupted after 16 samples; their statistics are in '{partial}'" in line
    assert f"--resume {partial} --skip 16" in line and not os.path.exists(out)
    monkeypatch.setattr(PatternComputer, "compute", original)
    assert main(["fit", "--model", files["model.keras"], "--data", files["x.npy"], "--out", out,
                 "--resume", partial, "--skip", "16"]) == 0
    assert "(48 samples)" in capsys.readouterr().out
    whole = _fitted(files, tmp_path)
    for name, pattern in Patterns.load(whole).items():
        np.testing.assert_allclose(Patterns.load(out)[name], pattern, rtol=1e-4, atol=1e-6)


def test_a_checkpointed_fit_continues_with_the_same_command(files, tmp_path, capsys, monkeypatch):
    """--checkpoint-every: Ctrl-C after two batches, then the very same command finishes the fit
    (it loads OUT.partial.h5 and skips the 32 samples seen) and equals an uninterrupted fit."""
    from innv_pattern.patterns import PatternComputer, Patterns

    original = PatternComputer.compute

    def interrupted(self, data, batch_size=None, **kwargs):   # Ctrl-C after two batches
        def stream():
            yield from (data[i:i + batch_size] for i in range(0, 32, batch_size))
            raise KeyboardInterrupt
        return original(self, stream(), **kwargs)

    out, partial = str(tmp_path / "big.h5"), str(tmp_path / "big.partial.h5")
    argv = ["fit", "--model", files["model.keras"], "--data", files["x.npy"], "--out", out,
            "--batch-size", "16", "--checkpoint-every", "1"]
    monkeypatch.setattr(PatternComputer, "compute", interrupted)
    assert main(argv) == 1
    line = _error_line(capsys.readouterr().err)
    assert f"Interrupted after 32 samples; their statistics are in '{partial}'" in line
    assert "Continue with the same command" in line and not os.path.exists(out)
    assert Patterns.load(partial).samples_seen == 32
    monkeypatch.setattr(PatternComputer, "compute", original)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"Resuming from checkpoint '{partial}': 32 samples; skipping the first 32" in printed
    assert "(48 samples)" in printed and not os.path.exists(partial)  # all of it is in --out now
    whole = _fitted(files, tmp_path)
    for name, pattern in Patterns.load(whole).items():
        np.testing.assert_allclose(Patterns.load(out)[name], pattern, rtol=1e-4, atol=1e-6)


def test_explain_every_method_on_npz_and_folder(files, tmp_path, capsys):
    patterns = _fitted(files, tmp_path)
    for method in ("lrp.epsilon", "pattern.net"):
        extra = ["--patterns", patterns] if method.startswith("pattern") else []
        out = str(tmp_path / method)
        assert main(["explain", "--model", files["model.keras"], "--method", method, "--input",
                     files["x.npz"], "--key", "images", "--out", out + ".png", *extra]) == 0
        assert np.load(out + ".npy").shape == (48,) + SHAPE
    printed = capsys.readouterr().out
    assert ".png' (the first 16)" in printed
    # 48 inputs in batches of 32: a progress line, plain text when output is not a terminal
    assert "48/48 samples (100%)" in printed and not any(c in printed for c in "\r\b\x1b")
    out = str(tmp_path / "folder")
    assert main(["explain", "--model", files["model.keras"], "--method", "guided_backprop",
                 "--input", files["images"], "--scale", "1/255", "--neuron", "2", "--out",
                 out]) == 0
    assert np.load(out + ".npy").shape == (6,) + SHAPE


def test_explain_with_linear_and_relu_patterns(files, tmp_path):
    both = str(tmp_path / "both.h5")
    assert main(["fit", "--model", files["model.keras"], "--data", files["x.npy"], "--out", both,
                 "--pattern-type", "linear+relu"]) == 0
    out = str(tmp_path / "pa")
    assert main(["explain", "--model", files["model.keras"], "--patterns", both, "--method",
                 "pattern.attribution", "--input", files["x.npy"], "--out", out]) == 0


def test_evaluate_writes_reports(files, tmp_path, capsys):
    both = str(tmp_path / "both.h5")
    assert main(["fit", "--model", files["model.keras"], "--data", files["x.npy"], "--out", both,
                 "--pattern-type", "linear+relu"]) == 0
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", files["model.keras"], "--patterns", both, "--data",
                 files["x.npy"], "--out", str(out), "--samples", "8", "--methods", "gradient",
                 "pattern.attribution"]) == 0
    printed = capsys.readouterr().out
    assert "two_component" in printed and "AOPC" in printed
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["signal_quality"]) == {"random", "filter", "linear", "two_component"}
    assert set(report["degradation"]["aopc"]) == {"random", "gradient", "pattern.attribution"}
    assert (out / "signal_quality.png").exists() and (out / "degradation.png").exists()
    from innv_pattern.style import DPI

    assert Image.open(out / "degradation.png").info["dpi"] == pytest.approx((DPI, DPI), abs=0.1)
    vector = tmp_path / "vector"
    assert main(["evaluate", "--model", files["model.keras"], "--patterns", both, "--data",
                 files["x.npy"], "--out", str(vector), "--samples", "4", "--methods", "gradient",
                 "--format", "svg", "--dpi", "50"]) == 0
    written = sorted(p.name for p in vector.iterdir())
    assert written == ["degradation.svg", "evaluation.json", "signal_quality.svg"]
    assert (vector / "degradation.svg").read_text().lstrip().startswith("<?xml")


def test_explain_writes_the_figure_at_dpi_and_format(files, tmp_path, capsys):
    """--dpi and --format (or the suffix of --out) choose how the figure is written."""
    explain = ["explain", "--model", files["model.keras"], "--method", "gradient", "--input",
               files["x.npy"]]
    sizes = {}
    for dpi in ("40", "80"):
        assert main([*explain, "--out", str(tmp_path / f"at{dpi}"), "--dpi", dpi]) == 0
        sizes[dpi] = Image.open(tmp_path / f"at{dpi}.png").size
    assert sizes["80"][0] == pytest.approx(2 * sizes["40"][0], abs=2)
    assert main([*explain, "--out", str(tmp_path / "fig.pdf")]) == 0
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "fig.npy").exists()
    assert main([*explain, "--out", str(tmp_path / "v"), "--format", "svg"]) == 0
    assert (tmp_path / "v.svg").exists() and not (tmp_path / "v.png").exists()
    assert "'" + str(tmp_path / "v.svg") + "'" in capsys.readouterr().out


def _truncated(path: str) -> str:
    """A copy of an HDF5 file cut in half: still HDF5 by its signature, but damaged."""
    cut = path.replace(".h5", ".truncated.h5")
    data = Path(path).read_bytes()
    Path(cut).write_bytes(data[: len(data) // 2])
    return cut


def _errors(files: dict[str, str], fitted: str, other: str) -> list[tuple[list[str], str]]:
    m, x = files["model.keras"], files["x.npy"]
    explain = ["explain", "--model", m, "--method", "gradient", "--out", "/tmp/never"]
    return [
        (["fit", "--model", "missing.keras", "--data", x, "--out", "p.h5"],
         "Model file 'missing.keras' does not exist"),
        (["fit", "--model", m, "--data", "missing.npy", "--out", "p.h5"],
         "Data 'missing.npy' does not exist"),
        (["fit", "--model", files["notes.txt"], "--data", x, "--out", "p.h5"],
         "must end in .keras, .h5 or .hdf5"),
        (["fit", "--model", files["garbage.keras"], "--data", x, "--out", "p.h5"],
         "Could not load a Keras model"),
        (["fit", "--model", files["garbage.h5"], "--data", x, "--out", "p.h5"],
         "Could not load a Keras model"),
        (["fit", "--model", m, "--data", x, "--out", "p.txt"], "--out must name an HDF5 file"),
        (["fit", "--model", m, "--data", files["x.npz"], "--out", "p.h5"],
         "say which one holds the inputs with --key"),
        (["fit", "--model", m, "--data", files["x.npz"], "--key", "nope", "--out", "p.h5"],
         "has no array 'nope'"),
        (["fit", "--model", m, "--data", files["notes.txt"], "--out", "p.h5"],
         "must be .npy or .npz"),
        (["fit", "--model", m, "--data", files["garbage.keras"].replace("garbage.keras", "x.npy"),
          "--resume", "missing.h5", "--out", "p.h5"], "Statistics file 'missing.h5' does not exist"),
        (["fit", "--model", m, "--data", x, "--skip", "48", "--out", "p.h5"],
         "--skip 48 leaves no data"),
        (["fit", "--model", files["dense.keras"], "--data", x, "--out", "p.h5"],
         "the model takes samples shaped (5)"),
        (["fit", "--model", files["dense.keras"], "--data", files["images"], "--out", "p.h5"],
         "need a model that takes images"),
        (["fit", "--model", m, "--data", files["x.npz"], "--key", "labels", "--out", "p.h5"],
         "the model takes samples shaped (12, 12, 3)"),
        (["explain", "--model", m, "--method", "pattern.net", "--input", x, "--out", "o"],
         "'pattern.net' needs --patterns P.h5"),
        (["explain", "--model", m, "--method", "pattern.net", "--input", x, "--out", "o",
          "--patterns", files["garbage.h5"]], "is not an HDF5 file; --patterns takes the .h5"),
        (["explain", "--model", m, "--method", "pattern.net", "--input", x, "--out", "o",
          "--patterns", _truncated(fitted)], "cannot be read as a pattern file; it is truncated"),
        (["explain", "--model", files["other.keras"], "--method", "pattern.net", "--input", x,
          "--out", "o", "--patterns", fitted], "do not fit model 'other_model'"),
        (["explain", "--model", m, "--method", "pattern.net", "--input", x, "--out", "o",
          "--patterns", "missing.h5"], "Pattern file 'missing.h5' does not exist"),
        ([*explain, "--input", "missing.png"], "Input 'missing.png' does not exist"),
        ([*explain, "--input", files["garbage.keras"].replace(".keras", ".h5")],
         "must be .npy or .npz"),
        ([*explain, "--input", x, "--neuron", "7"], "neuron_selection must be in [0, 3)"),
        ([*explain, "--input", other], "holds no image"),
        (["evaluate", "--model", m, "--patterns", fitted, "--data", "missing.npy"],
         "Data 'missing.npy' does not exist"),
    ]


def test_every_user_error_is_one_line_and_a_non_zero_exit(files, tmp_path, capsys):
    fitted = _fitted(files, tmp_path)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    capsys.readouterr()
    for argv, expected in _errors(files, fitted, str(empty)):
        assert main(argv) == 1, argv
        captured = capsys.readouterr()
        line = _error_line(captured.err)
        assert line.startswith("innv-pattern: error: ") and expected in line, (argv, line)


@pytest.mark.parametrize("argv, expected", [
    (["explain", "--model", "m.keras", "--method", "nope", "--input", "x.npy", "--out", "o"],
     "argument --method: invalid choice: 'nope'"),
    (["fit", "--model", "m.keras", "--out", "p.h5"], "the following arguments are required: --data"),
    (["fit", "--model", "m.keras", "--data", "x.npy", "--out", "p.h5", "--batch-size", "0"],
     "expected a positive integer"),
    (["fit", "--model", "m.keras", "--data", "x.npy", "--out", "p.h5", "--strategy", "tpu"],
     "invalid choice: 'tpu'"),
    (["explain", "--model", "m", "--method", "gradient", "--input", "x", "--out", "o",
      "--scale", "1/0"], "--scale must be a number or a fraction"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_usage_errors_exit_2_with_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = _error_line(capsys.readouterr().err)
    assert expected in line and "--help" in line


def test_the_command_line_knows_every_analyzer():
    import innv_pattern as ip
    from innv_pattern import cli

    assert sorted(cli.METHODS) == sorted(ip.list_analyzers())


def test_help_lists_the_four_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "fit", "explain", "evaluate"):
        assert command in out


@pytest.mark.slow
def test_demo_quick_writes_figures_and_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--out", "demo_out"]) == 0
    printed = capsys.readouterr().out
    assert "open 'demo_out/report.md'" in printed
    # progress (epochs, analyzers, curves) in plain lines: captured output is not a terminal
    assert "epochs (100%)" in printed and "curves (100%)" in printed
    assert not any(c in printed for c in "\r\b\x1b"), repr(printed[:500])
    out = tmp_path / "demo_out"
    for name in ("digits_grid.png", "ground_truth.png", "photos_grid.png", "signal_quality.png",
                 "degradation.png", "report.md", "results.json", "digits_cnn.keras",
                 "digits_cnn.patterns.h5", "digits_test.npy"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    for figure in ("digits_grid", "ground_truth", "photos_grid", "signal_quality", "degradation"):
        assert f"({figure}.png)" in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["signal_quality"]["rho"]) == {"random", "filter", "linear", "two_component"}
    assert "random" in results["degradation"]["aopc"]


def test_partial_file_sits_next_to_out_with_or_without_an_extension():
    """An --out without an extension once gave the partial file the name '.partial.h5'."""
    from innv_pattern.cli_patterns import partial_path

    assert partial_path("runs/vgg.patterns.h5") == "runs/vgg.patterns.partial.h5"
    assert partial_path("runs/vgg") == "runs/vgg.partial.h5"


def test_a_lost_worker_is_named_with_where_the_statistics_are(files, tmp_path, capsys,
                                                              monkeypatch):
    """A SIGKILLed worker of a multi-worker fit surfaced as a raw gRPC text ending in
    "unexpected UnavailableError; ... report it". The survivor's error is simulated after the
    first checkpoint, with the text TensorFlow gives."""
    import tensorflow as tf

    from innv_pattern.patterns import PatternComputer

    original = PatternComputer.compute
    grpc = ("Collective ops is aborted by: failed to connect to all addresses; peer "
            "/job:worker/replica:0/task:1 is unavailable [type.googleapis.com/tensorflow...]")

    def lost(self, data, **kwargs):
        original(self, data, **{**kwargs, "steps": 1})
        raise tf.errors.UnavailableError(None, None, grpc)

    monkeypatch.setattr(PatternComputer, "compute", lost)
    out, partial = str(tmp_path / "mw.h5"), str(tmp_path / "mw.partial.h5")
    assert main(["fit", "--model", files["model.keras"], "--data", files["x.npy"], "--out", out,
                 "--batch-size", "16", "--checkpoint-every", "1"]) == 1
    line = _error_line(capsys.readouterr().err)
    assert "The multi-worker fit lost worker 1 (it stopped answering: UnavailableError)" in line
    assert f"the statistics of 16 samples are in '{partial}'" in line
    assert "same command and --strategy default" in line and "unexpected" not in line


def test_benchmark_command_writes_the_ground_truth_tables_and_figures(tmp_path, capsys,
                                                                      monkeypatch):
    """`innv-pattern benchmark` runs the ground-truth benchmark into --out: here a cut-down
    run (one scenario, one model, two analyzers, few images), the real function otherwise."""
    import innv_pattern.groundtruth_benchmark as gb

    monkeypatch.setitem(gb.SETTINGS, "quick", {"n": 600, "test": 200, "explain": 40,
                                               "epochs": 4, "patience": 2})
    real = gb.run_benchmark
    calls = []

    def small(output_dir, quick=True):
        calls.append(quick)
        return real(output_dir, quick=quick, scenarios=("lin",), backgrounds=("white",),
                    models=("linear",), analyzers=["gradient", "pattern.attribution"], verbose=0)

    monkeypatch.setattr(gb, "run_benchmark", small)
    out = tmp_path / "bench"
    assert main(["benchmark", "--out", str(out)]) == 0
    assert calls == [True]
    assert "Benchmark finished" in capsys.readouterr().out
    assert {"groundtruth.json", "groundtruth.md", "groundtruth_scores.png"} <= {
        p.name for p in out.iterdir()}
    scores = json.loads((out / "groundtruth.json").read_text())["cells"][0]["scores"]
    assert {"gradient", "pattern.attribution", "random", "sobel"} <= set(scores)


def test_mirrored_strategy_spreads_over_every_logical_cpu_without_a_gpu():
    """`--strategy mirrored` on a machine without GPUs used one replica (TensorFlow's
    MirroredStrategy() takes CPU:0 only); with the CPU split in two it must use both."""
    code = ("import tensorflow as tf\n"
            "cpu = tf.config.list_physical_devices('CPU')[0]\n"
            "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
            "from innv_pattern.cli import _mirrored\n"
            "print('replicas', _mirrored().num_replicas_in_sync)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert "replicas 2" in done.stdout, done.stdout + done.stderr[-2000:]


def test_fit_low_memory_checkpoints_then_explains(files, tmp_path):
    """--pattern-type relu.positive: checkpointed like relu, its file explains."""
    from innv_pattern.patterns import Patterns

    out = str(tmp_path / "low.h5")
    assert main(["fit", "--model", files["model.keras"], "--data", files["x.npy"], "--out", out,
                 "--pattern-type", "relu.positive", "--batch-size", "16",
                 "--checkpoint-every", "1"]) == 0
    saved = Patterns.load(out)
    assert saved.types == ("relu.positive",) and saved.statistics is not None
    assert not os.path.exists(str(tmp_path / "low.partial.h5"))   # removed once complete
    assert main(["explain", "--model", files["model.keras"], "--patterns", out, "--method",
                 "pattern.net", "--input", files["x.npy"], "--out", str(tmp_path / "pn")]) == 0
