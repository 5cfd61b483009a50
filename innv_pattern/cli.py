"""The ``innv-pattern`` command: ``demo``, ``fit``, ``explain``, ``evaluate`` and ``benchmark``.

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
import dataclasses
import logging
import os
import sys
import warnings
from typing import Any, Iterator, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from innv_pattern.cli_args import (Parser, add_data_options, add_figure_options,  # noqa: E402
                                   add_pattern_options, input_options, non_negative, positive,
                                   save_figure)
from innv_pattern.cli_io import (InputOptions, UserError, batches, check_exists,  # noqa: E402
                                 fit_to_model, load_array, load_image_folder, load_images,
                                 load_model, output_folder, read_inputs, with_input_shape,
                                 write_file_rows, IMAGE_SUFFIXES)
from innv_pattern.cli_patterns import (check_input_scale, is_lost_peer, load_patterns,  # noqa: E402
                                       lost_peer_message, partial_path, save_partial)
from innv_pattern.patterns.estimators import (DEFAULT_ESTIMATOR, ESTIMATORS,  # noqa: E402
                                              PATTERN_TYPES)
from innv_pattern.style import FORMATS  # noqa: E402

__all__ = ["build_parser", "main"]

PROG = "innv-pattern"


class _AnalyzerNames:
    """Analyzer names read from the analyzer classes' declarations, when first needed.

    ``argparse`` checks ``--method`` against it; the registry (and TensorFlow,
    quietly) is imported only then, so ``--help`` and ``fit`` never wait for it.
    """

    def __init__(self, which: str = "all") -> None:
        self.which = which

    def names(self) -> tuple[str, ...]:
        with _native_stderr_silenced():
            from innv_pattern.analyzers import analyzer_classes

        return tuple(n for n, c in analyzer_classes().items()
                     if self.which == "all" or getattr(c, self.which))

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


#: ``fit --pattern-type``: each estimator (and low-memory form), the linear one with each other.
PATTERN_TYPE_CHOICES = tuple(PATTERN_TYPES) + tuple(f"linear+{name}" for name in ESTIMATORS
                                                    if name != "linear")

#: Every analyzer's name; the ones that need a pattern file; the paper's ten.
METHODS, PATTERN_METHODS = _AnalyzerNames(), _AnalyzerNames("needs_patterns")
PAPER_METHODS = _AnalyzerNames("in_paper")
STRATEGIES = ("default", "mirrored", "multiworker")
MAX_FIGURE_ROWS = 16
MODEL_HELP = "a Keras model file (.keras, .h5 or .hdf5)"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    debug = bool(os.environ.get("INNV_PATTERN_DEBUG"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default" if debug else "ignore")
            warnings.filterwarnings("always", module=r"innv_pattern(\.|$)")
            if not debug:
                warnings.showwarning = _show_warning
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


def _show_warning(message: Any, *_: Any, **__: Any) -> None:
    """Prints one of the library's warnings as one line on stderr (others are ignored)."""
    text = " ".join(str(message).split())
    print(f"{PROG}: warning: {text}", file=sys.stderr)


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

        made = {"default": lambda: None, "mirrored": _mirrored,
                "multiworker": tf.distribute.MultiWorkerMirroredStrategy}[strategy]()
        tf.config.list_logical_devices()
    return made


