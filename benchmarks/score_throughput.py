"""Rows/s of `jobs.score` (Ray Data, a pool of rater actors) against a plain single-process loop
(pyarrow batches + torch, the same rater prepared the same way by `for_scoring`, the same Parquet,
the same `score_table`), and the peak memory (PSS of every process: the driver, Ray's daemons and
workers) of the Ray job as rows grow.

    python -m benchmarks.score_throughput [--rows 100000 1000000] [--memory-rows 1000000 4000000]
                                          [--repeats 3] [--job-args "--actors 1"] [--quick]

Data: synthetic MNIST-shaped rows (28x28 uint8 images, ~20% of pixels lit, labels, ids) in shards of
50,000 rows, written once under /tmp/drray-score-bench/ and reused; the data sets of each size
hard-link the same shards. Rater: the MNIST `cnn` rater with random weights (seed 0) in the
checkpoint format. Both ways read the Parquet and write the scored Parquet (the plain loop with
torch's default threads, batches of 16384 rows as the job's blocks, one ParquetWriter); at the
smallest size the plain loop also runs without writing, for reference. Ray's rows/s is the job's
own figure: its pipeline from read to the last file written, actor start-up included, on a local
Ray the job starts (that start is in the command's wall time only). Runs alternate between the
ways (median of --repeats at the smallest size, one run above), so a shared machine's drifts hit
both. CPU-s: the CPU time of every process of each way (for Ray, of the whole command, Ray's
start included). Steady state: per way, seconds = fixed + rows / rate, fitted through the smallest
and largest sizes. Memory: the Ray job's peak PSS, sampled every 0.2 s; a size the
throughput runs covered is not run again. Writes benchmarks/results/score_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from actors.score_pipeline import DEFAULT_BATCH_SIZE  # noqa: E402
from drray.curation.scoring import for_scoring, score_table  # noqa: E402
from drray.models import build_rater  # noqa: E402
from drray.train.checkpoint import load_rater, save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DRRAY_BENCH_CACHE", "/tmp/drray-score-bench"))
SHARD_ROWS = 50_000
HEIGHT = WIDTH = 28
BATCH = DEFAULT_BATCH_SIZE  # rows per batch of the plain loop, as the job's default block


# ---------------------------------------------------------------- data and rater

def _shard(index: int) -> Path:
    path = CACHE / "shards" / f"part-{index:05d}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(index)
    n = SHARD_ROWS
    lit = rng.random((n, HEIGHT * WIDTH)) < 0.2
    images = np.where(lit, rng.integers(1, 256, (n, HEIGHT * WIDTH)), 0).astype(np.uint8)
    table = pa.table({
        "id": pa.array(index * SHARD_ROWS + np.arange(n), pa.int64()),
        "image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1), pa.uint8()), HEIGHT * WIDTH),
        "shape": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([HEIGHT, WIDTH], n), pa.int32()), 2),
        "label": pa.array(rng.integers(0, 10, n), pa.int64()),
    })  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    pq.write_table(table, partial, row_group_size=10_000)
    os.replace(partial, path)
    return path


def dataset(rows: int) -> Path:
    """A folder of rows // SHARD_ROWS shards (hard links to the shared cache)."""
    if rows % SHARD_ROWS:
        raise SystemExit(f"--rows {rows}: use a multiple of {SHARD_ROWS}")
    folder = CACHE / f"rows-{rows}"
    shards = [_shard(i) for i in range(rows // SHARD_ROWS)]
    if not folder.is_dir():
        partial = CACHE / f".rows-{rows}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for shard in shards:
            os.link(shard, partial / shard.name)
        os.replace(partial, folder)
    return folder


def rater_run() -> Path:
    run = CACHE / "rater"
    if not (run / "checkpoint" / "rater.pt").is_file():
        torch.manual_seed(0)
        rater = build_rater("cnn", (HEIGHT, WIDTH), 10)
        save_checkpoint(run, {"step": 0}, {"rater": rater.state_dict(), "arch": "cnn",
                                           "row_shape": [HEIGHT, WIDTH], "num_classes": 10}, {})
    return run


# ---------------------------------------------------------------- memory

TICK = os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
        except (OSError, IndexError, ValueError):
            continue
    return table


def descendants(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    """root and every process below it (Ray's gcs, raylet and workers descend from the driver)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


def pss_bytes(pids) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


class TreeMonitor:
    """Samples a process tree every `interval` s in a background thread: the peak of its summed
    PSS (shared pages split among the processes sharing them, so Ray's object store counts once)
    and the CPU seconds its processes used (each process's last sample; the last 0.2 s of a
    process that exits are missed)."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval, self.peak = root, interval, 0
        self._base = {pid: cpu for pid, (_, cpu) in process_table().items()}
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        table = process_table()
        pids = descendants(self.root, table)
        for pid in pids:
            if pid in table:
                self._cpu[pid] = table[pid][1] - self._base.get(pid, 0.0)
        self.peak = max(self.peak, pss_bytes(pids))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.root == os.getpid():
            self._sample()


# ---------------------------------------------------------------- the two ways

def plain_loop(folder: Path, out: Path | None) -> dict:
    """Read Parquet batches, score them with score_table, write Parquet: one process, no Ray."""
    rater, info = load_rater(rater_run())
    rater = for_scoring(rater, torch.device("cpu"))  # as the job's actors prepare it
    shape, classes = tuple(info["row_shape"]), info["num_classes"]
    rows, writer = 0, None
    start = time.perf_counter()
    with TreeMonitor(os.getpid()) as monitor:
        for batch in pads.dataset(str(folder), format="parquet").to_batches(batch_size=BATCH):
            scored = score_table(rater, pa.Table.from_batches([batch]), shape, classes)
            if out is not None:
                if writer is None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    writer = pq.ParquetWriter(str(out), scored.schema)
                writer.write_table(scored)
            rows += scored.num_rows
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_pss_bytes": monitor.peak,
            "cpu_seconds": monitor.cpu_seconds}


FINAL = re.compile(r"scored (\d+) rows in ([\d.]+) s \(([\d,]+) rows/s")


def ray_job(folder: Path, out: Path, extra: list[str]) -> dict:
    """`python -m jobs.score` on a local Ray it starts; rows/s from its final line."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["DRRAY_RAY_TMP"] = str(CACHE / "ray")
    command = [sys.executable, "-m", "jobs.score", "--rater", str(rater_run()), "--input", str(folder),
               "--output", str(out), "--overwrite", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMonitor(process.pid) as monitor:
        stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    match = FINAL.search(stdout)
    if process.returncode != 0 or match is None:
        raise SystemExit(f"jobs.score failed ({process.returncode}):\n{stderr[-3000:]}\n{stdout[-2000:]}")
    rows, seconds = int(match.group(1)), float(match.group(2))
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "wall_s": wall,
            "peak_pss_bytes": monitor.peak, "cpu_seconds": monitor.cpu_seconds,
            "line": stdout.strip().splitlines()[-1]}


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def fixed_and_marginal(throughput: list[dict]) -> dict:
    """Per way, from the smallest and largest sizes: seconds = fixed + rows / marginal rate.
    The fixed part is start-up (for Ray: reading the footers, starting the actor processes, which
    import torch) plus the tail after the last block; the marginal rate is the steady state."""
    if len(throughput) < 2:
        return {}
    small, large = throughput[0], throughput[-1]
    fit = {}
    for way in ("plain", "ray"):
        rate = (large["rows"] - small["rows"]) / (large[f"{way}_s"] - small[f"{way}_s"])
        fit[way] = {"marginal_rows_per_s": rate, "fixed_s": small[f"{way}_s"] - small["rows"] / rate}
    fit["marginal_ratio"] = fit["ray"]["marginal_rows_per_s"] / fit["plain"]["marginal_rows_per_s"]
    return fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--memory-rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--repeats", type=int, default=3, help="runs per way at the smallest size (median); 1 above")
    parser.add_argument("--job-args", default="", help="extra jobs.score arguments, e.g. '--actors 2'")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--quick", action="store_true", help="100k rows once each, no memory runs: a smoke run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "score_throughput.json"))
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats, args.no_memory = [100_000], 1, True
    extra = args.job_args.split()
    free = shutil.disk_usage(CACHE.parent).free
    need = max(args.rows + ([] if args.no_memory else args.memory_rows)) * (HEIGHT * WIDTH + 40) * 2
    if free < need:
        raise SystemExit(f"{CACHE.parent}: {free / 2**30:.1f} GiB free, about {need / 2**30:.1f} GiB needed "
                         "(input shards and scored output); free space or lower --rows/--memory-rows")
    scratch = CACHE / "out"
    rater_run()
    throughput, ray_pss = [], {}
    for rows in args.rows:
        folder = dataset(rows)
        smallest = rows == min(args.rows)
        repeats = args.repeats if smallest else 1
        plain, plain_no_write, ray_runs = [], [], []
        for _ in range(repeats):  # interleaved, so drifts of the shared machine hit both ways alike
            plain.append(plain_loop(folder, scratch / "plain" / "part.parquet"))
            ray_runs.append(ray_job(folder, scratch / "ray", extra))
            if smallest:  # for reference: what writing costs the plain loop
                plain_no_write.append(plain_loop(folder, None))
            shutil.rmtree(scratch, ignore_errors=True)
        row = {
            "rows": rows, "repeats": repeats,
            "plain_rows_per_s": median_of(plain, "rows_per_s"),
            "ray_rows_per_s": median_of(ray_runs, "rows_per_s"),
            "plain_cpu_s": median_of(plain, "cpu_seconds"), "ray_cpu_s": median_of(ray_runs, "cpu_seconds"),
            "plain_s": median_of(plain, "seconds"), "ray_s": median_of(ray_runs, "seconds"),
            "ray_wall_s": median_of(ray_runs, "wall_s"),
            "runs": {"plain": plain, "ray": ray_runs},
        }  # fmt: skip
        if plain_no_write:
            row["plain_no_write_rows_per_s"] = median_of(plain_no_write, "rows_per_s")
            row["runs"]["plain_no_write"] = plain_no_write
        row["ratio"] = row["ray_rows_per_s"] / row["plain_rows_per_s"]
        ray_pss[rows] = max(run["peak_pss_bytes"] for run in ray_runs)
        throughput.append(row)
        print(f"{rows:>9,} rows  plain {row['plain_rows_per_s']:>6,.0f} rows/s ({row['plain_cpu_s']:.0f} CPU-s)  "
              f"ray {row['ray_rows_per_s']:>6,.0f} rows/s ({row['ray_cpu_s']:.0f} CPU-s)  ratio {row['ratio']:.2f}x  "
              f"[ray command wall {row['ray_wall_s']:.0f} s incl. Ray start; median of {repeats}]", flush=True)
    fit = fixed_and_marginal(throughput)
    if fit:
        print(f"steady state (from {throughput[0]['rows']:,} and {throughput[-1]['rows']:,} rows): plain "
              f"{fit['plain']['marginal_rows_per_s']:,.0f} rows/s + {fit['plain']['fixed_s']:.1f} s fixed, ray "
              f"{fit['ray']['marginal_rows_per_s']:,.0f} rows/s + {fit['ray']['fixed_s']:.1f} s fixed "
              f"(marginal ratio {fit['marginal_ratio']:.2f}x)", flush=True)
    memory = []
    if not args.no_memory:
        for rows in args.memory_rows:
            if rows not in ray_pss:  # a size the throughput runs measured already is not run again
                run = ray_job(dataset(rows), scratch / "ray", extra)
                shutil.rmtree(scratch, ignore_errors=True)
                ray_pss[rows] = run["peak_pss_bytes"]
                print(f"{rows:>9,} rows  ray {run['rows_per_s']:>6,.0f} rows/s (memory run)", flush=True)
            memory.append({"rows": rows, "peak_pss_bytes": ray_pss[rows]})
        for entry in memory:
            print(f"{entry['rows']:>9,} rows  ray peak PSS (all processes) {entry['peak_pss_bytes'] / 2**20:,.0f} MiB",
                  flush=True)
        if len(memory) >= 2:
            print(f"memory {memory[-1]['rows']:,} / {memory[0]['rows']:,} rows: "
                  f"{memory[-1]['peak_pss_bytes'] / memory[0]['peak_pss_bytes']:.2f}x", flush=True)
    result = {
        "command": "python -m benchmarks.score_throughput " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(), "torch_threads_plain": torch.get_num_threads(), "batch_size": BATCH,
        "job_args": extra, "throughput": throughput, "steady_state": fit, "memory": memory,
    }  # fmt: skip
    if len(memory) >= 2:
        result["memory_ratio"] = memory[-1]["peak_pss_bytes"] / memory[0]["peak_pss_bytes"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
