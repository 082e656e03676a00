"""Time per outer step and peak memory of the meta-gradient engine (backprop vs mixflow).

    python -m benchmarks.meta_step            # full sweep, T in {1,2,4,8,16,32}, + reference config
    python -m benchmarks.meta_step --quick    # smoke run, T in {1,2}

MNIST CNN inner model and CNN rater (28x28, ../shared/data/mnist), batch 128. Every configuration
runs in a fresh child process (`--one ...`), so peak memory is not polluted by earlier runs. The
child builds the population exactly as jobs.meta_train does, resets the peak-RSS counter after
setup (/proc/self/clear_refs), runs one warm-up outer step and N timed ones, and prints one JSON
line: "extra" is the peak over the RSS after setup (the first step's one-time costs included:
torch's lazy imports, allocator and kernel caches), "warm extra" the peak of the timed steps over
the RSS after the warm-up step (measured since the fourth session: the heap is trimmed between the
warm-up and the timed steps, which earlier sweeps did not do). `--mixflow-mode reverse_over_reverse`
runs mixflow's backward as a double backward (meta.mixflow_mode). A `--primitive` child times the autograd primitives of one inner step of this CNN
(forward+backward, reverse-over-reverse Hessian-vector product, forward-over-reverse JVP), which
bound what an outer step can cost: ratios in the table are against those, measured in the same run.

Results: benchmarks/results/meta_step[.MODE][.chunkN].json (.quick.json for --quick); see BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

from benchmarks.harness import (
    DATA_DIR,
    RESULT_TAG,
    RESULTS,
    ROOT,
    machine_info,
    proc_status_mb,
    ratio,
    reset_peak_rss,
    spawn,
)

T_VALUES = (1, 2, 4, 8, 16, 32)
QUICK_T_VALUES = (1, 2)
METHODS = ("backprop", "mixflow")


# ---------------------------------------------------------------- children

def config_overrides(args) -> list[str]:
    return [
        "data.source=mnist", f"data.dir={args.data_dir}", f"data.max_train={args.max_train}",
        "inner.arch=cnn", "rater.arch=cnn",
        f"inner.T={args.T}", f"inner.batch_size={args.batch}", f"meta.outer_batch_size={args.batch}",
        f"inner.optimizer={args.optimizer}", f"inner.lr={args.lr}", f"inner.momentum={args.momentum}",
        f"population.size={args.pop}", "population.lifetime=100000",  # no reinitialisation while timing
        f"meta.method={args.method}", f"run.seed={args.seed}", "run.device=cpu",
        f"meta.mixflow_mode={args.mixflow_mode}",
    ] + ([f"meta.mixflow_chunk={args.mixflow_chunk}"] if args.mixflow_chunk else [])


def run_one(args) -> dict:
    import torch

    from drray.config import load_config
    from drray.data.splits import build_splits
    from drray.meta.population import learner_threads
    from drray.train.loop import make_population

    cfg = load_config(None, config_overrides(args))
    splits = build_splits(cfg.data, cfg.run.seed)
    population = make_population(cfg, splits)
    baseline = reset_peak_rss()
    population.step()  # warm-up (allocator, autograd caches, torch's lazy imports)
    cold_peak = proc_status_mb("VmHWM")
    warm_baseline = reset_peak_rss()  # "warm": what the timed steps add to a process that has run one
    times, cpu = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        population.step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    warm_peak = proc_status_mb("VmHWM")
    peak = max(cold_peak, warm_peak)
    return {
        "kind": "meta_step", "method": args.method, "T": args.T, "pop": args.pop, "optimizer": args.optimizer,
        "lr": args.lr, "batch": args.batch, "steps_timed": args.steps,
        "sec_per_step": statistics.median(times), "sec_min": min(times), "sec_all": times,
        "cpu_sec_per_step": statistics.median(cpu),  # process CPU time (both threads): robust to a busy machine
        "baseline_rss_mb": baseline, "peak_rss_mb": peak, "extra_mb": peak - baseline,
        "warm_baseline_rss_mb": warm_baseline, "warm_extra_mb": warm_peak - warm_baseline,
        "mixflow_mode": args.mixflow_mode,
        "torch_threads": torch.get_num_threads(), "mixflow_chunk": args.mixflow_chunk,
        "learner_threads": list(learner_threads(cfg)),  # (learners at once, torch threads each): run.learner_threads
    }


def run_primitive(args) -> dict:
    """Autograd primitives of ONE inner step of the MNIST CNN at this batch size."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    from drray.models import build_inner, build_rater

    torch.manual_seed(0)
    inner, rater = build_inner("cnn", (28, 28), 10), build_rater("cnn", (28, 28), 10)
    names = [n for n, _ in inner.named_parameters()]
    theta = tuple(p.detach() for p in inner.parameters())
    x, y = torch.rand(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    v = tuple(torch.randn_like(t) for t in theta)

    def loss(th):
        return F.cross_entropy(functional_call(inner, dict(zip(names, th)), (x,)), y)

    def forward_backward():
        th = tuple(t.clone().requires_grad_() for t in theta)
        return torch.autograd.grad(loss(th), th)

    def double_backward():  # reverse-over-reverse: grad with a graph, then a VJP through it (HVP)
        th = tuple(t.clone().requires_grad_() for t in theta)
        g = torch.autograd.grad(loss(th), th, create_graph=True)
        return torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), th)

    def jvp_of_grad():  # forward-over-reverse, what mixflow's backward runs once per inner step
        return torch.func.jvp(torch.func.grad(loss), (theta,), (v,))

    w0 = torch.full((args.batch,), 1.0 / args.batch)

    def rr_hvp_and_dlosses():  # reverse-over-reverse alternative: (H_w v, <v, grad l_i>) via w as a leaf
        th, w = tuple(t.clone().requires_grad_() for t in theta), w0.clone().requires_grad_()
        losses = F.cross_entropy(functional_call(inner, dict(zip(names, th)), (x,)), y, reduction="none")
        g = torch.autograd.grad((w * losses).sum(), th, create_graph=True)
        return torch.autograd.grad(g, th + (w,), grad_outputs=v)

    d = torch.randn(args.batch)

    def rater_forward_backward():
        eta = tuple(p.detach().requires_grad_() for p in rater.parameters())
        rnames = [n for n, _ in rater.named_parameters()]
        s = functional_call(rater, dict(zip(rnames, eta)), (x, y))
        return torch.autograd.grad((torch.softmax(s / 0.3, 0) * d).sum(), eta)

    out = {"kind": "primitive", "batch": args.batch, "inner_params": sum(t.numel() for t in theta),
           "rater_params": sum(p.numel() for p in rater.parameters()), "torch_threads": torch.get_num_threads()}
    for name, fn in [("forward_backward", forward_backward), ("double_backward", double_backward),
                     ("jvp_of_grad", jvp_of_grad), ("rr_hvp_and_dlosses", rr_hvp_and_dlosses),
                     ("rater_forward_backward", rater_forward_backward)]:
        for _ in range(3):
            fn()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


