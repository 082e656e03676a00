"""The evaluation's outputs: results.json, results.md (the table) and two PNG plots."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from drray.evaluation.experiment import Metric
from drray.io import atomic_write_bytes

MARKERS = {"baseline": "k", "datarater": "tab:blue", "random": "tab:gray", "loss": "tab:orange",
           "loss_mid": "tab:brown", "loss_high": "tab:red", "cleanlab": "tab:purple", "oracle": "tab:green"}


def _num(value, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{scale * value:.{digits}f}"


def results_markdown(rows: list[dict], verdicts: list[dict], meta: dict, metric: Metric,
                     checks: list[dict] = (), warnings: list[str] = ()) -> str:
    """The table of results.md: the modality's metric per method and fraction, the verdicts, the
    rater's selection against the controls at each fraction (experiment.selection_checks) and
    the warnings made of them."""
    digits = 2 if metric.scale != 1.0 else 4
    name = metric.label.split(" (")[0]
    lines = [f"# Evaluation: {meta['data']}", "",
             f"Fresh `{meta['arch']}` models, {meta['steps']} steps of batch {meta['batch_size']} "
             f"({meta['optimizer']}, lr {meta['lr']:g}), {meta['seeds']} seeds; {metric.label} "
             "(mean, std over seeds, standard error). Min class kept: of the rows the batches drew, the "
             "fraction kept for the class kept least (mean over seeds"
             + (", selection stratified by class" if meta.get("stratify") else "") + "). Selection quality "
             "is of the globally lowest-scored `discard` fraction of the training set, against the ground truth.", "",
             f"| method | discard | {name} mean | std | se | n | min class kept | AUROC | removal precision | "
             "corrupted removed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = metric.key
        lines.append(f"| {r['method']} | {r['discard']:g} | {_num(r[k + '_mean'], metric.scale, digits)} | "
                     f"{_num(r[k + '_std'], metric.scale, digits)} | {_num(r[k + '_se'], metric.scale, digits)} | "
                     f"{r['n']} | {_num(r.get('min_class_kept_fraction'), 100, 1)} | {_num(r.get('auroc'), digits=3)} | "
                     f"{_num(r.get('removal_precision'), 100, 1)} | "
                     f"{_num(r.get('corrupted_removed_fraction'), 100, 1)} |")
    if verdicts:
        better = "higher" if metric.higher_is_better else "lower"
        lines += ["", f"Data rater at its best fraction against each rival, by {name} (paired over seeds; "
                  f"difference > 0 means the rater's is {better}; beats = difference > 2 standard errors):", "",
                  "| datarater discard | rival | rival discard | difference | se | beats |",
                  "|---|---|---|---|---|---|"]
        for v in verdicts:
            lines.append(f"| {v['datarater_discard']:g} | {v['rival']} | {v['rival_discard']:g} | "
                         f"{_num(v['diff'], metric.scale, digits)} | {_num(v['se'], metric.scale, digits)} | "
                         f"{'yes' if v['beats'] else 'no'} |")
    lines += _checks_markdown(checks, metric, digits)
    lines += ["", *(f"**Warning:** {w}." for w in warnings)] if warnings else []
    return "\n".join(lines) + "\n"


def _checks_markdown(checks: list[dict], metric: Metric, digits: int) -> list[str]:
    if not checks:
        return []
    name = metric.label.split(" (")[0]
    lines = ["", f"The rater's selection against random drop (same fraction) and all the data, at every fraction, by "
             f"{name} and by the same measure on the held-out split (what a run without a test split can see; for "
             "a language model that is the loss the rater was meta-trained on, which favours it); paired over "
             "seeds, difference > 0 means the rater's is better, worse = the control better by more than 2 "
             "standard errors (n/a: fewer than 2 seeds):", "",
             "| discard | control | test difference | se | worse | held-out difference | se | worse |",
             "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        cells = [f"{_num(c[p + '_diff'], metric.scale, digits)} | {_num(c[p + '_se'], metric.scale, digits)} | "
                 + ("n/a" if c[p + "_n"] < 2 else "yes" if c[p + "_worse"] else "no") for p in ("test", "heldout")]
        lines.append(f"| {c['discard']:g} | {c['control']} | {cells[0]} | {cells[1]} |")
    return lines


def write_results(out: Path, rows: list[dict], verdicts: list[dict], runs: list[dict], meta: dict,
                  metric: Metric, checks: list[dict] = (), warnings: list[str] = ()) -> str:
    """results.json and results.md in `out`; returns results.md's text (the job's report)."""
    payload = _nan_to_none({"rows": rows, "verdicts": verdicts, "checks": list(checks), "warnings": list(warnings),
                            "runs": runs, "meta": {**meta, "metric": metric.key}})
    atomic_write_bytes(out / "results.json", json.dumps(payload, indent=2, allow_nan=False).encode())
    markdown = results_markdown(rows, verdicts, meta, metric, checks, warnings)
    atomic_write_bytes(out / "results.md", markdown.encode())
    return markdown


def _nan_to_none(value):
    """JSON has no NaN: an undefined figure (a std of one seed) is written as null."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def plot_metric(path: Path, rows: list[dict], metric: Metric) -> None:
    """The metric (test accuracy, or test loss for text) against the discard fraction per method,
    error bars one standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        x = [r["discard"] for r in mine]
        y = [metric.scale * r[f"{metric.key}_mean"] for r in mine]
        se = [metric.scale * r[f"{metric.key}_se"] if math.isfinite(r[f"{metric.key}_se"]) else 0.0 for r in mine]
        if method == "baseline":
            ax.axhline(y[0], color=MARKERS[method], lw=1, label="baseline (all data)")
            ax.axhspan(y[0] - se[0], y[0] + se[0], color=MARKERS[method], alpha=0.1)
        else:
            ax.errorbar(x, y, yerr=se, marker="o", capsize=3, color=MARKERS.get(method), label=method)
    ax.set_xlim(-0.02, max(r["discard"] for r in rows) + 0.05)  # from the baseline's 0 to the largest fraction
    ax.set_xlabel("discard fraction")
    ax.set_ylabel(metric.label)
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
