"""``innv-pattern evaluate``: rho per layer and image degradation, written to a folder.

:func:`run_evaluate` takes the parsed arguments once TensorFlow has started
(:mod:`innv_pattern.cli` checks the paths first); the library's warnings (a
degradation curve that cannot move, rho above 1) reach the user through the
command's warning lines.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

from innv_pattern.cli_args import input_options, save_figure
from innv_pattern.cli_io import UserError, load_model, read_inputs
from innv_pattern.cli_patterns import check_input_scale, load_patterns
from innv_pattern.tables import markdown_table

__all__ = ["run_evaluate"]


def run_evaluate(args: argparse.Namespace) -> None:
    """Writes ``evaluation.json``, ``signal_quality.png`` and ``degradation.png`` (or
    ``--format``, at ``--dpi``) into ``args.out``."""
    model = load_model(args.model)
    patterns = load_patterns(args.patterns, model, args.allow_changed_weights)
    x = read_inputs(args.data, args.key, model.input_shape, input_options(args))[0]
    if len(x) < 4:
        raise UserError(f"'{args.data}' holds {len(x)} samples; evaluate needs at least 4 (half "
                        "to fit the read-out of rho, half to measure it).")
    check_input_scale(model, patterns, x)
    report = {"signal_quality": _evaluate_rho(model, patterns, x, args)}
    if x.ndim == 4:
        report["degradation"] = _evaluate_degradation(model, patterns, x[:args.samples], args)
    else:
        print("Image degradation skipped: it needs images (height, width, channels).")
    with open(os.path.join(args.out, "evaluation.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"Wrote evaluation.json and figures to '{args.out}'.")


def _evaluate_rho(model: Any, patterns: Any, x: np.ndarray,
                  args: argparse.Namespace) -> dict[str, Any]:
    """rho per layer: the read-out fitted on the first half of ``x``, measured on the second."""
    from innv_pattern.evaluate import plot_signal_quality, signal_quality

    from innv_pattern.evaluate.quality import BASELINES, ESTIMATORS
    from innv_pattern.patterns.estimators import ESTIMATORS as FITTED

    families = {e.family for e in FITTED.values() if patterns.has_type(e.name)}
    estimators = [e for e in ESTIMATORS if e in BASELINES or e in families]
    print(f"Signal-estimator quality rho per layer ({', '.join(estimators)}) on {len(x)} samples "
          "(use data the patterns were not fitted on)...")
    half = len(x) // 2
    rho = signal_quality(model, None, x[:half], x[half:], estimators=estimators,
                         patterns=patterns, layers=args.layers)
    layers = list(rho[estimators[0]])
    print(markdown_table(["estimator"] + layers,
                         [[e] + [float(rho[e][name]) for name in layers] for e in estimators]))
    if "linear" not in estimators:
        print("(Fit with --pattern-type linear+relu to compare the linear estimator S_a too.)")
    save_figure(plot_signal_quality(rho, title="Signal-estimator quality per layer"),
                os.path.join(args.out, "signal_quality"), args)
    return rho


def _evaluate_degradation(model: Any, patterns: Any, x: np.ndarray,
                          args: argparse.Namespace) -> dict[str, Any]:
    from innv_pattern.evaluate import (analyze_all, degradation_curves, plot_perturbation_curves,
                                       smoothgrad_noise)
    from innv_pattern.evaluate.perturbation import degrading_patch_size

    patch = args.patch_size or degrading_patch_size(min(x.shape[1:3]))
    print(f"Image degradation of {len(x)} inputs for {len(args.methods)} analyzers and a random "
          f"order, patches of {patch}x{patch} pixels...")
    analyses = analyze_all(model, x, args.methods, patterns=patterns, batch_size=None,
                           analyzer_kwargs=smoothgrad_noise(x), verbose=1)
    curves = degradation_curves(model, x, analyses, patch_size=patch)
    aopc = {label: curve["aopc"] for label, curve in curves.items()}
    print(markdown_table(["analyzer", "AOPC (higher: steeper decay)"],
                         [[k, v] for k, v in sorted(aopc.items(), key=lambda kv: -kv[1])]))
    save_figure(plot_perturbation_curves(curves, title="Image degradation"),
                os.path.join(args.out, "degradation"), args)
    return {"patch_size": curves["random"]["patch_size"], "aopc": aopc,
            "curves": {k: v["curve"].tolist() for k, v in curves.items()}}
