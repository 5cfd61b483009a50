"""The command line's shared options and argument types (the subcommands: :mod:`innv_pattern.cli`).

Example:
    >>> parser = Parser(prog="innv-pattern")
    >>> add_data_options(parser)
    >>> args = parser.parse_args(["--scale", "2/255", "--offset", "-1", "--size", "32x48"])
    >>> options = input_options(args)
    >>> round(options.scale, 5), options.offset, options.size
    (0.00784, -1.0, (32, 48))
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, NoReturn

from innv_pattern.cli_io import PREPROCESS_MODES, InputOptions, UserError, parse_number, parse_size
from innv_pattern.style import DPI, FORMATS

__all__ = ["Parser", "add_data_options", "add_figure_options", "add_pattern_options",
           "figure_format", "input_options", "non_negative", "positive", "save_figure"]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help').\n")


def positive(text: str) -> int:
    """An integer above 0."""
    value = non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text!r}")
    return value


def non_negative(text: str) -> int:
    """An integer of 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; received {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer; received {text!r}")
    return value


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` with its :class:`UserError` turned into argparse's usage error."""
    def checked(text: str) -> Any:
        try:
            return parse(text)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return checked


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--key, --scale, --offset, --preprocess and --size: how files become model inputs."""
    group = parser.add_argument_group(
        "inputs", "every input (image or array) becomes x * SCALE + OFFSET, then --preprocess")
    group.add_argument("--key", help="array of a .npz file holding the inputs (default: 'x', "
                       "or its only array)")
    group.add_argument("--scale", type=_checked(parse_number), default=1.0,
                       help="multiply the inputs by this, e.g. 1/255 (default 1)")
    group.add_argument("--offset", type=_checked(lambda t: parse_number(t, "--offset")),
                       default=0.0, help="then add this, e.g. -1 with --scale 2/255 for a "
                       "[-1, 1] model (default 0)")
    group.add_argument("--preprocess", metavar="NAME",
                       help="then apply keras.applications preprocessing: "
                       f"{', '.join(PREPROCESS_MODES)}, or a keras.applications module name "
                       "such as vgg16, resnet50, mobilenet_v2 (expects 0-255 images)")
    group.add_argument("--size", type=_checked(parse_size), metavar="HxW",
                       help="resize images to HEIGHTxWIDTH, for models that take images of "
                       "any size (e.g. 224x224)")


def add_pattern_options(parser: argparse.ArgumentParser, required: bool, help_text: str) -> None:
    """--patterns and --allow-changed-weights."""
    parser.add_argument("--patterns", required=required, help=help_text)
    parser.add_argument("--allow-changed-weights", action="store_true",
                        help="use patterns fitted before the model's weights changed (layer "
                        "names and shapes must still match)")


def add_figure_options(parser: argparse.ArgumentParser, default_format: str) -> None:
    """--dpi and --format: how the figures are written."""
    group = parser.add_argument_group("figures")
    group.add_argument("--dpi", type=positive, default=DPI,
                       help=f"resolution of the figures in dots per inch (default {DPI})")
    group.add_argument("--format", choices=FORMATS, help="file format of the figures: "
                       f"{', '.join(FORMATS)} (pdf and svg stay sharp at any size; "
                       f"default {default_format})")


def figure_format(args: argparse.Namespace, out: str = "") -> str:
    """--format, else the figure suffix of ``out`` (``cat.svg``), else png."""
    suffix = out.rsplit(".", 1)[-1].lower() if "." in out else ""
    return args.format or (suffix if suffix in FORMATS else FORMATS[0])


def save_figure(fig: Any, stem: str, args: argparse.Namespace, out: str = "") -> str:
    """Writes ``fig`` to ``STEM.FORMAT`` at --dpi; returns the path."""
    path = f"{stem}.{figure_format(args, out)}"
    fig.savefig(path, dpi=args.dpi)
    return path


def input_options(args: argparse.Namespace) -> InputOptions:
    """The :class:`InputOptions` of parsed arguments (an unknown --preprocess fails here)."""
    return InputOptions(scale=args.scale, offset=args.offset, preprocess=args.preprocess,
                        size=args.size)