def _mirrored() -> Any:
    """A ``MirroredStrategy`` over every GPU, else over every logical CPU device (TensorFlow's
    default takes only ``CPU:0`` when there is no GPU)."""
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def build_parser() -> argparse.ArgumentParser:
    """The parser of all five subcommands."""
    parser = Parser(prog=PROG, description="PatternNet and PatternAttribution for Keras 3: "
                     "fit patterns, explain inputs, evaluate explanations.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_fit(commands)
    _add_explain(commands)
    _add_evaluate(commands)
    _add_benchmark(commands)
    return parser


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser("demo", help="train a small CNN on sklearn's digits, fit patterns, "
                               "explain with every analyzer, evaluate, write figures and a report")
    demo.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    demo.add_argument("--quick", action="store_true", help="fewer samples and steps (a smoke test)")
    demo.set_defaults(run=_run_demo)


def _add_fit(commands: Any) -> None:
    fit = commands.add_parser("fit", help="fit the patterns of a model on data, save them to HDF5")
    fit.add_argument("--model", required=True, help=MODEL_HELP)
    fit.add_argument("--data", required=True, help="a .npy/.npz file or a folder of images")
    fit.add_argument("--out", required=True, help="the pattern file to write (.h5)")
    fit.add_argument("--pattern-type", default=DEFAULT_ESTIMATOR, choices=PATTERN_TYPE_CHOICES,
                     help="the signal estimator: "
                     + ", ".join(f"'{e.name}' ({e.summary})" for e in ESTIMATORS.values())
                     + "; 'linear+NAME' fits both in one pass; 'NAME.positive' only the "
                     "pattern PatternNet and PatternAttribution use, in two thirds of the memory")
    fit.add_argument("--batch-size", type=positive, default=32, help="default 32")
    fit.add_argument("--steps", type=positive, help="stop after this many batches")
    fit.add_argument("--strategy", default="default", choices=STRATEGIES,
                     help="tf.distribute strategy (multiworker reads TF_CONFIG; default: none)")
    fit.add_argument("--resume", nargs="+", metavar="STATE",
                     help="pattern file(s) whose statistics to continue from (several: merged)")
    fit.add_argument("--skip", type=non_negative, default=0, metavar="N",
                     help="skip the first N samples of --data (those a resumed fit has seen)")
    fit.add_argument("--checkpoint-every", type=positive, metavar="N",
                     help="save the statistics to OUT.partial.h5 every N batches (and when "
                     "interrupted); the same command run again continues from there")
    add_data_options(fit)
    fit.set_defaults(run=_run_fit)


def _add_explain(commands: Any) -> None:
    explain = commands.add_parser("explain", help="explain inputs with one analyzer; write .npy "
                                  "and .png")
    explain.add_argument("--model", required=True, help=MODEL_HELP)
    explain.add_argument("--method", required=True, choices=METHODS, metavar="METHOD",
                         help="an analyzer, e.g. pattern.attribution, pattern.net, lrp.epsilon, "
                         "gradient (a wrong name lists all of them)")
    explain.add_argument("--input", required=True, help="an image, a .npy/.npz file (one sample "
                         "or a batch) or a folder of images")
    explain.add_argument("--out", required=True, help="output path; OUT.npy and the figure "
                         "OUT.png (or --format) are written, and OUT.files.csv (each row's "
                         "file) for images")
    add_pattern_options(explain, False, "pattern file (needed by pattern.net and "
                        "pattern.attribution; make one with 'innv-pattern fit')")
    explain.add_argument("--neuron", type=non_negative, help="explain this output (default: "
                         "each sample's largest)")
    explain.add_argument("--batch-size", type=positive, default=32, help="default 32")
    add_data_options(explain)
    add_figure_options(explain, "png, or the suffix of --out")
    explain.set_defaults(run=_run_explain)


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="signal-estimator quality rho per layer and "
                                   "image degradation of each analyzer")
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    add_pattern_options(evaluate, True, "pattern file from 'innv-pattern fit'")
    evaluate.add_argument("--data", required=True, help="a .npy/.npz file or a folder of images "
                          "(split in three for rho; the first --samples for degradation)")
    evaluate.add_argument("--out", default="evaluation", help="output folder (default evaluation)")
    evaluate.add_argument("--methods", nargs="+", choices=METHODS, metavar="METHOD",
                          help="analyzers to degrade (default: the paper's ten)")
    evaluate.add_argument("--samples", type=positive, default=64,
                          help="inputs for the degradation curves (default 64)")
    evaluate.add_argument("--patch-size", type=positive, help="side of the square patches "
                          "(default: the paper's 9 for images of 72 pixels or more, else side/8 "
                          "but at least 2: a one-pixel patch is its own mean)")
    evaluate.add_argument("--layers", nargs="+", metavar="LAYER",
                          help="kernel layers to measure rho for (default: all)")
    add_data_options(evaluate)
    add_figure_options(evaluate, "png")
    evaluate.set_defaults(run=_run_evaluate)


