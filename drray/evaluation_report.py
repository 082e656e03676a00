"""The evaluation's outputs: results.json, results.md (the table) and two PNG plots."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from drray.checkpoint import atomic_write_bytes

MARKERS = {"baseline": "k", "datarater": "tab:blue", "random": "tab:gray", "loss": "tab:orange"}


def _pct(value, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}"


def results_markdown(rows: list[dict], verdicts: list[dict], meta: dict) -> str:
    lines = [f"# Evaluation: {meta['data']}", "",
             f"Fresh `{meta['arch']}` models, {meta['steps']} steps of batch {meta['batch_size']} "
             f"({meta['optimizer']}, lr {meta['lr']:g}), {meta['seeds']} seeds; test accuracy in % "
             "(mean, std over seeds, standard error). Selection quality is of the globally lowest-scored "
             "`discard` fraction of the training set, against the ground truth.", "",
             "| method | discard | acc mean | acc std | acc se | n | AUROC | removal precision | corrupted removed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['discard']:g} | {_pct(r['acc_mean'])} | {_pct(r['acc_std'])} | "
                     f"{_pct(r['acc_se'])} | {r['n']} | {_fmt(r.get('auroc'))} | {_pct(r.get('removal_precision'), 1)}"
                     f" | {_pct(r.get('corrupted_removed_fraction'), 1)} |")
    if verdicts:
        lines += ["", "Data rater at its best fraction against each rival (paired over seeds; beats = "
                  "difference > 2 standard errors):", "",
                  "| datarater discard | rival | rival discard | difference (points) | se | beats |",
                  "|---|---|---|---|---|---|"]
        for v in verdicts:
            lines.append(f"| {v['datarater_discard']:g} | {v['rival']} | {v['rival_discard']:g} | "
                         f"{_pct(v['diff'])} | {_pct(v['se'])} | {'yes' if v['beats'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def write_results(out: Path, rows: list[dict], verdicts: list[dict], runs: list[dict], meta: dict) -> None:
    payload = _nan_to_none({"rows": rows, "verdicts": verdicts, "runs": runs, "meta": meta})
    atomic_write_bytes(out / "results.json", json.dumps(payload, indent=2, allow_nan=False).encode())
    atomic_write_bytes(out / "results.md", results_markdown(rows, verdicts, meta).encode())


def _nan_to_none(value):
    """JSON has no NaN: an undefined figure (a std of one seed) is written as null."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def plot_accuracy(path: Path, rows: list[dict]) -> None:
    """Test accuracy against the discard fraction per method, error bars one standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        x = [r["discard"] for r in mine]
        y = [100 * r["acc_mean"] for r in mine]
        se = [100 * r["acc_se"] if math.isfinite(r["acc_se"]) else 0.0 for r in mine]
        if method == "baseline":
            ax.axhline(y[0], color=MARKERS[method], lw=1, label="baseline (all data)")
            ax.axhspan(y[0] - se[0], y[0] + se[0], color=MARKERS[method], alpha=0.1)
        else:
            ax.errorbar(x, y, yerr=se, marker="o", capsize=3, color=MARKERS.get(method), label=method)
    ax.set_xlabel("discard fraction")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_score_histograms(path: Path, scores: dict, corruption: np.ndarray) -> None:
    """One panel per scoring method: its scores' histogram split by corruption kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.5), squeeze=False)
    kinds = sorted(set(corruption))
    for ax, (method, values) in zip(axes[0], scores.items()):
        bins = np.histogram_bin_edges(values, bins=50)
        for kind in kinds:
            ax.hist(values[corruption == kind], bins=bins, density=True, histtype="step", lw=1.5,
                    label=kind or "clean")
        ax.set_title(f"{method} score")
        ax.set_xlabel("score (higher = keep)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
