"""Factor study of PatternNet and PatternAttribution on trained networks (issue 13, build 1).

On the trained ``digits32`` networks of ``benchmarks/trained_networks.py`` (the
same builders, seed, epochs and weight cache, so the networks are the ones that
benchmark measures), toggles one factor at a time against the library's
current default and measures, on 200 held-out images, PatternAttribution's and
PatternNet's (|signal| summed over channels) AOPC with the colleague's
``degradation`` (4x4 patches replaced by their mean, 20 steps, the selected
logit), next to the random order and LRP-epsilon:

1. estimator: ``relu`` (within-regime cov+(x, y) / var+(y), the default) vs
   ``relu_eq7`` (the paper's Eq. 7 with the global E[y]; what the library
   computed before) vs ``linear``; with the input-invariance error;
2. ``Add`` layers: fitted patterns (the default) vs the old gradient, which
   copies the relevance to both branches (``innv_pattern.canonize._MERGE_WEIGHTS``
   emptied while the computer and analyzers are built); PatternAttribution's
   sum(attribution) / logit and the relevance an ``Add`` passes on;
3. regime of a kernel layer that no rectifier reads directly (the logits; on
   residual nets the convolutions feeding an Add): every sample (the library
   at 0fe53f6) vs the sign of its own output (before) vs the sign of the Add's
   output (the input of the ReLU after it; the library's default from
   58382c8).  The name ``PatternComputer.__init__`` calls is patched:
   ``gated_ops`` (0fe53f6) or ``regime_sources`` (58382c8 on); the variant
   equal to the running library's default is marked;
4. PatternNet's rescaling at cut tensors: ``normalize=True`` vs ``False``;
5. shrinkage 0 vs 10 pseudo-samples per regime, with the few-sample neurons;
6. the old library as a whole: ``relu_eq7`` + no Add patterns + own-sign
   regimes (+ PatternNet without rescaling);
7. a diagnostic: the share of |PA| and |LRP-epsilon| on pixels where the input
   is exactly 0 (background) and the AOPC of PA masked to the foreground.

Patterns are fitted once per configuration on 3,000 training images (several
pattern types in one fit; shrinkage re-finishes the default fit's statistics).
Every monkeypatch is checked to have changed something and is restored.
The JSON records where ``innv_pattern`` was imported from and which commit's
sources it equals: to measure a commit while the working tree changes, import
a snapshot of it (``git archive <commit> innv_pattern | tar -x -C DIR`` and
``PYTHONPATH=DIR``).

    python benchmarks/pattern_factors.py                   # plain, plain_bn, residual, residual_bn
    python benchmarks/pattern_factors.py --nets plain residual_bn --quick   # 2-epoch nets
    python benchmarks/pattern_factors.py --md-only         # tables and markdown from the JSON

Writes ``benchmarks/results/pattern_factors.json`` and ``pattern_factors.md``
(``pattern_factors_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trained_networks as tn  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL)

import numpy as np  # noqa: E402

NETS = ("plain", "plain_bn", "residual", "residual_bn")
ESTIMATORS = ("relu", "relu_eq7", "linear")
SHRINKAGE = 10.0
#: AOPC on the issue's first run (before any change), for the old-library factor.
ISSUE_BEFORE = {"plain": {"PA": 0.504, "PN": 0.763, "LRP": 0.450, "random": 0.225},
                "plain_bn": {"PA": 0.222, "PN": 0.289, "LRP": 0.552, "random": 0.271},
                "residual": {"PA": 0.306, "PN": 0.361, "LRP": 0.413, "random": 0.230},
                "residual_bn": {"PA": 0.202, "PN": 0.106, "LRP": 0.625, "random": 0.294}}
log = tn.log


# ---------------------------------------------------------------------------
# The old behaviours, as temporary monkeypatches.
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def no_add_patterns() -> Iterator[None]:
    """Add/Subtract/Average stay plain layers (the gradient copies relevance to each input)."""
    import innv_pattern.canonize as cz

    saved = cz._MERGE_WEIGHTS
    cz._MERGE_WEIGHTS = {}
    try:
        yield
    finally:
        cz._MERGE_WEIGHTS = saved


def add_sources(graph: Any) -> dict[str, Any]:
    """``{kernel op name: the Add kernel op it feeds}`` for ops whose only reader is an Add."""
    import keras

    from innv_pattern.canonize import KernelOp

    readers: dict[int, list] = {}
    for op in graph.ops:
        for key in op.inputs:
            readers.setdefault(key, []).append(op)
    found = {}
    for op in graph.kernel_ops:
        first = readers.get(op.outputs[0], [])
        if len(first) != 1 or not isinstance(first[0].layer, keras.layers.Add):
            continue
        second = readers.get(first[0].outputs[0], [])
        if len(second) == 1 and isinstance(second[0], KernelOp):
            found[op.name] = second[0]
    return found


REGIMES = ("every_sample", "own_sign", "add_output")


@contextlib.contextmanager
def regimes(kind: str, calls: list) -> Iterator[None]:
    """The regime of every kernel op that no rectifier reads directly, as ``kind``:

    * ``"every_sample"``: one regime (the library at 0fe53f6);
    * ``"own_sign"``: the sign of the op's own output (the library before);
    * ``"add_output"``: for an op that feeds an Add, the sign of the Add's output
      (the input of the ReLU after it); every sample for the others.

    Ops a rectifier reads keep their own sign.  Patches the name
    ``PatternComputer.__init__`` calls: ``regime_sources`` (per op, the tensor
    whose sign is its regime) where the library has it, else ``gated_ops`` (per
    op, own sign or every sample; ``"add_output"`` then also wraps the fitter's
    private ``_forward`` / ``_batch_sums``, whose ``out`` is the regime).  Each
    call appends to ``calls`` the ops whose unpatched regime is not their own sign.
    """
    import innv_pattern.patterns.computer as pc

    if hasattr(pc, "regime_sources"):
        name, saved = "regime_sources", pc.regime_sources

        def patched(graph: Any) -> dict[str, Any]:
            original = saved(graph)
            own = {op.name: op.outputs[0] for op in graph.kernel_ops}
            calls.append([n for n in own if original[n] != own[n]])
            adds = add_sources(graph) if kind == "add_output" else {}
            return {n: own[n] if kind == "own_sign" or original[n] == own[n]
                    else adds[n].outputs[0] if n in adds else None for n in own}
    else:
        name, saved = "gated_ops", pc.gated_ops

        def patched(graph: Any) -> dict[str, bool]:
            original = saved(graph)
            calls.append([n for n, g in original.items() if not g])
            adds = add_sources(graph) if kind == "add_output" else {}
            return {n: g or kind == "own_sign" or n in adds for n, g in original.items()}

    setattr(pc, name, patched)
    try:
        with (_fitter_add_output() if kind == "add_output" and name == "gated_ops"
              else contextlib.nullcontext()):
            yield
    finally:
        setattr(pc, name, saved)


@contextlib.contextmanager
def _fitter_add_output() -> Iterator[None]:
    """``gated_ops`` libraries: an op feeding an Add gets the Add's output as its ``out``."""
    from innv_pattern.patterns import fitter as fitter_module

    cls = fitter_module.Fitter
    saved = cls._forward, cls._batch_sums

    def forward(self: Any, xs: Any) -> Any:
        found = saved[0](self, xs)
        self._factor_outs = {op.name: out for op, _, _, out, _ in found}
        self._factor_adds = add_sources(self.c._graph)
        return found

    def batch_sums(self: Any, op: Any, x: Any, y: Any, out: Any, kernel: Any) -> Any:
        if op.name in self._factor_adds:
            out = self._factor_outs[self._factor_adds[op.name].name]
        return saved[1](self, op, x, y, out, kernel)

    cls._forward, cls._batch_sums = forward, batch_sums
    try:
        yield
    finally:
        cls._forward, cls._batch_sums = saved


