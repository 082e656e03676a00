"""Outer steps per second: the population on Ray actors against the same population in one
process (same config and seed), N in {2, 4, 8}, plus Ray's per-step orchestration overhead. In
process both ways: learners in threads (run.learner_threads default) and one after another (1).

    python -m benchmarks.ray_population [--sizes 2 4 8] [--steps 5] [--quick]

Writes benchmarks/results/ray_population.json. Overhead is the Ray step time of a population
whose inner work is negligible (digits MLP, batch 8, T=1): broadcast of the rater, the workers'
calls, the parameter server's update and the gather, in milliseconds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ray  # noqa: E402

from actors.population import RayPopulation  # noqa: E402
from drray.config import load_config  # noqa: E402
from drray.data.splits import build_splits  # noqa: E402
from drray.train.loop import make_population  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MNIST = ["data.source=mnist", f"data.dir={ROOT.parent / 'shared' / 'data' / 'mnist'}", "data.max_train=20000",
         "inner.arch=cnn", "rater.arch=cnn", "inner.T=2", "inner.batch_size=128", "meta.method=backprop"]
TINY = ["data.source=digits", "inner.T=1", "inner.batch_size=8", "meta.outer_batch_size=8", "meta.method=backprop"]


def seconds_per_step(population, steps: int) -> list[float]:
    population.step()  # warm-up: actor start, first allocation
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        population.step()
        times.append(time.perf_counter() - start)
    return times


def compare(base: list[str], size: int, steps: int) -> dict:
    """In process two ways (learners in threads of one torch thread, the default; one after
    another on torch's threads, run.learner_threads=1), then on Ray."""
    cfg = load_config(None, base + [f"population.size={size}", "population.lifetime=1000"])
    sequential_cfg = load_config(None, base + [f"population.size={size}", "population.lifetime=1000",
                                               "run.learner_threads=1"])
    splits = build_splits(cfg.data, cfg.run.seed)
    local = statistics.median(seconds_per_step(make_population(cfg, splits), steps))
    sequential = statistics.median(seconds_per_step(make_population(sequential_cfg, splits), steps))
    remote_population = RayPopulation(cfg, splits)
    remote = statistics.median(seconds_per_step(remote_population, steps))
    ray.kill(remote_population.scheduler)
    return {"size": size, "in_process_s": local, "in_process_sequential_s": sequential, "ray_s": remote,
            "ray_speedup": local / remote, "ray_speedup_over_sequential": sequential / remote}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="N=2, 2 steps: a smoke run")
    args = parser.parse_args()
    sizes, steps = ([2], 2) if args.quick else (args.sizes, args.steps)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="drray-bench-"))
    rows = []
    for size in sizes:
        row = {"workload": "mnist-cnn", **compare(MNIST, size, steps)}
        rows.append(row)
        print(f"mnist cnn  N={size}: in-process {row['in_process_s']:.3f} s/step (one after another: "
              f"{row['in_process_sequential_s']:.3f}), ray {row['ray_s']:.3f} s/step, ray speed-up "
              f"{row['ray_speedup']:.2f}x ({row['ray_speedup_over_sequential']:.2f}x over one after another)", flush=True)
    overhead = compare(TINY, 4, max(steps, 20))
    print(f"orchestration (digits mlp, batch 8, T=1, N=4): ray {1000 * overhead['ray_s']:.1f} ms/step, "
          f"in-process {1000 * overhead['in_process_s']:.1f} ms/step", flush=True)
    ray.shutdown()
    out = ROOT / "benchmarks" / "results" / "ray_population.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m benchmarks.ray_population", "cpus": os.cpu_count(),
                               "steps": steps, "rows": rows, "overhead": overhead}, indent=1))


if __name__ == "__main__":
    main()
