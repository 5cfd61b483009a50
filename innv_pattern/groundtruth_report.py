"""Writes what :func:`innv_pattern.groundtruth_benchmark.run_benchmark` measured.

``groundtruth.json`` (every number), ``groundtruth.md`` (score matrices and the
invariance table), ``groundtruth_scores.png`` and ``groundtruth_precision.png``
(the EMD-score and precision matrices as heatmaps) and ``groundtruth_examples.png`` (one image per scenario and background, its
ground truth and every method's map).  Matplotlib draws without pyplot state.

Example:
    >>> short_name("pattern.attribution"), short_name("lrp.alpha_1_beta_0")
    ('PA', 'lrp.alpha_1_beta_0')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["markdown_tables", "plot_examples", "plot_scores", "short_name", "write_report"]

_SHORT = {"gradient": "Grad", "input_t_gradient": "IxG", "deconvnet": "Deconv",
          "guided_backprop": "GBP", "lrp.z": "LRP-z", "lrp.epsilon": "LRP-eps",
          "smoothgrad": "SG", "integrated_gradients": "IG", "pattern.net": "PN",
          "pattern.attribution": "PA", "random": "random", "sobel": "Sobel", "input": "x"}
_METRIC_TITLES = {"emd": "EMD score (1 - EMD / d_max; 1 is perfect)",
                  "precision": "top-k precision (k = ground-truth pixels)",
                  "mass": "mass on the ground truth", "auroc": "AUROC"}


def short_name(method: str) -> str:
    """The column label of a method (its own name when unknown)."""
    return _SHORT.get(method, method)


def _row_label(cell: dict) -> str:
    return f"{cell['scenario'].upper()} {cell['background'].upper()} {cell['model']}"


def _methods(record: dict) -> list[str]:
    return list(record["cells"][0]["scores"])


def markdown_tables(record: dict, metrics: tuple[str, ...] = ("emd", "precision")) -> str:
    """Score matrices (one row per data set and model, one column per method; the best
    method of each row in bold) and the input-invariance table."""
    methods = _methods(record)
    out = []
    for metric in metrics:
        out += [f"**{_METRIC_TITLES[metric]}**", "",
                "| data, model | acc. | " + " | ".join(short_name(m) for m in methods) + " |",
                "|---|---|" + "---|" * len(methods)]
        for cell in record["cells"]:
            values = [cell["scores"][m][metric] for m in methods]
            best = np.nanmax(values)
            flag = "" if cell["test_accuracy"] >= 0.9 else "†"
            out.append(f"| {_row_label(cell)} | {cell['test_accuracy']:.2f}{flag} | " + " | ".join(
                f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in values) + " |")
        out.append("")
    out += ["† below the 90% test accuracy XAI-TRIS asks of its models; near 0.5 the model "
            "is at chance and its explanations explain nothing.", ""]
    if record.get("invariance"):
        names = list(next(iter(record["invariance"].values())))
        out += ["**input invariance**: relative change of the analysis when the input is "
                "shifted by -1 and the first layer's bias compensates (0 = invariant)", "",
                "| model | " + " | ".join(short_name(n) for n in names) + " |",
                "|---|" + "---|" * len(names)]
        for kind, errors in record["invariance"].items():
            out.append(f"| {kind} | " + " | ".join(f"{errors[n]:.1e}" for n in names) + " |")
        out.append("")
    return "\n".join(out)


def plot_scores(record: dict, metric: str = "emd") -> Any:
    """The score matrix as a heatmap: rows data set and model, columns methods."""
    from matplotlib.figure import Figure

    methods, cells = _methods(record), record["cells"]
    matrix = np.array([[c["scores"][m][metric] for m in methods] for c in cells])
    fig = Figure(figsize=(1.0 + 0.62 * len(methods), 1.2 + 0.34 * len(cells)),
                 layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(methods)), [short_name(m) for m in methods], rotation=45,
                  ha="right")
    ax.set_yticks(range(len(cells)), [f"{_row_label(c)} ({c['test_accuracy']:.2f})"
                                      for c in cells])
    for (i, j), v in np.ndenumerate(matrix):
        bold = v == np.nanmax(matrix[i])
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="black" if v > np.nanmean(matrix) else "white",
                fontweight="bold" if bold else "normal")
    fig.colorbar(image, ax=ax, shrink=0.6)
    ax.set_title(f"XAI-TRIS 8x8: {_METRIC_TITLES[metric]}; row: data, model (test accuracy)",
                 fontsize=9)
    return fig


def plot_examples(record: dict, examples: dict) -> Any:
    """One row per scenario and background (its most accurate model): the image, the
    ground truth, and each method's |map| scaled to its own maximum."""
    from matplotlib.figure import Figure

    rows = list(examples)
    methods = _methods(record)
    fig = Figure(figsize=(1.1 * (len(methods) + 2), 1.25 * len(rows) + 0.4),
                 layout="constrained")
    axes = fig.subplots(len(rows), len(methods) + 2, squeeze=False)
    for r, key in enumerate(rows):
        cells = [c for c in record["cells"] if (c["scenario"], c["background"]) == key]
        best = max(cells, key=lambda c: c["test_accuracy"])
        example = examples[key][best["model"]]
        x = example["x"]
        panels = [("input", x, "RdBu_r", np.abs(x).max()), ("truth", example["mask"], "gray_r", 1)]
        panels += [(short_name(m), np.abs(example["maps"][m]), "hot_r",
                    np.abs(example["maps"][m]).max() or 1.0) for m in methods]
        for c, (title, image, cmap, top) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image, cmap=cmap, vmin=-top if cmap == "RdBu_r" else 0, vmax=top)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
        axes[r, 0].set_ylabel(f"{key[0].upper()} {key[1].upper()}\n{best['model']}", fontsize=8)
    return fig


def write_report(record: dict, examples: dict, output_dir: Path, prefix: str = "groundtruth"
                 ) -> None:
    """Writes ``<prefix>.json``, ``<prefix>.md``, ``<prefix>_scores.png`` (EMD score),
    ``<prefix>_precision.png`` and ``<prefix>_examples.png`` into ``output_dir`` (created)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{prefix}.json").write_text(json.dumps(record, indent=1, default=float))
    (output_dir / f"{prefix}.md").write_text(markdown_tables(record))
    plot_scores(record).savefig(output_dir / f"{prefix}_scores.png", dpi=110)
    plot_scores(record, "precision").savefig(output_dir / f"{prefix}_precision.png", dpi=110)
    plot_examples(record, examples).savefig(output_dir / f"{prefix}_examples.png", dpi=90)