# ---------------------------------------------------------------------------
# Fitting and measuring.
# ---------------------------------------------------------------------------
def add_ops(graph: Any) -> list[str]:
    import keras

    return [op.name for op in graph.kernel_ops if isinstance(op.layer, keras.layers.Add)]


def fit(model: Any, types: tuple[str, ...], x: np.ndarray) -> tuple[Any, Any, dict]:
    """``(patterns, computer, info)`` of one fit of ``types`` on ``x``."""
    from innv_pattern.patterns import PatternComputer

    start = time.perf_counter()
    computer = PatternComputer(model, types)
    patterns = computer.compute(x, batch_size=100, verbose=0)
    degenerate: dict[str, int] = {}
    for per_type in patterns.degenerate.values():
        for t, n in per_type.items():
            degenerate[t] = degenerate.get(t, 0) + int(np.sum(n))
    info = {"types": list(types), "samples": len(x),
            "seconds": round(time.perf_counter() - start, 1),
            "layers": len(patterns), "add_patterns": add_ops(
                computer.plan.graph if hasattr(computer, "plan") else computer._graph),
            "degenerate_neurons": degenerate,
            "few_sample_neurons": int(sum(computer.few_sample_neurons().values()))}
    return patterns, computer, info


class Bench:
    """One network: the data, the analyses, their metrics."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        import keras

        keras.utils.set_random_seed(args.seed)
        self.name, self.args = name, args
        data = tn.digits32(args.seed)
        self.epochs = tn.QUICK_EPOCHS if args.quick else tn.EPOCHS[name]
        self.model = tn.load_trained(name, args.seed, self.epochs)
        self.train = json.loads(tn.cache_path(name, args.seed, self.epochs)
                                .with_suffix(".json").read_text())
        self.x_fit = data["x_train"][:args.fit_images]
        self.x = data["x_test"][:args.eval_images]
        self.max_x = float(np.abs(self.x).max())
        self.logit = tn.logits_of(self.model, self.x).max(axis=1).astype(np.float64)
        self.analyses: dict[str, np.ndarray] = {}

    def analyze(self, label: str, name: str, patterns: Any = None, model: Any = None,
                x: np.ndarray | None = None, **kwargs: Any) -> dict:
        """Runs an analyzer; the analysis is kept under ``label`` (for the original model)."""
        run = tn.run_analyzer(self.model if model is None else model, name, kwargs, patterns,
                              self.x if x is None else x)
        if "error" in run:
            raise RuntimeError(f"{self.name} {label}: {run['error']}")
        if model is None:
            self.analyses[label] = run["analysis"]
        run.pop("analyzer", None)
        return run

    def metrics(self, label: str, signal: bool = False) -> dict:
        """AOPC (where finite), max|a|/max|x| of the kept analysis ``label``."""
        a = self.analyses[label]
        finite = np.isfinite(a).reshape(len(a), -1).all(1)
        out = {"max_ratio": float(np.abs(a[finite]).max() / self.max_x) if finite.any() else None,
               "finite_images": int(finite.sum())}
        rank = np.abs(a).sum(-1) if signal else a.sum(-1)
        if finite.all():
            out["aopc"] = tn.degradation(self.model, rank, self.x)["aopc"]
        elif finite.any():
            out["aopc_finite_images"] = tn.degradation(self.model, rank[finite],
                                                       self.x[finite])["aopc"]
        return out

    def total_over_logit(self, label: str) -> dict:
        a = self.analyses[label].astype(np.float64).reshape(len(self.x), -1).sum(1)
        return {"total": float(a.sum() / self.logit.sum()),
                "median_per_image": float(np.median(a / self.logit))}

    def pattern_pair(self, tag: str, patterns: Any, est: str = "relu", **pn: Any) -> dict:
        """PA and PN(abs) of ``patterns``: their metrics, kept as ``PA[tag]``, ``PN[tag]``."""
        self.analyze(f"PA[{tag}]", "pattern.attribution", patterns, pattern_type=est)
        self.analyze(f"PN[{tag}]", "pattern.net", patterns, pattern_type=est, **pn)
        return {"PA": self.metrics(f"PA[{tag}]"), "PN": self.metrics(f"PN[{tag}]", signal=True),
                "PA_total_over_logit": self.total_over_logit(f"PA[{tag}]")}


def flow(b: Bench, patterns: Any, est: str) -> dict:
    """Where PatternAttribution's relevance goes (relevance_flow on ``--flow-images`` images).

    Totals over the images, divided by the total explained logit: what reaches
    the input, what closed ReLU gates drop, what kernel ops keep (degenerate
    neurons, padding), what other ops keep; each Add's pass-on share
    (passed / received, median over Adds and images).  Builds the analyzer under
    whatever monkeypatch is active.
    """
    import keras

    from innv_pattern.evaluate import relevance_flow

    x = b.x[:min(b.args.flow_images, len(b.x))]
    analyzer = tn.run_analyzer(b.model, "pattern.attribution", {"pattern_type": est},
                               patterns, x[:1])["analyzer"]
    graph_adds = add_ops(analyzer._graph)
    found = relevance_flow(analyzer, x)
    total = float(found["output"].sum())
    lost = {"closed_gates": 0.0, "kernel_ops": 0.0, "other_ops": 0.0}
    per_add: dict[str, np.ndarray] = {}
    for r in found["ops"]:
        if r["closed_gates"] is not None:
            lost["closed_gates"] += float(r["closed_gates"].sum())
        elif r["type"] == "kernel":
            lost["kernel_ops"] += float((r["received"] - r["passed"]).sum())
        else:
            lost["other_ops"] += float((r["received"] - r["passed"]).sum())
        if r["layer"] == keras.layers.Add.__name__:
            base = r["name"].split("/")[0]
            per_add[base] = per_add.get(base, 1.0) * r["share"]
    shares = np.concatenate(list(per_add.values())) if per_add else np.array([np.nan])
    out = {"images": len(x), "add_kernel_ops": len(graph_adds),
           "input_over_logit": float(found["input"].sum()) / total,
           **{f"lost_{k}_over_logit": v / total for k, v in lost.items()}}
    if per_add:
        out.update(adds=len(per_add), add_share_median=float(np.nanmedian(shares)),
                   add_share_min=float(np.nanmin(shares)), add_share_max=float(np.nanmax(shares)))
    return out


def pattern_change(a: Any, b: Any, names: list[str]) -> float:
    """max over ``names`` of max|a - b| / max|a| (relu.positive patterns)."""
    pa, pb = a.for_type("relu"), b.for_type("relu")
    return float(max((np.abs(pa[n] - pb[n]).max() / max(np.abs(pa[n]).max(), 1e-30)
                      for n in names), default=0.0))


def measure(name: str, args: argparse.Namespace) -> dict:
    """Every factor on one network."""
    t_start = time.perf_counter()
    b = Bench(name, args)
    res: dict[str, Any] = {"net": name, "train": b.train, "fits": {}, "seconds": {}}
    has_add = bool(add_ops(_graph(b.model)))
    res["has_add"] = has_add

    ref = {"random": tn.degradation(b.model, "random", b.x)["aopc"]}
    b.analyze("LRP", "lrp.epsilon")
    ref["LRP"] = b.metrics("LRP")
    ref["LRP_total_over_logit"] = b.total_over_logit("LRP")
    res["reference"] = ref

    log(f"{name}: default fit {ESTIMATORS}")
    p0, c0, res["fits"]["default"] = fit(b.model, ESTIMATORS, b.x_fit)
    assert bool(res["fits"]["default"]["add_patterns"]) == has_add
    default = {est: b.pattern_pair(est, p0, est) for est in ESTIMATORS}
    res["factor1_estimator"] = default
    res["flow"] = {"default": flow(b, p0, "relu")}

    # 4. PatternNet at the paper's scale.
    b.analyze("PN[raw]", "pattern.net", p0, pattern_type="relu", normalize=False)
    res["factor4_normalize"] = normalize_factor(b)

    # 5. Shrinkage: the default fit's statistics finished with 10 pseudo-samples.
    from innv_pattern.patterns import PatternComputer

    c10 = PatternComputer(b.model, "relu", shrinkage=SHRINKAGE)
    c10.load_state(p0)
    p10 = c10.patterns()
    few = c0.few_sample_neurons()
    res["factor5_shrinkage"] = {
        "few_sample_neurons": int(sum(few.values())),
        "few_sample_layers": {k: v for k, v in few.items() if v},
        "few_sample_neurons_below_10": int(sum(c0.few_sample_neurons(10).values())),
        "pattern_change_max": pattern_change(p0, p10, list(p0)),
        "shrink": b.pattern_pair("shrink10", p10)}
    assert res["factor5_shrinkage"]["pattern_change_max"] > 0, "shrinkage changed no pattern"
    del c10, p10

    log(f"{name}: own-sign regimes fit")
    res["factor3_regime"], p_own = regime_factor(b, p0, has_add, res)
    if has_add:
        log(f"{name}: no-Add fit")
        res["factor2_add"] = add_factor(b, p0, res)
    else:
        res["factor2_add"] = {"not_applicable": "no Add layer"}
    res["factor6_old_library"] = old_factor(b, p_own, res)
    del p_own

    res["factor7_background"] = background_factor(b)
    log(f"{name}: invariance")
    res["invariance"] = invariance(b, res)
    res["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    log(f"{name}: done in {res['seconds']['total']} s")
    return res


def old_factor(b: Bench, p_own: Any, res: dict) -> dict:
    """relu_eq7 + no Add patterns + own-sign regimes (+ PatternNet unscaled).

    On a net without Add layers the own-sign fit (``p_own``, with ``relu_eq7``)
    is already the old library's; otherwise fit under both patches.
    """
    def analyses(patterns: Any) -> dict:
        out = b.pattern_pair("old", patterns, "relu_eq7", normalize=False)
        b.analyze("PN[old,normalized]", "pattern.net", patterns, pattern_type="relu_eq7")
        out["PN_normalized"] = b.metrics("PN[old,normalized]", signal=True)
        res["flow"]["old"] = flow(b, patterns, "relu_eq7")
        return out

    if p_own is not None:
        old = analyses(p_own)
    else:
        log(f"{b.name}: old-library fit")
        calls: list = []
        with no_add_patterns(), regimes("own_sign", calls):
            p_old, _, res["fits"]["old"] = fit(b.model, ("relu_eq7",), b.x_fit)
            assert calls and not res["fits"]["old"]["add_patterns"]
            old = analyses(p_old)
            assert res["flow"]["old"]["add_kernel_ops"] == 0
    return {"old": old, "new": res["factor1_estimator"]["relu"],
            "issue_before": ISSUE_BEFORE.get(b.name)}


def _graph(model: Any) -> Any:
    from innv_pattern.canonize import canonize

    return canonize(model, merge_kernels=True)


def normalize_factor(b: Bench) -> dict:
    norm = b.analyses["PN[relu]"].astype(np.float64)
    raw = b.analyses["PN[raw]"].astype(np.float64)
    finite = np.isfinite(raw).reshape(len(raw), -1).all(1)
    out = {"normalized": b.metrics("PN[relu]", signal=True),
           "raw": b.metrics("PN[raw]", signal=True),
           "raw_finite_images": int(finite.sum()), "images": len(raw)}
    if finite.any():
        n, r = norm[finite], raw[finite]
        def scale(v: np.ndarray) -> np.ndarray:
            return v / np.abs(v).reshape(len(v), -1).max(1).reshape(-1, 1, 1, 1)

        out["direction_max_deviation"] = float(np.abs(scale(n) - scale(r)).max())
        aopc_n = tn.degradation(b.model, np.abs(n).sum(-1), b.x[finite])["aopc"]
        aopc_r = tn.degradation(b.model, np.abs(r).sum(-1), b.x[finite])["aopc"]
        out["aopc_finite_normalized"], out["aopc_finite_raw"] = aopc_n, aopc_r
        out["aopc_difference"] = aopc_n - aopc_r
    return out


def regime_factor(b: Bench, p0: Any, has_add: bool, res: dict) -> tuple[dict, Any]:
    """Each regime variant for the ops no rectifier reads; the one equal to the default is marked.

    Nets without Add: only ``own_sign`` differs from the default (the logits'
    regime), and that fit (with ``relu_eq7``) is the old library's, returned.
    """
    out: dict[str, Any] = {"variants": {}}
    own_fit = None
    for kind in REGIMES if has_add else ("own_sign",):
        calls: list = []
        types = ("relu",) if has_add or kind != "own_sign" else ("relu", "relu_eq7")
        with regimes(kind, calls):
            patterns, _, res["fits"][f"regime_{kind}"] = fit(b.model, types, b.x_fit)
        assert calls, f"the regime patch '{kind}' was not called"
        out["ungated_ops"] = calls[0]
        if kind == "own_sign":
            own_fit = patterns
        change = pattern_change(p0, patterns, calls[0])
        same = change < 1e-6        # the default's own configuration, refitted
        entry = {"pattern_change_vs_default": change, "is_default": same}
        entry.update(res["factor1_estimator"]["relu"] if same
                     else b.pattern_pair(f"regime_{kind}", patterns))
        out["variants"][kind] = entry
    if not has_add:  # the logits are the only op concerned: every sample is the default
        out["variants"]["every_sample"] = {"pattern_change_vs_default": 0.0, "is_default": True,
                                           **res["factor1_estimator"]["relu"]}
    assert not out["variants"]["own_sign"]["is_default"], "the own-sign patch changed no pattern"
    out["default"] = " / ".join(k for k in REGIMES if out["variants"].get(k, {}).get("is_default"))
    out["n_ungated"] = len(out["ungated_ops"])
    return out, (None if has_add else own_fit)


def add_factor(b: Bench, p0: Any, res: dict) -> dict:
    """Fitted Add patterns vs none (the gradient through the Add).

    Without Add kernel ops a library whose default regime for a layer feeding an
    Add is the Add's output (58382c8 on) falls back to every sample for it: there
    the comparison changes that regime too.
    """
    names = res["fits"]["default"]["add_patterns"]
    assert names and all(n in p0 for n in names), "Add patterns missing in the default fit"
    fitted = {**res["factor1_estimator"]["relu"], "flow": res["flow"]["default"]}
    assert fitted["flow"]["add_kernel_ops"] == len(names), "default analyzer lacks Add kernel ops"
    with no_add_patterns():
        p2, _, res["fits"]["no_add"] = fit(b.model, ("relu",), b.x_fit)
        assert not res["fits"]["no_add"]["add_patterns"] and not any(n in p2 for n in names)
        gradient = b.pattern_pair("no_add", p2)
        gradient["flow"] = flow(b, p2, "relu")
        assert gradient["flow"]["add_kernel_ops"] == 0, "the no-Add patch left an Add kernel op"
    return {"add_layers": names, "fitted": fitted, "gradient": gradient}


def background_factor(b: Bench) -> dict:
    """|analysis| share on zero-input pixels and all-zero patches; PA masked to the foreground."""
    from innv_pattern.evaluate.perturbation import patch_grid

    fg = b.x.sum(-1) != 0
    grid = patch_grid(b.x.shape[1], b.x.shape[2], tn.PATCH)
    patch_fg = np.zeros((len(b.x), grid.max() + 1), bool)
    for k in range(grid.max() + 1):
        patch_fg[:, k] = fg[:, grid == k].any(1)
    zero_patch = ~patch_fg[:, grid]                         # pixels of an all-zero patch

    def shares(label: str) -> dict:
        heat = np.abs(b.analyses[label].astype(np.float64)).sum(-1)
        total = heat.sum()
        return {"background_pixels": float(heat[~fg].sum() / total),
                "zero_patches": float(heat[zero_patch].sum() / total)}

    masked = b.analyses["PA[relu]"] * fg[..., None]
    return {"background_pixel_fraction": float(1 - fg.mean()),
            "zero_patch_fraction": float(1 - patch_fg.mean()),
            "PA": shares("PA[relu]"), "LRP": shares("LRP"), "PN": shares("PN[relu]"),
            "PA_old": shares("PA[old]"),
            "PA_masked_aopc": tn.degradation(b.model, masked.sum(-1), b.x)["aopc"],
            "input_ranking_aopc": tn.degradation(b.model, b.x.sum(-1), b.x)["aopc"]}


def invariance(b: Bench, res: dict) -> dict:
    """Relative change of each analysis when the shifted twin explains ``x + m``."""
    twin, desc = tn.make_twin(b.model, tn.SHIFT)
    err = float(np.abs(tn.logits_of(twin, b.x + tn.SHIFT) - tn.logits_of(b.model, b.x)).max())
    out: dict[str, Any] = {"twin": desc, "twin_max_logit_error": err}
    pt, _, res["fits"]["twin"] = fit(twin, ESTIMATORS, b.x_fit + tn.SHIFT)
    runs = [(f"PA[{e}]", "pattern.attribution", {"pattern_type": e}) for e in ESTIMATORS]
    runs += [(f"PN[{e}]", "pattern.net", {"pattern_type": e}) for e in ESTIMATORS]
    runs += [("PN[raw]", "pattern.net", {"pattern_type": "relu", "normalize": False}),
             ("LRP", "lrp.epsilon", {})]
    for label, name, kw in runs:
        a = b.analyses[label].astype(np.float64)
        t = b.analyze(label, name, pt, model=twin, x=b.x + tn.SHIFT, **kw)["analysis"]
        with np.errstate(all="ignore"):
            out[label] = float(np.linalg.norm(t.astype(np.float64) - a)
                               / max(np.linalg.norm(a), 1e-300))
    return out


# ---------------------------------------------------------------------------
# Tables and markdown.
# ---------------------------------------------------------------------------
def _get(r: dict, path: str) -> Any:
    for part in path.split("/"):
        if not isinstance(r, dict) or part not in r:
            return None
        r = r[part]
    return r


def _f(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, str)):
        return str(v)
    if isinstance(v, (int, np.integer)) and spec == ".3f":
        return str(v)
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return format(v, spec)


E = ".2e"
REF_ROWS = [("random", "reference/random", ".3f"), ("LRP-epsilon", "reference/LRP/aopc", ".3f")]
F1 = "factor1_estimator"
V3 = "factor3_regime/variants"
TABLES: dict[str, tuple[str, list]] = {
    "1": ("Estimator (AOPC; max|PN|/max|x| with rescaling; invariance error)", [
        *[(f"PA {e}", f"{F1}/{e}/PA/aopc", ".3f") for e in ESTIMATORS],
        *[(f"PN(abs) {e}", f"{F1}/{e}/PN/aopc", ".3f") for e in ESTIMATORS],
        *REF_ROWS,
        *[(f"max|PN|/max|x| {e}", f"{F1}/{e}/PN/max_ratio", E) for e in ESTIMATORS],
        *[(f"PA sum/logit {e}", f"{F1}/{e}/PA_total_over_logit/total", ".3g") for e in ESTIMATORS],
        *[(f"inv. err PA {e}", f"invariance/PA[{e}]", E) for e in ESTIMATORS],
        *[(f"inv. err PN {e}", f"invariance/PN[{e}]", E) for e in ESTIMATORS],
        ("inv. err LRP-epsilon", "invariance/LRP", E)]),
    "2": ("Add layers: fitted patterns (new) vs gradient copying relevance to both branches "
          "(old)", [
        ("PA fitted Add", "factor2_add/fitted/PA/aopc", ".3f"),
        ("PA gradient Add", "factor2_add/gradient/PA/aopc", ".3f"),
        ("PN(abs) fitted Add", "factor2_add/fitted/PN/aopc", ".3f"),
        ("PN(abs) gradient Add", "factor2_add/gradient/PN/aopc", ".3f"),
        *REF_ROWS,
        ("PA sum/logit fitted", "factor2_add/fitted/PA_total_over_logit/total", ".3g"),
        ("PA sum/logit gradient", "factor2_add/gradient/PA_total_over_logit/total", ".3g"),
        ("PA sum/logit fitted (median img)",
         "factor2_add/fitted/PA_total_over_logit/median_per_image", ".3g"),
        ("PA sum/logit gradient (median img)",
         "factor2_add/gradient/PA_total_over_logit/median_per_image", ".3g"),
        ("Add passes on, fitted (median)", "factor2_add/fitted/flow/add_share_median", ".3g"),
        ("Add passes on, gradient (median)", "factor2_add/gradient/flow/add_share_median", ".3g"),
        ("max|PN|/max|x| fitted", "factor2_add/fitted/PN/max_ratio", E),
        ("max|PN|/max|x| gradient", "factor2_add/gradient/PN/max_ratio", E)]),
    "3": ("Regime of kernel layers no rectifier reads directly: every sample (0fe53f6) vs own "
          "output sign (old) vs the sign of the Add's output (a variant)", [
        ("ops concerned", "factor3_regime/n_ungated", ".3f"),
        ("default here", "factor3_regime/default", ".3f"),
        ("PA every sample", f"{V3}/every_sample/PA/aopc", ".3f"),
        ("PA own sign", f"{V3}/own_sign/PA/aopc", ".3f"),
        ("PA Add-output sign", f"{V3}/add_output/PA/aopc", ".3f"),
        ("PN(abs) every sample", f"{V3}/every_sample/PN/aopc", ".3f"),
        ("PN(abs) own sign", f"{V3}/own_sign/PN/aopc", ".3f"),
        ("PN(abs) Add-output sign", f"{V3}/add_output/PN/aopc", ".3f"),
        *REF_ROWS,
        *[(f"pattern change vs default: {k}", f"{V3}/{k}/pattern_change_vs_default", E)
          for k in REGIMES],
        *[(f"PA sum/logit {k}", f"{V3}/{k}/PA_total_over_logit/total", ".3g") for k in REGIMES]]),
    "4": ("PatternNet rescaling at cut tensors: normalize=True vs False", [
        ("max|PN|/max|x| normalized", "factor4_normalize/normalized/max_ratio", E),
        ("max|PN|/max|x| raw", "factor4_normalize/raw/max_ratio", E),
        ("raw finite images", "factor4_normalize/raw_finite_images", ".3f"),
        ("AOPC normalized", "factor4_normalize/normalized/aopc", ".3f"),
        ("AOPC raw", "factor4_normalize/raw/aopc", ".3f"),
        ("AOPC diff (finite imgs)", "factor4_normalize/aopc_difference", ".1e"),
        ("direction max deviation", "factor4_normalize/direction_max_deviation", E),
        *REF_ROWS,
        ("inv. err normalized", "invariance/PN[relu]", E),
        ("inv. err raw", "invariance/PN[raw]", E)]),
    "5": ("Shrinkage: 0 vs 10 pseudo-samples per regime", [
        ("few-sample neurons (<30)", "factor5_shrinkage/few_sample_neurons", ".3f"),
        ("few-sample neurons (<10)", "factor5_shrinkage/few_sample_neurons_below_10", ".3f"),
        ("degenerate relu.positive", "fits/default/degenerate_neurons/relu.positive", ".3f"),
        ("max pattern change", "factor5_shrinkage/pattern_change_max", E),
        ("PA shrinkage 0", f"{F1}/relu/PA/aopc", ".3f"),
        ("PA shrinkage 10", "factor5_shrinkage/shrink/PA/aopc", ".3f"),
        ("PN(abs) shrinkage 0", f"{F1}/relu/PN/aopc", ".3f"),
        ("PN(abs) shrinkage 10", "factor5_shrinkage/shrink/PN/aopc", ".3f"),
        *REF_ROWS]),
    "6": ("The old library (relu_eq7 + no Add patterns + own-sign regimes, PN unscaled) "
          "vs the new default", [
        ("PA old", "factor6_old_library/old/PA/aopc", ".3f"),
        ("PA new", "factor6_old_library/new/PA/aopc", ".3f"),
        ("PN(abs) old (raw)", "factor6_old_library/old/PN/aopc", ".3f"),
        ("PN(abs) old (raw, finite imgs)", "factor6_old_library/old/PN/aopc_finite_images", ".3f"),
        ("PN(abs) old, rescaled", "factor6_old_library/old/PN_normalized/aopc", ".3f"),
        ("PN(abs) new", "factor6_old_library/new/PN/aopc", ".3f"),
        *REF_ROWS,
        ("PA old / random", "factor6_old_library/pa_old_over_random", ".2f"),
        ("PA new / random", "factor6_old_library/pa_new_over_random", ".2f"),
        ("PA sum/logit old", "factor6_old_library/old/PA_total_over_logit/total", ".3g"),
        ("PA sum/logit new", "factor6_old_library/new/PA_total_over_logit/total", ".3g"),
        ("max|PN|/max|x| old (raw)", "factor6_old_library/old/PN/max_ratio", E),
        ("PA flow old: input/logit", "flow/old/input_over_logit", ".3g"),
        ("PA flow old: lost at closed gates/logit", "flow/old/lost_closed_gates_over_logit", ".3g"),
        ("PA flow old: lost at kernel ops/logit", "flow/old/lost_kernel_ops_over_logit", ".3g"),
        ("PA flow old: lost elsewhere/logit", "flow/old/lost_other_ops_over_logit", ".3g"),
        ("PA flow new: input/logit", "flow/default/input_over_logit", ".3g"),
        ("PA flow new: lost at closed gates/logit", "flow/default/lost_closed_gates_over_logit", ".3g"),
        ("PA flow new: lost at kernel ops/logit", "flow/default/lost_kernel_ops_over_logit", ".3g"),
        ("PA flow new: lost elsewhere/logit", "flow/default/lost_other_ops_over_logit", ".3g"),
        ("issue 'before': PA", "factor6_old_library/issue_before/PA", ".3f"),
        ("issue 'before': PN(abs)", "factor6_old_library/issue_before/PN", ".3f"),
        ("issue 'before': random", "factor6_old_library/issue_before/random", ".3f"),
        ("issue 'before': LRP-eps", "factor6_old_library/issue_before/LRP", ".3f")]),
    "7": ("Diagnostic: attribution on constant (zero) background", [
        ("background pixel fraction", "factor7_background/background_pixel_fraction", ".3f"),
        ("all-zero patch fraction", "factor7_background/zero_patch_fraction", ".3f"),
        ("|PA| share, background pixels", "factor7_background/PA/background_pixels", ".3f"),
        ("|PA| share, all-zero patches", "factor7_background/PA/zero_patches", ".3f"),
        ("|PA old| share, background", "factor7_background/PA_old/background_pixels", ".3f"),
        ("|LRP| share, background pixels", "factor7_background/LRP/background_pixels", ".3f"),
        ("|PN| share, background pixels", "factor7_background/PN/background_pixels", ".3f"),
        ("PA AOPC", f"{F1}/relu/PA/aopc", ".3f"),
        ("PA x (x!=0) AOPC", "factor7_background/PA_masked_aopc", ".3f"),
        ("input x itself as ranking AOPC", "factor7_background/input_ranking_aopc", ".3f"),
        *REF_ROWS]),
}


def derived(r: dict) -> None:
    """Numbers the tables show that are ratios of stored ones."""
    if "factor3_regime" in r:
        r["factor3_regime"]["n_ungated"] = len(r["factor3_regime"]["ungated_ops"])
    f6, rnd = r.get("factor6_old_library"), _get(r, "reference/random")
    if f6 and rnd:
        for k in ("old", "new"):
            v = _get(f6, f"{k}/PA/aopc")
            f6[f"pa_{k}_over_random"] = None if v is None else v / rnd


def table(results: dict, key: str, markdown: bool) -> str:
    title, rows = TABLES[key]
    nets = list(results)
    lines = []
    if markdown:
        lines.append(f"| factor {key} | " + " | ".join(nets) + " |")
        lines.append("|---|" + "---|" * len(nets))
    else:
        lines.append(f"\n== {key}. {title}")
        lines.append(f"   {'':36s}" + "".join(f"{n:>13s}" for n in nets))
    for label, path, spec in rows:
        vals = [_f(_get(results[n], path), spec) for n in nets]
        if all(v == "-" for v in vals):
            continue
        lines.append(f"| {label} | " + " | ".join(vals) + " |" if markdown
                     else f"   {label:36s}" + "".join(f"{v:>13s}" for v in vals))
    return "\n".join(lines)


def _vals(results: dict, path: str, nets: list[str] | None = None) -> dict[str, Any]:
    return {n: _get(results[n], path) for n in (nets or list(results))}


def _list(values: dict[str, Any], spec: str = ".3f") -> str:
    return ", ".join(f"{n} {_f(v, spec)}" for n, v in values.items())


def _vs(results: dict, a: str, b: str, nets: list[str] | None = None, spec: str = ".3f") -> str:
    """``net a / b`` pairs: "plain 1.203 / 1.169, ..."."""
    return ", ".join(f"{n} {_f(_get(results[n], a), spec)} / {_f(_get(results[n], b), spec)}"
                     for n in (nets or list(results)))


def _better(results: dict, a: str, b: str, margin: float = 0.02) -> tuple[list, list]:
    """Nets where ``a`` beats ``b`` by more than ``margin``, and where it loses by more."""
    win, lose = [], []
    for n in results:
        va, vb = _get(results[n], a), _get(results[n], b)
        if va is None or vb is None:
            continue
        (win if va - vb > margin else lose if vb - va > margin else []).append(n)
    return win, lose


def verdicts(results: dict) -> dict[str, str]:
    """One sentence per factor: defect of the old code or property of the method, with evidence."""
    return {"1": _verdict_estimator(results), "2": _verdict_add(results),
            "3": _verdict_regime(results), "4": _verdict_normalize(results),
            "5": _verdict_shrinkage(results), "6": _verdict_old(results),
            "7": _verdict_background(results)}


def _verdict_estimator(r: dict) -> str:
    win, lose = _better(r, f"{F1}/relu/PA/aopc", f"{F1}/relu_eq7/PA/aopc")
    eq7 = [v for n in r for v in (_get(r[n], "invariance/PA[relu_eq7]"),
                                  _get(r[n], "invariance/PN[relu_eq7]")) if v is not None]
    relu = [v for n in r for v in (_get(r[n], "invariance/PA[relu]"),
                                   _get(r[n], "invariance/PN[relu]")) if v is not None]
    over = [n for n in r if max(_get(r[n], "invariance/PA[relu]") or 0,
                                _get(r[n], "invariance/PN[relu]") or 0) >= 1e-3]
    return ("**Defect of the old code.** `relu_eq7` (the paper's Eq. 7, nn-patterns, what the "
            "library computed before) mixes the regime mean of x with the global mean of y: its "
            f"PA/PN change by {min(eq7):.2g} to {max(eq7):.2g} of their size under a compensated "
            f"input shift, `relu` by at most {max(relu):.1e}"
            + (f" (at or above the 1e-3 target on {', '.join(over)})" if over else "")
            + ", `linear` is exact. Measured PA AOPC relu / relu_eq7: "
            + _vs(r, f"{F1}/relu/PA/aopc", f"{F1}/relu_eq7/PA/aopc")
            + (f"; relu is better on {', '.join(win)}" if win else "")
            + (f", worse on {', '.join(lose)}" if lose else "")
            + " (the gain is largest with BatchNorm, whose folding puts a large offset into y's "
            "mean); linear: " + _list(_vals(r, f"{F1}/linear/PA/aopc")) + ".")


def _verdict_add(r: dict) -> str:
    nets = [n for n in r if r[n].get("has_add")]
    if not nets:
        return "No network with an Add layer was measured."
    win, lose = _better({n: r[n] for n in nets}, "factor2_add/fitted/PA/aopc",
                        "factor2_add/gradient/PA/aopc")
    return ("**Defect of the old code's bookkeeping, small for the ranking.** The gradient "
            "copies the relevance an Add receives to both branches (the Add passes on "
            + _list(_vals(r, "factor2_add/gradient/flow/add_share_median", nets), ".3g")
            + " times what it receives; with fitted patterns "
            + _list(_vals(r, "factor2_add/fitted/flow/add_share_median", nets), ".3g")
            + "), so PA's total multiplies with the number of Adds (sum/logit gradient / fitted: "
            + _vs(r, "factor2_add/gradient/PA_total_over_logit/total",
                  "factor2_add/fitted/PA_total_over_logit/total", nets, ".3g")
            + "; the fitted total is small for another reason, the closed gates of factor 6). "
            "AOPC fitted / gradient: PA " + _vs(r, "factor2_add/fitted/PA/aopc",
                                                 "factor2_add/gradient/PA/aopc", nets)
            + ", PN " + _vs(r, "factor2_add/fitted/PN/aopc", "factor2_add/gradient/PN/aopc", nets)
            + (f"; fitted Add patterns are better for PA on {', '.join(win)}" if win else
               "; within 0.02 for PA on every net" if not lose else "")
            + (f", worse on {', '.join(lose)}" if lose else "") + ".")


def _verdict_regime(r: dict) -> str:
    v = V3
    every, own, add = (f"{v}/{k}/PA/aopc" for k in REGIMES)
    plain = [n for n in r if not r[n].get("has_add")]
    res_nets = [n for n in r if r[n].get("has_add")]
    text = ("The layers no rectifier reads directly are the logits (every net) and, on the "
            "residual nets, the convolutions and projections that feed an Add ("
            + _list(_vals(r, "factor3_regime/n_ungated"), "d") + " ops). PA AOPC every sample / "
            "own sign: " + _vs(r, every, own) + "; PN "
            + _vs(r, f"{v}/every_sample/PN/aopc", f"{v}/own_sign/PN/aopc") + ".")
    if res_nets:
        text += (" The sign of the Add's output (the input of the ReLU that follows the Add, "
                 "the gate these layers' contributions actually pass) gives PA "
                 + _list(_vals(r, add, res_nets)) + ", PN "
                 + _list(_vals(r, f"{v}/add_output/PN/aopc", res_nets)) + ".")
    if plain:
        text += f" Only the logits are concerned on {', '.join(plain)}, and nothing changes there."
    win, lose = _better({n: r[n] for n in res_nets}, every, own)
    if lose and not win:
        return ("**Not a defect of the old code by this measure: every sample costs PA on "
                f"{', '.join(lose)}.** " + text)
    if win and not lose:
        return "**Defect of the old code.** " + text
    return "**No consistent effect.** " + text


def _verdict_normalize(r: dict) -> str:
    finite = all(_get(r[n], "factor4_normalize/raw_finite_images") == _get(
        r[n], "factor4_normalize/images") for n in r)
    diffs = [abs(v) for v in _vals(r, "factor4_normalize/aopc_difference").values() if v is not None]
    return ("**Property of the method** (each back-projection sums the signal estimates of all "
            "its neurons, so the paper's scale grows with depth), and the rescaling changes the "
            "scale only: max|PN|/max|x| raw " + _list(_vals(r, "factor4_normalize/raw/max_ratio"), E)
            + " vs rescaled " + _list(_vals(r, "factor4_normalize/normalized/max_ratio"), E)
            + ("; the raw signal is finite on every image here" if finite else "")
            + f", the AOPC difference is at most {max(diffs, default=float('nan')):.1e}, the "
            "per-image directions agree to "
            + f"{max(_vals(r, 'factor4_normalize/direction_max_deviation').values()):.1e}"
            + " and the invariance error is unchanged.")


def _verdict_shrinkage(r: dict) -> str:
    gaps = [abs(_get(r[n], "factor5_shrinkage/shrink/PA/aopc") - _get(r[n], f"{F1}/relu/PA/aopc"))
            for n in r]
    return ("**Property of the method, negligible here**: few samples in a regime make a noisy "
            "pattern, but trained nets on 3,000 images have few such neurons (fewer than 30 "
            "samples: " + _list(_vals(r, "factor5_shrinkage/few_sample_neurons"), "d")
            + "; degenerate: " + _list(_vals(r, "fits/default/degenerate_neurons/relu.positive"), "d")
            + "); shrinkage 10 moves their patterns by up to "
            + _list(_vals(r, "factor5_shrinkage/pattern_change_max"), ".2g")
            + f" but PA's AOPC by at most {max(gaps):.1e}.")


def _verdict_old(r: dict) -> str:
    before = {n: ISSUE_BEFORE[n]["PA"] / ISSUE_BEFORE[n]["random"] for n in r if n in ISSUE_BEFORE}
    win, lose = _better(r, "factor6_old_library/new/PA/aopc", "factor6_old_library/old/PA/aopc")
    return ("**The old library's defects together reproduce the issue's failure.** PA/random old "
            + _list(_vals(r, "factor6_old_library/pa_old_over_random"), ".2f")
            + " (the issue's 'before': " + _list(before, ".2f") + ") vs new "
            + _list(_vals(r, "factor6_old_library/pa_new_over_random"), ".2f")
            + "; old PatternNet's raw signal reaches "
            + _list(_vals(r, "factor6_old_library/old/PN/max_ratio"), ".1e") + " x max|x|"
            + (f". The new default is better on {', '.join(win)}" if win else "")
            + (f" and worse on {', '.join(lose)} (own-sign regimes alone: "
               + _list(_vals(r, f"{V3}/own_sign/PA/aopc", lose))
               + ", factor 3)" if lose else "")
            + ". Where the new PA's relevance goes (relevance_flow): the input receives "
            + _list(_vals(r, "flow/default/input_over_logit"), ".3f") + " of the logit, closed "
            "ReLU gates drop " + _list(_vals(r, "flow/default/lost_closed_gates_over_logit"), ".2f")
            + " and kernel ops (degenerate neurons, padding) "
            + _list(_vals(r, "flow/default/lost_kernel_ops_over_logit"), ".2f")
            + ": a property of PatternAttribution, whose w*a sends relevance to inputs that are 0.")


def _verdict_background(r: dict) -> str:
    change = max(abs(_get(r[n], "factor7_background/PA_masked_aopc")
                     - _get(r[n], f"{F1}/relu/PA/aopc")) for n in r)
    gap = _list({n: _get(r[n], "reference/LRP/aopc") - _get(r[n], f"{F1}/relu/PA/aopc")
                 for n in r}, "+.3f")
    verdict = ("**Hypothesis rejected**" if change < 0.02 else "**Hypothesis supported**")
    return (f"{verdict} (a diagnostic): |PA| on zero-input pixels is "
            + _list(_vals(r, "factor7_background/PA/background_pixels"))
            + " of its mass (all-zero patches " + _list(_vals(r, "factor7_background/PA/zero_patches"))
            + "; LRP-epsilon 0), and masking PA to x != 0 changes its AOPC by at most "
            f"{change:.3f}, while LRP-epsilon minus PA is {gap}. The old library did put "
            + _list(_vals(r, "factor7_background/PA_old/background_pixels"))
            + " of |PA| on background (Eq. 7's dependence on offsets). Ranking by the input "
            "itself gives " + _list(_vals(r, "factor7_background/input_ranking_aopc"))
            + ", so LRP-epsilon's lead is not just where the ink is.")


def targets(results: dict) -> str:
    """The issue's targets under the new default, per net."""
    def aopc(r: dict, what: str) -> float:
        return r[F1]["relu"][what]["aopc"]

    rows = [("PA / random (>= 1.3)", lambda r: aopc(r, "PA") / r["reference"]["random"], ".2f"),
            ("PA / LRP-epsilon (>= 0.9)",
             lambda r: aopc(r, "PA") / r["reference"]["LRP"]["aopc"], ".2f"),
            ("PN / random (> 1)", lambda r: aopc(r, "PN") / r["reference"]["random"], ".2f"),
            ("max|PN|/max|x| (<= 1e6)", lambda r: r[F1]["relu"]["PN"]["max_ratio"], E),
            ("inv. err PA, PN (< 1e-3)", lambda r: max(r["invariance"]["PA[relu]"],
                                                       r["invariance"]["PN[relu]"]), E)]
    nets = list(results)
    lines = ["| target | " + " | ".join(nets) + " |", "|---|" + "---|" * len(nets)]
    for label, fn, spec in rows:
        lines.append(f"| {label} | " + " | ".join(_f(fn(results[n]), spec) for n in nets) + " |")
    return "\n".join(lines)


