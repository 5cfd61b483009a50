"""Is a pattern-method shortfall on a trained network numerical, or the method's? (issue 13)

For each trained network of ``benchmarks/trained_networks.py`` (same data, same
seeded training, same cached weights), this script builds an exact float64 copy
of the network, fits ``relu`` patterns in float64 on the same images, and runs
PatternAttribution and PatternNet in float64.  It then reports, next to the
float32 run:

* the relative difference of patterns and analyses, float32 against float64;
* the AOPC of both (degradation on the float32 network; same protocol as
  ``trained_networks.py``: 4x4 patches, 20 steps, the selected logit), with the
  random order and LRP-epsilon beside them;
* the input-invariance error (a twin network computes ``twin(x + m) == model(x)``;
  its patterns are fitted on ``x + m``) in float32 and in float64.

If the float64 AOPC equals the float32 one, the shortfall is not a rounding
effect: the fitted method gives it.  If the float64 invariance error is orders
of magnitude below the float32 one, the float32 error is rounding (the
statistics of ``x + m`` carry the shift in every sum).

    python benchmarks/float64_check.py                       # the nets that miss a target
    python benchmarks/float64_check.py --nets residual --fit 1000

Writes ``benchmarks/results/float64_check.json``.
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

DEFAULT_NETS = ("plain_bn", "residual", "residual_bn", "xception")
METHODS = (("pattern.attribution", "PA"), ("pattern.net", "PN (abs)"))


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the whole array, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def analyses(model: Any, patterns: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name, label in METHODS:
        run = tn.run_analyzer(model, name, {"pattern_type": "relu"}, patterns, x)
        if "analysis" not in run:
            raise RuntimeError(f"{name} failed: {run['error']}")
        out[label] = np.asarray(run["analysis"], np.float64)
    return out


def pattern_difference(p32: Any, p64: Any) -> dict[str, float]:
    """Relative difference of each layer's relu.positive pattern: median and largest layer."""
    diffs = {name: relative(p32[name], p64[name]) for name in p64}
    worst = max(diffs, key=diffs.get)
    return {"median": float(np.median(list(diffs.values()))), "max": diffs[worst],
            "max_layer": worst}


def fit(model: Any, x: np.ndarray) -> tuple[Any, float]:
    patterns, info = tn.fit_patterns(model, ["relu"], x)
    if isinstance(patterns, BaseException):
        raise RuntimeError(info.get("error", "pattern fit failed"))
    return patterns, info["seconds"]


def check(name: str, args: argparse.Namespace) -> dict:
    data = tn.digits32(args.seed)
    model32 = tn.load_trained(name, args.seed, tn.EPOCHS[name])
    model64, _ = tn.make_twin(model32, None, "float64")
    x_fit = data["x_train"][:args.fit]
    x_eval = data["x_test"][:args.eval]
    x_inv = x_eval[:args.inv]
    out: dict[str, Any] = {"net": name, "seconds": {}}
    runs: dict[str, dict] = {}
    for dtype, model in (("float32", model32), ("float64", model64)):
        start = time.perf_counter()
        patterns, out["seconds"][f"fit {dtype}"] = fit(model, x_fit.astype(dtype))
        a = analyses(model, patterns, x_eval.astype(dtype))
        twin, _ = tn.make_twin(model32, tn.SHIFT, dtype)
        shifted = x_fit.astype(np.float64) + tn.SHIFT.astype(np.float64)
        twin_patterns, _ = fit(twin, shifted.astype(dtype))
        b = analyses(twin, twin_patterns, (x_inv.astype(np.float64) + tn.SHIFT).astype(dtype))
        runs[dtype] = {"patterns": patterns, "analyses": a}
        out[dtype] = {"invariance": {k: relative(b[k], a[k][:len(x_inv)]) for k in b}}
        out["seconds"][dtype] = round(time.perf_counter() - start, 1)
        tn.log(f"{name}: {dtype} done in {out['seconds'][dtype]} s")
    out["pattern_difference"] = pattern_difference(runs["float32"]["patterns"],
                                                   runs["float64"]["patterns"])
    out["analysis_difference"] = {k: relative(runs["float32"]["analyses"][k],
                                              runs["float64"]["analyses"][k])
                                  for k in runs["float64"]["analyses"]}
    lrp = tn.run_analyzer(model32, "lrp.epsilon", {}, None, x_eval)
    scores: dict[str, Any] = {"random": "random", "LRP-epsilon": lrp["analysis"].sum(-1)}
    for dtype in ("float32", "float64"):
        for k, a in runs[dtype]["analyses"].items():
            scores[f"{k} {dtype}"] = tn.ranking(k, a).astype(np.float32)
    out["aopc"] = {k: v["aopc"] for k, v in tn.degradation(model32, scores, x_eval).items()}
    return out


def table(results: dict) -> str:
    nets = list(results)
    rows = [("PA AOPC float32", lambda r: r["aopc"]["PA float32"]),
            ("PA AOPC float64", lambda r: r["aopc"]["PA float64"]),
            ("PN (abs) AOPC float32", lambda r: r["aopc"]["PN (abs) float32"]),
            ("PN (abs) AOPC float64", lambda r: r["aopc"]["PN (abs) float64"]),
            ("LRP-epsilon AOPC", lambda r: r["aopc"]["LRP-epsilon"]),
            ("random AOPC", lambda r: r["aopc"]["random"]),
            ("pattern diff 32/64 (median layer)", lambda r: r["pattern_difference"]["median"]),
            ("pattern diff 32/64 (max layer)", lambda r: r["pattern_difference"]["max"]),
            ("PA diff 32/64", lambda r: r["analysis_difference"]["PA"]),
            ("PN diff 32/64", lambda r: r["analysis_difference"]["PN (abs)"]),
            ("PA invariance err float32", lambda r: r["float32"]["invariance"]["PA"]),
            ("PA invariance err float64", lambda r: r["float64"]["invariance"]["PA"]),
            ("PN invariance err float32", lambda r: r["float32"]["invariance"]["PN (abs)"]),
            ("PN invariance err float64", lambda r: r["float64"]["invariance"]["PN (abs)"])]
    lines = ["| | " + " | ".join(nets) + " |", "|---" * (len(nets) + 1) + "|"]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(f"{get(results[n]):.3g}" for n in nets) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", choices=tn.NETS, default=list(DEFAULT_NETS))
    p.add_argument("--fit", type=int, default=3000, help="fitting images (as trained_networks)")
    p.add_argument("--eval", type=int, default=200, help="degradation images")
    p.add_argument("--inv", type=int, default=50, help="invariance images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import keras

    start = time.perf_counter()
    results = {}
    for name in args.nets:
        keras.utils.set_random_seed(args.seed)
        results[name] = check(name, args)
    text = table(results)
    print(text)
    path = tn.RESULTS / ("float64_check.json" if args.nets == list(DEFAULT_NETS)
                         else "float64_check_subset.json")
    path.write_text(json.dumps({"config": vars(args), "library": tn.library_state(),
                                "seconds": round(time.perf_counter() - start, 1),
                                "table": text, "nets": results}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
