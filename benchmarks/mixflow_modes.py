"""mixflow's two backward modes against each other and against backprop, alternating runs.

    python -m benchmarks.mixflow_modes [--repeats 3]

`meta.mixflow_mode` forward_over_reverse (the paper's JVP) vs reverse_over_reverse (a double
backward), with backprop as the baseline, at T=16 (the population-1 Adam setting of
benchmarks.meta_step) and at the reference configuration (T=2, population 8, inner SGD). Each run
is a fresh `benchmarks.meta_step --one` child (one warm-up step, 3 timed); the repeats cycle
through all six configurations so a shared machine's drifts hit every one; medians are reported.
Writes benchmarks/results/mixflow_modes.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace

from benchmarks.harness import DATA_DIR, RESULTS, alternate, machine_info, ratio, spawn
from benchmarks.meta_step import child_args

SETTINGS = {"T16": dict(T=16, pop=1, optimizer="adam", lr=1e-3),
            "reference": dict(T=2, pop=8, optimizer="sgd", lr=0.01)}
VARIANTS = (("backprop", "forward_over_reverse"), ("mixflow", "forward_over_reverse"),
            ("mixflow", "reverse_over_reverse"))
KEYS = ("sec_per_step", "cpu_sec_per_step", "peak_rss_mb", "extra_mb", "warm_extra_mb")


def run(setting: dict, method: str, mode: str) -> dict:
    args = SimpleNamespace(mixflow_chunk=None, mixflow_mode=mode, batch=128, max_train=20000, data_dir=DATA_DIR)
    return spawn(child_args(method, setting["T"], setting["pop"], setting["optimizer"], setting["lr"], 3, args))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mixflow_modes", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    info = machine_info()
    command = "python -m benchmarks.mixflow_modes" + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "mixflow_modes.json"
    labelled = [(f"{name} {method}" + (f" {mode}" if method == "mixflow" else ""),
                 lambda s=setting, m=method, md=mode: run(s, m, md))
                for name, setting in SETTINGS.items() for method, mode in VARIANTS]
    runs, medians = alternate(labelled, args.repeats, path, {"command": command, "machine": info}, KEYS)
    print(f"\n{'configuration':<42} {'s/step':>7} {'CPU s':>6} {'peak MB':>8} {'extra MB':>8} {'warm MB':>8} "
          f"{'time/bp':>7} {'extra/bp':>8}")
    for label, m in medians.items():
        bp = medians[label.split()[0] + " backprop"]
        print(f"{label:<42} {m['sec_per_step']:>7.3f} {m['cpu_sec_per_step']:>6.3f} {m['peak_rss_mb']:>8.0f} "
              f"{m['extra_mb']:>8.0f} {m['warm_extra_mb']:>8.0f} {ratio(m['sec_per_step'], bp['sec_per_step']):>7.2f} "
              f"{ratio(m['extra_mb'], bp['extra_mb']):>8.3f}")
    path.write_text(json.dumps({"command": command, "machine": info, "medians": medians, "runs": runs}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