def _state(lib: dict) -> str:
    where = f"`innv_pattern` imported from `{lib['imported_from']}`"
    if lib["equals_commit"]:
        return (f"{where}, its sources exactly those of commit `{lib['equals_commit'][:10]}`"
                + ("" if lib["equals_commit"] == lib["head_commit"] else
                   f" (HEAD was `{lib['head_commit'][:10]}`)"))
    return (f"{where}, sources of no recent commit (uncommitted changes: "
            + ", ".join(lib.get("uncommitted_library_files", [])) + ")")


def markdown(doc: dict, sentences: dict[str, str] | None = None) -> str:
    results = doc["nets"]
    cfg = doc["config"]
    nets = ", ".join(f"{n} ({e} epochs, val acc {results[n]['train']['val_acc']:.3f})"
                     for n, e in cfg["epochs"].items() if n in results)
    lines = ["# Pattern factors (issue 13, build 1)", "",
             f"`benchmarks/pattern_factors.py`, seed {cfg['seed']}; nets {nets}; "
             f"patterns fitted on {cfg['fit_images']} training images; AOPC on {cfg['eval_images']} "
             f"held-out images ({tn.PATCH}x{tn.PATCH} patches replaced by their mean, "
             f"{tn.STEPS} steps, the selected logit; PatternNet ranked by |signal| summed over "
             "channels, attributions by their channel sum). " + _state(doc["library"])
             + f"; run time {doc['seconds']['total']:.0f} s on {doc['machine']['cpus']} cores "
             f"(load average {doc['machine']['load_average_start'][0]:.1f} at the start).", ""]
    sentences = sentences or verdicts(results)
    lines += ["## The issue's targets under the new default", "", targets(results), ""]
    for key, (title, _) in TABLES.items():
        lines += [f"## {key}. {title}", "", table(results, key, True), "",
                  sentences.get(key, ""), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Orchestration.
# ---------------------------------------------------------------------------
def library_provenance(search: int = 30) -> dict:
    """Where ``innv_pattern`` is imported from, and the commit whose sources it equals.

    Compares git blob hashes of the imported package's ``.py`` files with
    ``git ls-tree <commit> innv_pattern`` for HEAD and the ``search`` commits
    before it that touched the library (the library may be imported from a
    snapshot of a commit via ``PYTHONPATH`` while the working tree changes).
    """
    import innv_pattern

    root = Path(innv_pattern.__file__).resolve().parent

    def blob(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def git(*args: str) -> list[str]:
        return subprocess.run(["git", *args], cwd=tn.ROOT, capture_output=True,
                              text=True).stdout.splitlines()

    imported = {f"innv_pattern/{p.relative_to(root).as_posix()}": blob(p.read_bytes())
                for p in sorted(root.rglob("*.py"))}
    head = git("rev-parse", "HEAD")[0]
    out = {"imported_from": str(root), "head_commit": head, "equals_commit": None}
    for commit in [head] + git("rev-list", f"-{search}", "HEAD", "--", "innv_pattern"):
        listing = git("ls-tree", "-r", commit, "--", "innv_pattern")
        tree = {line.split("\t")[1]: line.split()[2] for line in listing if line.endswith(".py")}
        if tree == imported:
            out["equals_commit"] = commit
            break
    if out["equals_commit"] is None:
        out["uncommitted_library_files"] = tn.library_state()["uncommitted_library_files"]
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", choices=tn.NETS, default=list(NETS))
    p.add_argument("--quick", action="store_true",
                   help=f"the {tn.QUICK_EPOCHS}-epoch nets (trained_networks.py --quick's cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-images", type=int, default=3000)
    p.add_argument("--eval-images", type=int, default=200)
    p.add_argument("--flow-images", type=int, default=20,
                   help="images for the per-Add relevance_flow bookkeeping")
    p.add_argument("--md-only", action="store_true",
                   help="print the tables and rewrite the markdown from the JSON")
    return p.parse_args(argv)


def ensure_trained(args: argparse.Namespace) -> None:
    """Trains missing nets with trained_networks.py's own worker (a subprocess, oneDNN retry)."""
    targs = tn.parse(["--seed", str(args.seed), "--nets", *args.nets]
                     + (["--quick"] if args.quick else []))
    epochs = {n: tn.QUICK_EPOCHS if args.quick else tn.EPOCHS[n] for n in args.nets}
    missing = [n for n in args.nets
               if not tn.cache_path(n, args.seed, epochs[n]).with_suffix(".json").exists()]
    if not missing:
        return
    log(f"training {missing} with trained_networks.py")
    rc = tn.run_worker("train", missing, targs, None, onednn=True)
    if rc < 0:
        rc = tn.run_worker("train", missing, targs, None, onednn=False)
    if rc != 0:
        raise SystemExit(f"training failed (exit status {rc})")


def main() -> None:
    args = parse()
    tag = "_quick" if args.quick else ""
    json_path = tn.RESULTS / f"pattern_factors{tag}.json"
    md_path = tn.RESULTS / f"pattern_factors{tag}.md"
    if args.md_only:
        doc = json.loads(json_path.read_text())
    else:
        start, load_start = time.perf_counter(), os.getloadavg()
        ensure_trained(args)
        state = library_provenance()
        results = {}
        for name in args.nets:
            results[name] = measure(name, args)
            derived(results[name])
        doc = {"issue": 13, "build": "1: factor study",
               "config": {"nets": args.nets, "quick": args.quick, "seed": args.seed,
                          "epochs": {n: tn.QUICK_EPOCHS if args.quick else tn.EPOCHS[n]
                                     for n in args.nets},
                          "fit_images": args.fit_images, "eval_images": args.eval_images,
                          "flow_images": args.flow_images, "patch": tn.PATCH, "steps": tn.STEPS,
                          "output": "logit", "shift_m": tn.SHIFT.tolist(), "shrinkage": SHRINKAGE},
               "library": state, "working_tree_at_end": tn.library_state(),
               "machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "load_average_start": load_start,
                           "load_average_end": os.getloadavg()},
               "seconds": {"total": round(time.perf_counter() - start, 1),
                           **{n: r["seconds"]["total"] for n, r in results.items()}},
               "nets": results}
        tn.RESULTS.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=1, default=tn._json_default))
        log(f"wrote {json_path}")
    for key in TABLES:
        print(table(doc["nets"], key, False))
    md_path.write_text(markdown(doc))
    log(f"wrote {md_path}; total {doc['seconds']['total']} s")


if __name__ == "__main__":
    main()
