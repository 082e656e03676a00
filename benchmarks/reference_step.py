"""drray's outer step at the reference configuration against the public reference's computation,
rewritten minimally and timed on the same machine, alternating runs.

    python -m benchmarks.reference_step [--repeats 3]

Issue 2 states that the public reference implementation takes 0.74 s per outer step (1.05 GB) on
this machine at T=2, population 8, batch 128, inner SGD, and sets drray's target at half of it.
That figure cannot be re-measured here (the reference needs torchvision and a download), so this
script runs what the reference computes, per its published source, as a baseline in a fresh
process of its own: for each of the 8 inner models, fresh leaf copies of its weights, T plain SGD
steps taken with `autograd.grad(create_graph=True)` on rater-weighted losses (softmax over the
batch), the loss on one held-out batch shared by the population; then one `backward()` of the mean
outer loss into the rater, global-norm clipping and an Adam step; the inner models keep their
new weights. Same data (MNIST, 20,000 training rows), the same `cnn` rater and inner CNN
architectures, built of torch's own layers as the reference's are (ReLU then nn.MaxPool2d:
`drray.models.layers.with_torch_layers`), plain SGD (momentum 0) for both. Against it:
`benchmarks.meta_step --one` children for backprop and both mixflow modes. Each run: one
warm-up step and 3 timed; the repeats cycle through all four.
Writes benchmarks/results/reference_step.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

from benchmarks.harness import (
    DATA_DIR,
    RESULT_TAG,
    RESULTS,
    alternate,
    machine_info,
    proc_status_mb,
    ratio,
    reset_peak_rss,
    spawn,
)
from benchmarks.meta_step import child_args

T, POP, BATCH, LR, TEMPERATURE, CLIP, META_LR = 2, 8, 128, 0.01, 0.3, 5.0, 3e-4
VARIANTS = (("backprop", "forward_over_reverse"), ("mixflow", "forward_over_reverse"),
            ("mixflow", "reverse_over_reverse"))
KEYS = ("sec_per_step", "cpu_sec_per_step", "peak_rss_mb", "extra_mb")


def reference_outer_step(inner_models, rater, meta_opt, sample_train, sample_heldout) -> float:
    """One outer step as the reference computes it (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    x_out, y_out = sample_heldout()
    outer_losses = []
    for model in inner_models:
        fast = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        for _ in range(T):
            x, y = sample_train()
            weights = torch.softmax(rater(x, y) / TEMPERATURE, dim=0)
            losses = F.cross_entropy(functional_call(model, fast, (x,)), y, reduction="none")
            grads = torch.autograd.grad((weights * losses).sum(), tuple(fast.values()), create_graph=True)
            fast = {n: p - LR * g for (n, p), g in zip(fast.items(), grads)}
        outer_losses.append(F.cross_entropy(functional_call(model, fast, (x_out,)), y_out))
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(fast[n])
    meta_opt.zero_grad()
    loss = torch.stack(outer_losses).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(rater.parameters(), CLIP)
    meta_opt.step()
    return loss.item()


def run_reference(steps: int) -> dict:
    import torch

    from drray.config import load_config
    from drray.data.examples import to_tensors
    from drray.data.splits import build_splits
    from drray.models import build_inner, build_rater
    from drray.models.layers import with_torch_layers

    cfg = load_config(None, ["data.source=mnist", f"data.dir={DATA_DIR}", "data.max_train=20000"])
    splits = build_splits(cfg.data, 0)
    (x_train, y_train), (x_held, y_held) = to_tensors(splits.train), to_tensors(splits.heldout)
    generator = torch.Generator().manual_seed(0)

    def sampler(x, y):
        def sample():
            index = torch.randint(len(x), (BATCH,), generator=generator)
            return x[index], y[index]
        return sample

    torch.manual_seed(0)
    shape, classes = splits.row_shape, splits.num_classes
    # torch's own layers (ReLU, then nn.MaxPool2d), as the reference's models have them
    inner_models = [with_torch_layers(build_inner("cnn", shape, classes)) for _ in range(POP)]
    rater = with_torch_layers(build_rater("cnn", shape, classes))
    meta_opt = torch.optim.Adam(rater.parameters(), lr=META_LR)
    step = lambda: reference_outer_step(inner_models, rater, meta_opt, sampler(x_train, y_train),  # noqa: E731
                                        sampler(x_held, y_held))
    baseline = reset_peak_rss()
    step()  # warm-up, as the meta_step children do
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = proc_status_mb("VmHWM")
    return {"kind": "reference_step", "sec_per_step": statistics.median(times), "sec_all": times,
            "cpu_sec_per_step": statistics.median(cpu), "baseline_rss_mb": baseline, "peak_rss_mb": peak,
            "extra_mb": peak - baseline, "torch_threads": torch.get_num_threads()}


def run_drray(method: str, mode: str, steps: int) -> dict:
    args = SimpleNamespace(mixflow_chunk=None, mixflow_mode=mode, batch=BATCH, max_train=20000, data_dir=DATA_DIR)
    return spawn(child_args(method, T, POP, "sgd", LR, steps, args) + ["--momentum", "0"])


def spawn_reference(steps: int) -> dict:
    return spawn(["--child", "--steps", str(steps)], module="benchmarks.reference_step")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reference_step", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed outer steps per run (after one warm-up)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(RESULT_TAG + json.dumps(run_reference(args.steps)), flush=True)
        return 0
    info = machine_info()
    command = "python -m benchmarks.reference_step" + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "reference_step.json"
    labelled = [("reference computation", lambda: spawn_reference(args.steps))]
    labelled += [(f"drray {method}" + (f" {mode}" if method == "mixflow" else ""),
                  lambda m=method, md=mode: run_drray(m, md, args.steps)) for method, mode in VARIANTS]
    runs, medians = alternate(labelled, args.repeats, path, {"command": command, "machine": info}, KEYS)
    ref = medians["reference computation"]
    print(f"\n{'configuration':<42} {'s/step':>7} {'CPU s':>6} {'peak MB':>8} {'extra MB':>8} {'time/ref':>8} "
          f"{'CPU/ref':>7}")
    for label, m in medians.items():
        m["time_over_reference"] = ratio(m["sec_per_step"], ref["sec_per_step"])
        m["cpu_over_reference"] = ratio(m["cpu_sec_per_step"], ref["cpu_sec_per_step"])
        print(f"{label:<42} {m['sec_per_step']:>7.3f} {m['cpu_sec_per_step']:>6.3f} {m['peak_rss_mb']:>8.0f} "
              f"{m['extra_mb']:>8.0f} {m['time_over_reference']:>8.2f} {m['cpu_over_reference']:>7.2f}")
    print("target (issue 2): half the reference's time (<= 0.50x) and <= 512 MB peak")
    info["loadavg_end"] = os.getloadavg()
    path.write_text(json.dumps({"command": command, "machine": info, "medians": medians, "runs": runs}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