def _run_fit(args: argparse.Namespace) -> None:
    check_exists(args.model, "Model file")
    check_exists(args.data, "Data", folder_ok=True)
    for state in args.resume or ():
        check_exists(state, "Statistics file")
    if not args.out.lower().endswith((".h5", ".hdf5")):
        raise UserError(f"--out must name an HDF5 file ending in .h5; received '{args.out}'.")
    output_folder(os.path.dirname(args.out))
    strategy = _start_tensorflow(args.strategy)
    model = load_model(args.model)
    options = input_options(args)
    from innv_pattern.patterns import PatternComputer

    data, batch_size, sample_shape = _fit_data(args, model, options)
    model = with_input_shape(model, sample_shape)
    parts = tuple(args.pattern_type.split("+"))  # "linear+relu": both
    pattern_type = parts if len(parts) > 1 else parts[0]
    computer = PatternComputer(model, pattern_type=pattern_type, strategy=strategy)
    if args.resume:
        computer.load_state(*args.resume)
        print(f"Resuming from {computer.samples_seen} samples in {', '.join(args.resume)}.")
    resumed, partial = computer.samples_seen, partial_path(args.out)
    checkpoint = partial if args.checkpoint_every else None
    try:
        patterns = computer.compute(data, batch_size=batch_size, steps=args.steps, verbose=1,
                                    accumulate=bool(args.resume), resume=bool(checkpoint),
                                    checkpoint=checkpoint,
                                    checkpoint_every=args.checkpoint_every or 100)
    except KeyboardInterrupt:
        save_partial(computer, partial, resumed, args.skip, bool(checkpoint))
    except Exception as err:
        if not is_lost_peer(err):
            raise
        raise UserError(lost_peer_message(err, partial)) from None
    if _is_chief(strategy):
        patterns.save(args.out)
        print(f"Saved {'+'.join(patterns.types)} patterns of {len(patterns)} layers "
              f"({patterns.samples_seen} samples) to '{args.out}'.")
    if checkpoint:  # everything is in --out now
        with contextlib.suppress(FileNotFoundError):
            os.remove(checkpoint)


def _fit_data(args: argparse.Namespace, model: Any,
              options: InputOptions) -> tuple[Any, int | None, tuple[int, ...]]:
    """The data to fit on, the batch size to pass (``None`` when already batched) and the
    shape of a sample."""
    if os.path.isdir(args.data):
        data = load_image_folder(args.data, model.input_shape, options, args.batch_size,
                                 args.skip)
        return data, None, tuple(data.element_spec.shape[1:])
    if args.data.lower().endswith(IMAGE_SUFFIXES):       # one image: options applied here
        x, options = read_inputs(args.data, None, model.input_shape, options)[0], InputOptions()
    else:
        x = fit_to_model(load_array(args.data, args.key), model.input_shape, args.data)
    if args.skip >= len(x):
        raise UserError(f"--skip {args.skip} leaves no data: '{args.data}' has {len(x)} samples.")
    x = x[args.skip:]
    if x.nbytes <= 2**30:
        return options.apply(x), args.batch_size, x.shape[1:]
    return batches(x, args.batch_size, options), None, x.shape[1:]  # read batch by batch


