"""Which layers' patterns cost PatternAttribution its AOPC on a trained network? (issue 13)

``benchmarks/float64_check.py`` shows that the pattern methods' shortfall on the
residual nets is not rounding, and ``tests/test_pattern_semantics.py`` that the
library computes PatternAttribution as defined (numpy float64, end to end).
This script locates the shortfall.  For each trained network of
``benchmarks/trained_networks.py`` (same data, seeded training, cached weights)
it fits ``relu`` patterns once, then replaces the patterns of one *role* of
kernel layers by ones, so that those layers pass relevance with their weights,
as the gradient does (w * 1 = w), and measures the AOPC again (same protocol:
4x4 patches, 20 steps, the selected logit, 200 held-out images).  Roles, from
the canonical graph:

* ``output``: the last kernel layer (the logits), whose pattern is the linear one;
* ``merge``: the ``Add`` layers (fitted weights (1, 1) per channel);
* ``add-fed``: layers whose regime is the sign of an ``Add``'s output;
* ``ungated``: other layers no rectifier reads (separable convolutions'
  depthwise halves, layers read by a ``Concatenate``), linear patterns;
* ``gated``: layers whose own ReLU gates them;
* ``all but first``, ``all``.

It also reports, for the output layer, how much of its input's variance the
top eigenvector holds, and how well w * a (what PatternAttribution passes per
input) correlates with w * E[z | class k] (what the input contributes to logit
k on that class's images): a dominant common mode makes every logit's linear
pattern point along it.

    python benchmarks/pattern_layers.py                  # all eight nets (~15 min, 2 cores)
    python benchmarks/pattern_layers.py --nets residual plain

Writes ``benchmarks/results/pattern_layers.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trained_networks as tn  # noqa: E402

ROLES = ("output", "merge", "add-fed", "ungated", "gated", "all but first", "all")


def roles(model: Any) -> dict[str, list[str]]:
    """Pattern keys of the kernel layers, by role (see the module docstring)."""
    import keras

    from innv_pattern.canonize import KernelOp, canonize
    from innv_pattern.patterns.computer import regime_sources

    graph = canonize(model, merge_kernels=True)
    kernels = [op for op in graph.ops if isinstance(op, KernelOp)]
    sources = regime_sources(graph)
    merges = (keras.layers.Add, keras.layers.Subtract, keras.layers.Average)
    out: dict[str, list[str]] = {r: [] for r in ROLES}
    for i, op in enumerate(kernels):
        key = op.pattern_key
        if i == len(kernels) - 1:
            role = "output"
        elif isinstance(op.layer, merges):
            role = "merge"
        elif sources.get(op.name) is None:
            role = "ungated"
        elif sources[op.name] not in op.outputs:
            role = "add-fed"
        else:
            role = "gated"
        out[role].append(key)
        out["all"].append(key)
        if i > 0:
            out["all but first"].append(key)
    return {r: sorted(set(keys)) for r, keys in out.items()}


def with_ones(patterns: Any, keys: list[str]) -> Any:
    """The same patterns with those of ``keys`` replaced by ones (relu.positive only)."""
    from innv_pattern.patterns.io import Patterns

    by_type = {t: patterns.for_type(t) for t in patterns.types}
    by_type["relu.positive"] = {k: (np.ones_like(v) if k in keys else v)
                                for k, v in by_type["relu.positive"].items()}
    return Patterns(by_type, patterns.pattern_type, patterns.fingerprint, patterns.samples_seen)


def output_layer_spectrum(model: Any, x: np.ndarray, labels: np.ndarray) -> dict:
    """Top-eigenvalue share of the output layer's input covariance; corr(w*a, w*E[z|k])."""
    import keras

    last = model.layers[-1]
    z = np.asarray(keras.Model(model.input, last.input)(x), np.float64).reshape(len(x), -1)
    w = np.asarray(last.kernel, np.float64)
    cov = np.cov(z.T)
    eig = np.linalg.eigvalsh(cov)[::-1]
    corr_pattern, corr_weights = [], []
    for k in range(w.shape[1]):
        a = cov @ w[:, k] / (w[:, k] @ cov @ w[:, k])
        contribution = w[:, k] * z[labels == k].mean(0)
        corr_pattern.append(np.corrcoef(w[:, k] * a, contribution)[0, 1])
        corr_weights.append(np.corrcoef(w[:, k], contribution)[0, 1])
    return {"features": int(z.shape[1]), "top_eigenvalue_share": float(eig[0] / eig.sum()),
            "corr_w_a_with_contribution": float(np.mean(corr_pattern)),
            "corr_w_with_contribution": float(np.mean(corr_weights))}


