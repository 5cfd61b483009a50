"""The ``innv-pattern`` command: ``demo``, ``fit``, ``explain`` and ``evaluate``.

Every mistake a user can make (a missing file, data of the wrong shape,
patterns for another model, an unknown method) ends the command with one
line on stderr and a non-zero exit status, never a traceback (set
``INNV_PATTERN_DEBUG=1`` to see one).

Example (a shell session)::

    innv-pattern demo --out demo_output
    innv-pattern fit --model model.keras --data x_train.npy --out model.patterns.h5
    innv-pattern explain --model model.keras --patterns model.patterns.h5 \\
        --method pattern.attribution --input cat.png --out cat_attribution
    innv-pattern evaluate --model model.keras --patterns model.patterns.h5 --data x_test.npy

In Python, :func:`main` takes the arguments and returns the exit status (the
error line goes to stderr: ``innv-pattern: error: Model file 'missing.keras'
does not exist.``):

    >>> main(["explain", "--model", "missing.keras", "--method", "gradient",
    ...       "--input", "x.npy", "--out", "out"])
    1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from typing import Any, Iterator, NoReturn, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from innv_pattern.cli_io import (UserError, batches, check_exists, fit_to_model,  # noqa: E402
                                 image_files, load_array, load_image_folder, load_images,
                                 load_model, parse_scale, IMAGE_SUFFIXES)

__all__ = ["build_parser", "main"]

PROG = "innv-pattern"
#: The analyzers' names, known before TensorFlow loads (a test keeps them equal to list_analyzers).
METHODS = ("gradient", "input_t_gradient", "deconvnet", "guided_backprop", "lrp.z", "lrp.epsilon",
           "smoothgrad", "integrated_gradients", "pattern.net", "pattern.attribution")
PATTERN_METHODS = ("pattern.net", "pattern.attribution")
STRATEGIES = ("default", "mirrored", "multiworker")
MAX_FIGURE_ROWS = 16


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help').\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    debug = bool(os.environ.get("INNV_PATTERN_DEBUG"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default" if debug else "ignore")
            args.run(args)
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted.", file=sys.stderr)
        return 130
    except Exception as err:  # the one place every error becomes one line
        if debug:
            raise
        expected = isinstance(err, (UserError, ValueError, TypeError, OSError))
        text = " ".join(str(err).split()) or type(err).__name__
        hint = "" if expected else (f" (unexpected {type(err).__name__}; set INNV_PATTERN_DEBUG=1 "
                                    "for the traceback and report it)")
        print(f"{PROG}: error: {text}{hint}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Hides what TensorFlow's C++ runtime prints while it starts (it ignores TF_CPP_MIN_LOG_LEVEL)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def _start_tensorflow(strategy: str = "default") -> Any:
    """Starts TensorFlow quietly; returns the ``tf.distribute`` strategy named (``None``: default).

    A multi-worker strategy must exist before TensorFlow runs anything, hence here.
    """
    with _native_stderr_silenced():
        import tensorflow as tf

        made = {"default": lambda: None, "mirrored": tf.distribute.MirroredStrategy,
                "multiworker": tf.distribute.MultiWorkerMirroredStrategy}[strategy]()
        tf.config.list_logical_devices()
    return made


def build_parser() -> argparse.ArgumentParser:
    """The parser of all four subcommands."""
    parser = _Parser(prog=PROG, description="PatternNet and PatternAttribution for Keras 3: "
                     "fit patterns, explain inputs, evaluate explanations.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_fit(commands)
    _add_explain(commands)
    _add_evaluate(commands)
    return parser


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", help="array of a .npz file holding the inputs (default: 'x', "
                        "or its only array)")
    parser.add_argument("--scale", type=_scale, default=1.0,
                        help="multiply images read from files by this, e.g. 1/255 (default 1)")


def _scale(text: str) -> float:
    try:
        return parse_scale(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser("demo", help="train a small CNN on sklearn's digits, fit patterns, "
                               "explain with every analyzer, evaluate, write figures and a report")
    demo.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    demo.add_argument("--quick", action="store_true", help="fewer samples and steps (a smoke test)")
    demo.set_defaults(run=_run_demo)


def _add_fit(commands: Any) -> None:
    fit = commands.add_parser("fit", help="fit the patterns of a model on data, save them to HDF5")
    fit.add_argument("--model", required=True, help="a .keras or .h5 model file")
    fit.add_argument("--data", required=True, help="a .npy/.npz file or a folder of images")
    fit.add_argument("--out", required=True, help="the pattern file to write (.h5)")
    fit.add_argument("--pattern-type", default="relu",
                     choices=("relu", "relu_eq7", "linear", "linear+relu"),
                     help="the signal estimator: 'relu' (two-component S_a+- with "
                     "within-regime statistics, shift-invariant), 'relu_eq7' (the paper's Eq. 7 "
                     "with the global mean of y), 'linear' (S_a) or linear and relu "
                     "(default relu)")
    fit.add_argument("--batch-size", type=_positive, default=32, help="default 32")
    fit.add_argument("--steps", type=_positive, help="stop after this many batches")
    fit.add_argument("--strategy", default="default", choices=STRATEGIES,
                     help="tf.distribute strategy (multiworker reads TF_CONFIG; default: none)")
    fit.add_argument("--resume", nargs="+", metavar="STATE",
                     help="pattern file(s) whose statistics to continue from (several: merged)")
    fit.add_argument("--skip", type=_non_negative, default=0, metavar="N",
                     help="skip the first N samples of --data (those a resumed fit has seen)")
    fit.add_argument("--checkpoint-every", type=_positive, metavar="N",
                     help="save the statistics to OUT.partial.h5 every N batches (and when "
                     "interrupted); the same command run again continues from there")
    _data_options(fit)
    fit.set_defaults(run=_run_fit)


def _add_explain(commands: Any) -> None:
    explain = commands.add_parser("explain", help="explain inputs with one analyzer; write .npy "
                                  "and .png")
    explain.add_argument("--model", required=True, help="a .keras or .h5 model file")
    explain.add_argument("--method", required=True, choices=METHODS, metavar="METHOD",
                         help="one of: " + ", ".join(METHODS))
    explain.add_argument("--input", required=True, help="an image, a .npy/.npz file (one sample "
                         "or a batch) or a folder of images")
    explain.add_argument("--out", required=True, help="output path; OUT.npy and OUT.png are written")
    explain.add_argument("--patterns", help="pattern file (needed by pattern.net and "
                         "pattern.attribution; make one with 'innv-pattern fit')")
    explain.add_argument("--neuron", type=_non_negative, help="explain this output (default: "
                         "each sample's largest)")
    explain.add_argument("--batch-size", type=_positive, default=32, help="default 32")
    _data_options(explain)
    explain.set_defaults(run=_run_explain)


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="signal-estimator quality rho per layer and "
                                   "image degradation of each analyzer")
    evaluate.add_argument("--model", required=True, help="a .keras or .h5 model file")
    evaluate.add_argument("--patterns", required=True, help="pattern file from 'innv-pattern fit'")
    evaluate.add_argument("--data", required=True, help="a .npy/.npz file or a folder of images "
                          "(split in three for rho; the first --samples for degradation)")
    evaluate.add_argument("--out", default="evaluation", help="output folder (default evaluation)")
    evaluate.add_argument("--methods", nargs="+", choices=METHODS, metavar="METHOD",
                          default=list(METHODS), help="analyzers to degrade (default: all)")
    evaluate.add_argument("--samples", type=_positive, default=64,
                          help="inputs for the degradation curves (default 64)")
    evaluate.add_argument("--patch-size", type=_positive, help="side of the square patches "
                          "(default: the paper's 9 for images of 72 pixels or more, else side/8)")
    _data_options(evaluate)
    evaluate.set_defaults(run=_run_evaluate)


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; received {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer; received {text!r}")
    return value


def _run_fit(args: argparse.Namespace) -> None:
    check_exists(args.model, "Model file")
    check_exists(args.data, "Data", folder_ok=True)
    for state in args.resume or ():
        check_exists(state, "Statistics file")
    if not args.out.lower().endswith((".h5", ".hdf5")):
        raise UserError(f"--out must name an HDF5 file ending in .h5; received '{args.out}'.")
    strategy = _start_tensorflow(args.strategy)
    model = load_model(args.model)
    from innv_pattern.patterns import PatternComputer

    pattern_type = ("linear", "relu") if args.pattern_type == "linear+relu" else args.pattern_type
    computer = PatternComputer(model, pattern_type=pattern_type, strategy=strategy)
    if args.resume:
        computer.load_state(*args.resume)
        print(f"Resuming from {computer.samples_seen} samples in {', '.join(args.resume)}.")
    data, batch_size = _fit_data(args, model)
    resumed, partial = computer.samples_seen, _partial_path(args.out)
    checkpoint = partial if args.checkpoint_every else None
    if checkpoint:
        os.makedirs(os.path.dirname(os.path.abspath(partial)), exist_ok=True)
    try:
        patterns = computer.compute(data, batch_size=batch_size, steps=args.steps, verbose=1,
                                    resume=bool(args.resume) or bool(checkpoint),
                                    checkpoint=checkpoint,
                                    checkpoint_every=args.checkpoint_every or 100)
    except KeyboardInterrupt:
        _save_partial(computer, partial, resumed, args.skip, bool(checkpoint))
    if _is_chief(strategy):
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        patterns.save(args.out)
        print(f"Saved {'+'.join(patterns.types)} patterns of {len(patterns)} layers "
              f"({patterns.samples_seen} samples) to '{args.out}'.")
    if checkpoint:  # everything is in --out now
        with contextlib.suppress(FileNotFoundError):
            os.remove(checkpoint)


def _partial_path(out: str) -> str:
    """Where an interrupted (or checkpointed) fit keeps its statistics: OUT.partial.h5."""
    return os.path.splitext(out)[0] + ".partial.h5"


def _save_partial(computer: Any, partial: str, resumed: int, skipped: int,
                  checkpointed: bool) -> NoReturn:
    """Saves the statistics of an interrupted fit and says how to continue it."""
    seen = computer.samples_seen - resumed
    if computer.samples_seen == 0:
        raise KeyboardInterrupt
    if checkpointed:  # compute saved them when interrupted
        raise UserError(f"Interrupted after {computer.samples_seen} samples; their statistics "
                        f"are in '{partial}'. Continue with the same command: it resumes from "
                        "there and skips the samples already seen.")
    computer.save_state(partial)
    raise UserError(f"Interrupted after {computer.samples_seen} samples; their statistics are in "
                    f"'{partial}'. Continue with: --resume {partial} --skip {skipped + seen}")


def _fit_data(args: argparse.Namespace, model: Any) -> tuple[Any, int | None]:
    """The data to fit on and the batch size to pass (``None`` when already batched)."""
    if os.path.isdir(args.data):
        data = load_image_folder(args.data, model.input_shape, args.scale, args.batch_size)
        return (data.unbatch().skip(args.skip).batch(args.batch_size) if args.skip else data), None
    x = fit_to_model(_read(args.data, args.key, model, args.scale), model.input_shape, args.data)
    if args.skip >= len(x):
        raise UserError(f"--skip {args.skip} leaves no data: '{args.data}' has {len(x)} samples.")
    x = x[args.skip:]
    if x.nbytes <= 2**30:
        return np.asarray(x, dtype=np.float32), args.batch_size
    return batches(x, args.batch_size), None      # larger files: read batch by batch


def _read(path: str, key: str | None, model: Any, scale: float) -> np.ndarray:
    """An image file, a folder of images, or a .npy/.npz file as an array."""
    if os.path.isdir(path):
        return load_images(image_files(path), model.input_shape, scale)
    check_exists(path, "Input")
    if path.lower().endswith(IMAGE_SUFFIXES):
        return load_images([path], model.input_shape, scale)
    return load_array(path, key)


def _is_chief(strategy: Any) -> bool:
    """Whether this process writes the results (the chief, or worker 0 without one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    return task_type in (None, "chief") or (task_type == "worker" and resolver.task_id == 0)


def _load_patterns(path: str, model: Any) -> Any:
    from innv_pattern.patterns import Patterns

    check_exists(path, "Pattern file")
    return Patterns.load(path, model=model)


def _run_explain(args: argparse.Namespace) -> None:
    check_exists(args.model, "Model file")
    check_exists(args.input, "Input", folder_ok=True)
    if args.method in PATTERN_METHODS and not args.patterns:
        raise UserError(f"'{args.method}' needs --patterns P.h5; make one with 'innv-pattern fit "
                        "--model M --data D --out P.h5'.")
    if args.patterns and args.method not in PATTERN_METHODS:
        raise UserError(f"--patterns is used by {' and '.join(PATTERN_METHODS)}; "
                        f"'{args.method}' does not use patterns.")
    _start_tensorflow()
    model = load_model(args.model)
    x = fit_to_model(_read(args.input, args.key, model, args.scale), model.input_shape, args.input)
    x = np.asarray(x, dtype=np.float32)
    analyzer = _analyzer(args.method, model, args.patterns, args.neuron)
    analysis = _analyze(analyzer, x, args.neuron, args.batch_size)
    stem = args.out[: -4] if args.out.lower().endswith((".npy", ".png")) else args.out
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    np.save(stem + ".npy", analysis)
    shown = slice(0, MAX_FIGURE_ROWS)
    _save_figure(_explain_figure(model, x[shown], analysis[shown], args.method), stem + ".png")
    more = f" (figure: the first {MAX_FIGURE_ROWS})" if len(x) > MAX_FIGURE_ROWS else ""
    print(f"Explained {len(x)} input(s) with {args.method}: '{stem}.npy', '{stem}.png'{more}.")


def _analyzer(method: str, model: Any, patterns_path: str | None, neuron: int | None) -> Any:
    import innv_pattern as ip

    options: dict[str, Any] = {}
    if patterns_path:
        patterns = _load_patterns(patterns_path, model)
        kind = next(t for t in ("relu", "relu_eq7", "linear") if patterns.has_type(t))
        options = {"patterns": patterns.for_type(kind), "pattern_type": kind}
    mode = "max_activation" if neuron is None else "index"
    return ip.create_analyzer(method, model, neuron_selection_mode=mode, **options)


def _analyze(analyzer: Any, x: np.ndarray, neuron: int | None, batch_size: int) -> np.ndarray:
    """``analyzer.analyze`` batch by batch, with a progress bar for more than one batch."""
    import keras

    bar = keras.utils.Progbar(len(x), unit_name="sample") if len(x) > batch_size else None
    parts = []
    for start in range(0, len(x), batch_size):
        parts.append(analyzer.analyze(x[start:start + batch_size], neuron_selection=neuron))
        if bar is not None:
            bar.update(min(start + batch_size, len(x)))
    return np.concatenate(parts)


def _explain_figure(model: Any, x: np.ndarray, analysis: np.ndarray, method: str) -> Any:
    from innv_pattern import viz

    out = np.asarray(model.predict(x, verbose=0)).reshape(len(x), -1)
    labels = [f"output {k}: {row[k]:.2f}" for k, row in zip(out.argmax(axis=1), out)]
    return viz.plot_grid(x, {method: analysis}, row_labels=labels, cell_size=2.0)


def _save_figure(fig: Any, path: str) -> None:
    fig.savefig(path, dpi=100)


def _run_evaluate(args: argparse.Namespace) -> None:
    for path, what in ((args.model, "Model file"), (args.patterns, "Pattern file")):
        check_exists(path, what)
    check_exists(args.data, "Data", folder_ok=True)
    _start_tensorflow()
    model = load_model(args.model)
    patterns = _load_patterns(args.patterns, model)
    x = fit_to_model(_read(args.data, args.key, model, args.scale), model.input_shape, args.data)
    x = np.asarray(x, dtype=np.float32)
    if len(x) < 4:
        raise UserError(f"'{args.data}' holds {len(x)} samples; evaluate needs at least 4 (half "
                        "to fit the read-out of rho, half to measure it).")
    os.makedirs(args.out, exist_ok=True)
    report = {"signal_quality": _evaluate_rho(model, patterns, x, args.out)}
    if x.ndim == 4:
        report["degradation"] = _evaluate_degradation(model, patterns, x[:args.samples], args)
    else:
        print("Image degradation skipped: it needs images (height, width, channels).")
    with open(os.path.join(args.out, "evaluation.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"Wrote evaluation.json and figures to '{args.out}'.")


def _evaluate_rho(model: Any, patterns: Any, x: np.ndarray, out: str) -> dict[str, Any]:
    """rho per layer: the read-out fitted on the first half of ``x``, measured on the second."""
    from innv_pattern.demo import markdown_table
    from innv_pattern.evaluate import plot_signal_quality, signal_quality

    estimators = ["random", "filter"] + ["linear"] * patterns.has_type("linear") + \
        ["two_component"] * patterns.has_type("relu")
    print(f"Signal-estimator quality rho per layer ({', '.join(estimators)}) on {len(x)} samples...")
    half = len(x) // 2
    rho = signal_quality(model, None, x[:half], x[half:], estimators=estimators, patterns=patterns)
    layers = list(rho[estimators[0]])
    print(markdown_table(["estimator"] + layers,
                         [[e] + [float(rho[e][name]) for name in layers] for e in estimators]))
    if "linear" not in estimators:
        print("(Fit with --pattern-type linear+relu to compare the linear estimator S_a too.)")
    plot_signal_quality(rho, title="Signal-estimator quality per layer").savefig(
        os.path.join(out, "signal_quality.png"), dpi=80)
    return rho


def _evaluate_degradation(model: Any, patterns: Any, x: np.ndarray,
                          args: argparse.Namespace) -> dict[str, Any]:
    from innv_pattern.demo import analyze_all, degradation, markdown_table
    from innv_pattern.evaluate import plot_perturbation_curves

    print(f"Image degradation of {len(x)} inputs for {len(args.methods)} analyzers and a random "
          "order...")
    analyses = analyze_all(model, x, patterns, 1, tuple(args.methods))
    curves = degradation(model, x, analyses, patch_size=args.patch_size)
    aopc = {label: curve["aopc"] for label, curve in curves.items()}
    print(markdown_table(["analyzer", "AOPC (higher: steeper decay)"],
                         [[k, v] for k, v in sorted(aopc.items(), key=lambda kv: -kv[1])]))
    plot_perturbation_curves(curves, title="Image degradation").savefig(
        os.path.join(args.out, "degradation.png"), dpi=80)
    return {"patch_size": curves["random"]["patch_size"], "aopc": aopc,
            "curves": {k: v["curve"].tolist() for k, v in curves.items()}}


def _run_demo(args: argparse.Namespace) -> None:
    _start_tensorflow()
    from innv_pattern.demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print(f"Demo finished: figures and report in '{args.out}'; open '{report}'.")


if __name__ == "__main__":
    sys.exit(main())
