"""Peak memory and time of one outer step on text, backprop vs mixflow, as T grows.

    python -m benchmarks.text_meta_step [--T 1 2 4 8] [--steps 2] [--mixflow-modes MODE ...] [--output PATH]

configs/text.yaml's models and data (transformer rater, causal transformer LM, 64-byte sequences,
batch 32), one inner model, no reinitialisation. Each (method, T) runs in a fresh child process
(`--one METHOD T`) that builds the population as jobs.meta_train does, resets the peak-RSS counter
after setup, runs a warm-up step and `--steps` timed ones, and prints one JSON line. Memory is
the growth of the process's peak RSS over its post-setup RSS (benchmarks.meta_step's helpers).
`--mixflow-modes` runs mixflow once per meta.mixflow_mode given (default: the paper's JVP only).
Results: benchmarks/results/text_meta_step.json (text_meta_step.modes.json with other --mixflow-modes;
--output PATH to choose); see docs/text.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import proc_status_mb, reset_peak_rss

ROOT = Path(__file__).resolve().parents[1]
TAG = "RESULT "


def run_one(method: str, T: int, steps: int, mixflow_mode: str = "forward_over_reverse") -> dict:
    from drray.config import load_config
    from drray.data.splits import build_splits
    from drray.train.loop import make_population

    cfg = load_config(ROOT / "configs" / "text.yaml", [
        f"meta.method={method}", f"inner.T={T}", "population.size=1", "population.lifetime=100000",
        "data.max_train=2000", "data.probe_size=100", f"data.dir={ROOT.parent / 'shared' / 'data' / 'text'}",
        f"meta.mixflow_mode={mixflow_mode}"])
    population = make_population(cfg, build_splits(cfg.data, cfg.run.seed))
    baseline = reset_peak_rss()
    population.step()  # warm-up
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        population.step()
        times.append(time.perf_counter() - started)
    peak = proc_status_mb("VmHWM")
    return {"method": method, "mixflow_mode": mixflow_mode, "T": T, "batch": cfg.inner.batch_size, "seq_len": cfg.data.seq_len,
            "sec_per_step": statistics.median(times), "baseline_rss_mb": baseline, "peak_rss_mb": peak,
            "extra_mb": peak - baseline}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "T"))
    parser.add_argument("--mixflow-modes", nargs="+", default=["forward_over_reverse"],
                        choices=["forward_over_reverse", "reverse_over_reverse"])
    parser.add_argument("--output", default=None, help="default: benchmarks/results/text_meta_step.json, "
                        "text_meta_step.modes.json when --mixflow-modes differs from the default")
    args = parser.parse_args(argv)
    if args.one:
        if len(args.mixflow_modes) != 1:
            parser.error("--one runs one configuration: give one --mixflow-modes value")
        print(TAG + json.dumps(run_one(args.one[0], int(args.one[1]), args.steps, args.mixflow_modes[0])), flush=True)
        return
    rows = []
    variants = [("backprop", "forward_over_reverse")] + [("mixflow", mode) for mode in args.mixflow_modes]
    for T in args.T:
        for method, mode in variants:
            child = subprocess.run([sys.executable, "-m", "benchmarks.text_meta_step", "--one", method, str(T),
                                    "--steps", str(args.steps), "--mixflow-modes", mode],
                                   cwd=ROOT, capture_output=True, text=True, check=True)
            row = json.loads(next(line for line in child.stdout.splitlines() if line.startswith(TAG))[len(TAG):])
            rows.append(row)
            label = method + (f" ({mode})" if method == "mixflow" else "")
            print(f"T={T:<3} {label:<32} {row['sec_per_step']:.2f} s/step  +{row['extra_mb']:.0f} MB peak", flush=True)
    default_modes = args.mixflow_modes == ["forward_over_reverse"]
    output = args.output or str(ROOT / "benchmarks" / "results" /
                                ("text_meta_step.json" if default_modes else "text_meta_step.modes.json"))
    command = "python -m benchmarks.text_meta_step " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(output).write_text(json.dumps({"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                        "loadavg": os.getloadavg(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