def _is_chief(strategy: Any) -> bool:
    """Whether this process writes the results (the chief, or worker 0 without one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    return task_type in (None, "chief") or (task_type == "worker" and resolver.task_id == 0)


def _run_explain(args: argparse.Namespace) -> None:
    check_exists(args.model, "Model file")
    check_exists(args.input, "Input", folder_ok=True)
    if args.method in PATTERN_METHODS and not args.patterns:
        raise UserError(f"'{args.method}' needs --patterns P.h5; make one with 'innv-pattern fit "
                        "--model M --data D --out P.h5'.")
    if args.patterns and args.method not in PATTERN_METHODS:
        print(f"Note: '{args.method}' does not use patterns; --patterns '{args.patterns}' is not "
              f"read (only {' and '.join(PATTERN_METHODS)} use them).")
        args.patterns = None
    suffixes = (".npy", *(f".{f}" for f in FORMATS))
    stem = args.out[: -4] if args.out.lower().endswith(suffixes) else args.out
    output_folder(os.path.dirname(stem))
    _start_tensorflow()
    model = load_model(args.model)
    options = input_options(args)
    x, files = read_inputs(args.input, args.key, model.input_shape, options)
    patterns = None
    if args.patterns:
        patterns = load_patterns(args.patterns, model, args.allow_changed_weights)
        check_input_scale(model, patterns, x)
    analyzer = _analyzer(args.method, model, patterns, args.neuron)
    analysis = _analyze(analyzer, x, args.neuron, args.batch_size)
    np.save(stem + ".npy", analysis)
    written = [f"'{stem}.npy'"]
    if files is not None:
        write_file_rows(stem + ".files.csv", files)
        written.append(f"'{stem}.files.csv' (the file of each row)")
    shown = slice(0, MAX_FIGURE_ROWS)
    labels, meaning = _row_labels(model, x[shown], args.neuron)
    pictures = _as_read(args, model, options, files, x[shown])
    figure = save_figure(_explain_figure(pictures, analysis[shown], args.method, labels), stem,
                         args, args.out)
    more = f" (the first {MAX_FIGURE_ROWS})" if len(x) > MAX_FIGURE_ROWS else ""
    print(f"Explained {len(x)} input(s) with {args.method}: {', '.join(written)}, "
          f"'{figure}'{more}; its rows are labelled with {meaning}.")


def _as_read(args: argparse.Namespace, model: Any, options: InputOptions,
             files: list[str] | None, x: np.ndarray) -> np.ndarray:
    """The figure's input column: the inputs before ``--preprocess`` (keras.applications
    preprocessing swaps channels and subtracts means, which would distort the pictures)."""
    if options.preprocess is None:
        return x
    raw = dataclasses.replace(options, preprocess=None)
    if files is not None:
        return raw.apply(load_images(files[:len(x)], model.input_shape, options.size))
    return read_inputs(args.input, args.key, model.input_shape, raw)[0][:len(x)]


def _analyzer(method: str, model: Any, patterns: Any, neuron: int | None) -> Any:
    import innv_pattern as ip
    from innv_pattern.evaluate import pattern_options

    options = {} if patterns is None else pattern_options(patterns)
    mode = "max_activation" if neuron is None else "index"
    return ip.create_analyzer(method, model, neuron_selection_mode=mode, **options)


def _analyze(analyzer: Any, x: np.ndarray, neuron: int | None, batch_size: int) -> np.ndarray:
    """``analyzer.analyze`` batch by batch, with a progress bar for more than one batch."""
    from innv_pattern.progress import Progress

    bar = Progress(len(x), "sample") if len(x) > batch_size else None
    parts = []
    for start in range(0, len(x), batch_size):
        parts.append(analyzer.analyze(x[start:start + batch_size], neuron_selection=neuron))
        if bar is not None:
            bar.update(min(start + batch_size, len(x)))
    if bar is not None:
        bar.done()
    return np.concatenate(parts)


def _row_labels(model: Any, x: np.ndarray, neuron: int | None) -> tuple[list[str], str]:
    """Each row's explained output and its value as the analyzers see it (before a softmax)."""
    import tensorflow as tf

    from innv_pattern.canonize import ActivationOp, canonize

    full = canonize(model, strip_softmax=False)
    softmax = any(isinstance(op, ActivationOp) and op.activation == "softmax"
                  and op.outputs[0] in full.outputs for op in full.ops)
    out = np.asarray(canonize(model).run([tf.constant(x)])[0]).reshape(len(x), -1)
    chosen = out.argmax(axis=1) if neuron is None else np.full(len(x), neuron)
    kind = "pre-softmax" if softmax else "value"
    labels = [f"output {k} ({kind} {row[k]:.3g})" for k, row in zip(chosen, out)]
    which = "the largest output" if neuron is None else f"output {neuron}"
    value = "its value before the final softmax" if softmax else "its value"
    return labels, f"the explained output ({which}) and {value}"


def _explain_figure(x: np.ndarray, analysis: np.ndarray, method: str, labels: list[str]) -> Any:
    from innv_pattern import viz

    per_row = int(np.ceil(np.sqrt(len(x))))          # 16 inputs: 4 rows of 4 (input, analysis)
    return viz.plot_grid(x, {method: analysis}, row_labels=labels, cell_size=2.0, per_row=per_row)


def _run_evaluate(args: argparse.Namespace) -> None:
    for path, what in ((args.model, "Model file"), (args.patterns, "Pattern file")):
        check_exists(path, what)
    check_exists(args.data, "Data", folder_ok=True)
    output_folder(args.out)
    _start_tensorflow()
    from innv_pattern.cli_evaluate import run_evaluate

    args.methods = args.methods or list(PAPER_METHODS)

    run_evaluate(args)


def _add_benchmark(commands: Any) -> None:
    bench = commands.add_parser("benchmark", help="ground truth: score every analyzer against the "
                                "known signal of XAI-TRIS images (small version: minutes)")
    bench.add_argument("--out", default="groundtruth_results",
                       help="output folder (default groundtruth_results)")
    bench.add_argument("--full", action="store_true",
                       help="the full benchmark (more images and epochs; about 40 minutes)")
    bench.set_defaults(run=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> None:
    output_folder(args.out)
    _start_tensorflow()
    from innv_pattern.groundtruth_benchmark import run_benchmark

    run_benchmark(args.out, quick=not args.full)
    print(f"Benchmark finished: tables and figures in '{args.out}'.")


def _run_demo(args: argparse.Namespace) -> None:
    _start_tensorflow()
    from innv_pattern.demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print(f"Demo finished: figures and report in '{args.out}'; open '{report}'.")


if __name__ == "__main__":
    sys.exit(main())