# ---------------------------------------------------------------- parent

PINNED_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc: every block >= 64 KiB is its own mmap


def child_args(method: str, T: int, pop: int, optimizer: str, lr: float, steps: int, args) -> list[str]:
    chunk = ["--mixflow-chunk", str(args.mixflow_chunk)] if args.mixflow_chunk else []
    return ["--one", "--method", method, "--T", str(T), "--pop", str(pop), "--optimizer", optimizer,
            "--lr", str(lr), "--steps", str(steps), "--batch", str(args.batch), "--max-train", str(args.max_train),
            "--data-dir", args.data_dir, "--mixflow-mode", args.mixflow_mode] + chunk


def add_pinned(r: dict, pinned: dict) -> None:
    r.update(pinned_peak_rss_mb=pinned["peak_rss_mb"], pinned_extra_mb=pinned["extra_mb"],
             pinned_warm_extra_mb=pinned["warm_extra_mb"],
             pinned_baseline_rss_mb=pinned["baseline_rss_mb"], pinned_sec_per_step=pinned["sec_per_step"])


def main_parent(args) -> int:
    t_values = QUICK_T_VALUES if args.quick else T_VALUES
    info = machine_info()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}, torch {info['torch']}, "
          f"load {info['loadavg_start'][0]:.2f}", flush=True)

    prim = spawn(["--primitive", "--batch", str(args.batch), "--reps", "5" if args.quick else "10"])
    fb, db, jv = prim["forward_backward"], prim["double_backward"], prim["jvp_of_grad"]
    print(f"primitives (one inner step, CNN {prim['inner_params']} params, batch {args.batch}): "
          f"forward+backward {fb * 1e3:.1f} ms, double-backward (HVP) {db * 1e3:.1f} ms, "
          f"JVP of grad {jv * 1e3:.1f} ms, reverse-over-reverse (H v, d_i) {prim['rr_hvp_and_dlosses'] * 1e3:.1f} ms, "
          f"rater fwd+bwd {prim['rater_forward_backward'] * 1e3:.1f} ms", flush=True)

    sweep: list[dict] = []
    for T in t_values:
        for method in METHODS:
            steps = 3 if T >= 16 else 5
            r = spawn(child_args(method, T, 1, "adam", 1e-3, steps, args))
            if args.pinned:
                add_pinned(r, spawn(child_args(method, T, 1, "adam", 1e-3, 1, args), env_extra=PINNED_ENV))
            # Floor (an estimate): each inner step costs a forward+backward with a graph plus one
            # backward through it (= the double-backward primitive); plus the outer loss's
            # forward+backward and one rater forward+backward.
            r["floor_sec"] = T * db + fb + prim["rater_forward_backward"]
            sweep.append(r)
            print(f"  T={T:<3} {method:<9} {r['sec_per_step']:.3f} s/step  peak {r['peak_rss_mb']:.0f} MB  "
                  f"extra {r['extra_mb']:.0f} MB  pinned-allocator extra {r.get('pinned_extra_mb', math.nan):.0f} MB",
                  flush=True)

    reference: list[dict] = []
    ref_steps = 3 if args.quick else 5
    for method in METHODS:
        r = spawn(child_args(method, 2, 8, "sgd", 0.01, ref_steps, args))
        if args.pinned:
            add_pinned(r, spawn(child_args(method, 2, 8, "sgd", 0.01, 1, args), env_extra=PINNED_ENV))
        reference.append(r)
        print(f"  reference {method:<9} {r['sec_per_step']:.3f} s/step  peak {r['peak_rss_mb']:.0f} MB", flush=True)

    get = {(r["method"], r["T"]): r for r in sweep}
    per_t = []
    for T in t_values:
        b, m = get[("backprop", T)], get[("mixflow", T)]
        per_t.append({"T": T, "time_ratio_mixflow_over_backprop": ratio(m["sec_per_step"], b["sec_per_step"]),
                      "min_time_ratio_mixflow_over_backprop": ratio(m["sec_min"], b["sec_min"]),
                      "cpu_time_ratio_mixflow_over_backprop": ratio(m["cpu_sec_per_step"], b["cpu_sec_per_step"]),
                      "extra_ratio_mixflow_over_backprop": ratio(m["extra_mb"], b["extra_mb"]),
                      "warm_extra_ratio_mixflow_over_backprop": ratio(m["warm_extra_mb"], b["warm_extra_mb"]),
                      "pinned_extra_ratio_mixflow_over_backprop": ratio(m.get("pinned_extra_mb", math.nan),
                                                                        b.get("pinned_extra_mb", math.nan)),
                      "backprop_over_floor": ratio(b["sec_per_step"], b["floor_sec"]),
                      "mixflow_over_floor": ratio(m["sec_per_step"], m["floor_sec"])})
    t_lo, t_hi = min(t_values), max(t_values)
    t_mid = 16 if 16 in t_values else t_hi
    mf_lo, mf_hi = get[("mixflow", t_lo)], get[("mixflow", t_hi)]
    targets = {
        f"mixflow_peak_T{t_hi}_over_T{t_lo}": ratio(mf_hi["peak_rss_mb"], mf_lo["peak_rss_mb"]),
        f"mixflow_extra_T{t_hi}_over_T{t_lo}": ratio(mf_hi["extra_mb"], mf_lo["extra_mb"]),
        f"mixflow_extra_over_backprop_extra_T{t_mid}": ratio(get[("mixflow", t_mid)]["extra_mb"],
                                                              get[("backprop", t_mid)]["extra_mb"]),
        "max_time_ratio_mixflow_over_backprop": max(p["time_ratio_mixflow_over_backprop"] for p in per_t),
        "max_cpu_time_ratio_mixflow_over_backprop": max(p["cpu_time_ratio_mixflow_over_backprop"] for p in per_t),
        f"pinned_mixflow_peak_T{t_hi}_over_T{t_lo}": ratio(mf_hi.get("pinned_peak_rss_mb", math.nan),
                                                           mf_lo.get("pinned_peak_rss_mb", math.nan)),
        f"pinned_mixflow_extra_over_backprop_extra_T{t_mid}": ratio(
            get[("mixflow", t_mid)].get("pinned_extra_mb", math.nan),
            get[("backprop", t_mid)].get("pinned_extra_mb", math.nan)),
    }
    # Memory per extra inner step (slope of extra memory in T, from T=2 on): the T-independent part
    # (the transient of one step's second-order product, the outer batch, allocator slack) cancels.
    # From T=2, not T=1: at T=1 mixflow's backward needs no Hessian-vector product (theta_0 is a
    # constant), so its transient is smaller there.
    t_2 = min(t for t in t_values if t >= 2)
    for tag, key in (("", "extra_mb"), ("pinned_", "pinned_extra_mb")):
        slopes = {m: ratio(get[(m, t_hi)].get(key, math.nan) - get[(m, t_2)].get(key, math.nan), t_hi - t_2)
                  for m in METHODS}
        targets[f"{tag}backprop_mb_per_inner_step"] = slopes["backprop"]
        targets[f"{tag}mixflow_mb_per_inner_step"] = slopes["mixflow"]
        targets[f"{tag}slope_ratio_mixflow_over_backprop"] = ratio(slopes["mixflow"], slopes["backprop"])
    for tag in ("", "pinned_"):
        targets[f"{tag}warm_mixflow_extra_over_backprop_extra_T{t_mid}"] = ratio(
            get[("mixflow", t_mid)].get(f"{tag}warm_extra_mb", math.nan),
            get[("backprop", t_mid)].get(f"{tag}warm_extra_mb", math.nan))
    targets["met"] = {
        "mixflow_peak_flat (<= 1.5)": targets[f"mixflow_peak_T{t_hi}_over_T{t_lo}"] <= 1.5,
        "mixflow_extra_vs_backprop (<= 0.1)": targets[f"mixflow_extra_over_backprop_extra_T{t_mid}"] <= 0.1,
        "mixflow_time (<= 1.2x backprop, every T)": targets["max_time_ratio_mixflow_over_backprop"] <= 1.2,
        **{f"reference_{r['method']}_time (<= 0.37 s)": r["sec_per_step"] <= 0.37 for r in reference},
        **{f"reference_{r['method']}_peak (<= 512 MB)": r["peak_rss_mb"] <= 512 for r in reference},
    }
    info["loadavg_end"] = os.getloadavg()

    print()
    print(f"{'T':>3} | {'backprop s':>10} {'peak MB':>8} {'extra MB':>8} | {'mixflow s':>9} {'peak MB':>8} "
          f"{'extra MB':>8} | {'t mf/bp':>7} {'min':>5} {'cpu':>5} {'extra mf/bp':>11} | {'floor s':>7} {'bp/floor':>8} {'mf/floor':>8} | "
          f"{'pinned extra bp/mf MB':>21} {'ratio':>5}")
    for T, p in zip(t_values, per_t):
        b, m = get[("backprop", T)], get[("mixflow", T)]
        print(f"{T:>3} | {b['sec_per_step']:>10.3f} {b['peak_rss_mb']:>8.0f} {b['extra_mb']:>8.0f} | "
              f"{m['sec_per_step']:>9.3f} {m['peak_rss_mb']:>8.0f} {m['extra_mb']:>8.0f} | "
              f"{p['time_ratio_mixflow_over_backprop']:>7.2f} {p['min_time_ratio_mixflow_over_backprop']:>5.2f} "
              f"{p['cpu_time_ratio_mixflow_over_backprop']:>5.2f} {p['extra_ratio_mixflow_over_backprop']:>11.3f} | "
              f"{b['floor_sec']:>7.3f} {p['backprop_over_floor']:>8.2f} {p['mixflow_over_floor']:>8.2f} | "
              f"{b.get('pinned_extra_mb', math.nan):>10.0f} {m.get('pinned_extra_mb', math.nan):>10.0f} "
              f"{p['pinned_extra_ratio_mixflow_over_backprop']:>5.3f}")
    print("warm extra MB (peak over the RSS after one outer step: torch's lazy imports and caches excluded), "
          "backprop / mixflow: " + ", ".join(f"T={T} {get[('backprop', T)]['warm_extra_mb']:.0f} / "
                                             f"{get[('mixflow', T)]['warm_extra_mb']:.0f}" for T in t_values))
    print("t mf/bp: median wall time ratio; min: ratio of the fastest steps; cpu: ratio of process CPU time")
    print("floor = T*double-backward + forward+backward + rater forward+backward, from the primitives above")
    print(f"pinned: memory re-measured (1 warm-up + 1 step) with {PINNED_ENV}, which stops glibc from keeping "
          "freed tensor memory in its heap; it shows what the engine itself holds")
    print("reference (T=2, population 8, batch 128, inner SGD lr 0.01 momentum 0.9):")
    for r in reference:
        print(f"  {r['method']:<9} {r['sec_per_step']:.3f} s/step (target <= 0.37)  peak {r['peak_rss_mb']:.0f} MB "
              f"(target <= 512)  extra {r['extra_mb']:.0f} MB")
    for key, value in targets.items():
        if key != "met":
            print(f"  {key}: {value:.3f}")
    for key, ok in targets["met"].items():
        print(f"  target {key}: {'met' if ok else 'MISSED'}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    flags, variant = ["--quick"] if args.quick else [], ""  # a mixflow mode or chunk gets a file of its own
    if args.mixflow_mode != "forward_over_reverse":
        flags, variant = flags + ["--mixflow-mode", args.mixflow_mode], f".{args.mixflow_mode}"
    if args.mixflow_chunk:
        flags, variant = flags + ["--mixflow-chunk", str(args.mixflow_chunk)], variant + f".chunk{args.mixflow_chunk}"
    path = RESULTS / (f"meta_step{variant}.quick.json" if args.quick else f"meta_step{variant}.json")
    path.write_text(json.dumps({"machine": info, "command": " ".join(["python -m benchmarks.meta_step", *flags]), "primitives": prim, "sweep": sweep,
                                "per_T": per_t, "reference": reference, "targets": targets}, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.meta_step", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="T in {1,2} only (smoke run)")
    p.add_argument("--no-pinned", dest="pinned", action="store_false",
                   help="skip the second memory pass with glibc's mmap threshold pinned at 64 KiB")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child: one configuration
    p.add_argument("--primitive", action="store_true", help=argparse.SUPPRESS)  # child: primitives
    p.add_argument("--method", default="mixflow", choices=METHODS)
    p.add_argument("--T", type=int, default=2)
    p.add_argument("--mixflow-chunk", type=int, default=None,
                   help="meta.mixflow_chunk: examples per chunk of mixflow's backward (default: the whole batch)")
    p.add_argument("--mixflow-mode", default="forward_over_reverse",
                   choices=("forward_over_reverse", "reverse_over_reverse"),
                   help="meta.mixflow_mode: the JVP of the paper, or a double backward (default: %(default)s)")
    p.add_argument("--pop", type=int, default=1)
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--steps", type=int, default=5, help="timed outer steps (after one warm-up)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--max-train", type=int, default=20000)
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(RESULT_TAG + json.dumps(run_one(args)), flush=True)
        return 0
    if args.primitive:
        print(RESULT_TAG + json.dumps(run_primitive(args)), flush=True)
        return 0
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