def measure(name: str, args: argparse.Namespace) -> dict:
    import keras

    keras.utils.set_random_seed(args.seed)
    data = tn.digits32(args.seed)
    model = tn.load_trained(name, args.seed, tn.EPOCHS[name])
    x_fit, x_eval = data["x_train"][:args.fit], data["x_test"][:args.eval]
    start = time.perf_counter()
    patterns, info = tn.fit_patterns(model, ["relu"], x_fit)
    if isinstance(patterns, BaseException):
        return {"error": info.get("error")}
    by_role = roles(model)
    scores: dict[str, Any] = {"random": "random"}
    for role in ("none",) + ROLES:
        keys = by_role.get(role, [])
        if role != "none" and not keys:
            continue
        run = tn.run_analyzer(model, "pattern.attribution", {"pattern_type": "relu"},
                              with_ones(patterns, keys), x_eval)
        if "analysis" in run:
            scores[f"PA, ones at {role}"] = run["analysis"].sum(-1)
    lrp = tn.run_analyzer(model, "lrp.epsilon", {}, None, x_eval)
    scores["LRP-epsilon"] = lrp["analysis"].sum(-1)
    aopc = {k: v["aopc"] for k, v in tn.degradation(model, scores, x_eval).items()}
    out = {"roles": {r: len(k) for r, k in by_role.items()}, "aopc": aopc,
           "output_layer": output_layer_spectrum(model, x_fit, data["y_train"][:args.fit]),
           "seconds": round(time.perf_counter() - start, 1)}
    tn.log(f"{name}: done in {out['seconds']} s")
    return out


def table(results: dict) -> str:
    nets = [n for n in results if "aopc" in results[n]]
    lines = ["| AOPC | " + " | ".join(nets) + " |", "|---" * (len(nets) + 1) + "|"]
    labels = ["PA, ones at none"] + [f"PA, ones at {r}" for r in ROLES] + ["LRP-epsilon", "random"]
    for label in labels:
        cells = []
        for n in nets:
            value = results[n]["aopc"].get(label)
            count = results[n]["roles"].get(label.replace("PA, ones at ", ""), None)
            cells.append("-" if value is None else f"{value:.3f}" + ("" if count is None
                                                                    else f" ({count})"))
        shown = "PA as fitted" if label == "PA, ones at none" else label
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    for key, label in (("top_eigenvalue_share", "output input: top eigenvalue share"),
                       ("corr_w_a_with_contribution", "output: corr(w*a, w*E[z|k])"),
                       ("corr_w_with_contribution", "output: corr(w, w*E[z|k])")):
        lines.append(f"| {label} | " + " | ".join(
            f"{results[n]['output_layer'][key]:.2f}" for n in nets) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", choices=tn.NETS, default=list(tn.NETS))
    p.add_argument("--fit", type=int, default=3000)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.perf_counter()
    results = {}
    for name in args.nets:
        results[name] = measure(name, args)
    text = table(results)
    print(text)
    stem = "pattern_layers" if args.nets == list(tn.NETS) else "pattern_layers_subset"
    (tn.RESULTS / f"{stem}.json").write_text(json.dumps(
        {"config": vars(args), "library": tn.library_state(),
         "seconds": round(time.perf_counter() - start, 1), "nets": results}, indent=1))
    (tn.RESULTS / f"{stem}.md").write_text(text + "\n")
    print(f"wrote {tn.RESULTS / stem}.json, .md")


if __name__ == "__main__":
    main()
