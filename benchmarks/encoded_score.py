"""Rows/s of scoring encoded images (PNG bytes in Parquet, as Hugging Face's struct<bytes, path>)
against the same images stored raw (list<uint8> and shape), with the same rater; and where the time
of the encoded batches goes.

    python -m benchmarks.encoded_score [--rows 50000] [--repeats 5] [--job] [--quick]

Data: --rows synthetic 32x32 RGB images (bilinear-smooth colour fields plus noise: PNG files of
~2.8 KB, about CIFAR-10's), written once under /tmp/drray-encoded-bench/ in shards of 10,000 rows:
`encoded/` (image struct<bytes, path>, id, label) and `raw/` (drray's raw schema). Rater: the
`auto` rater of 32x32x3 rows (cnn_gap, class-conditioned), random weights (seed 0).
Ways, alternated run by run (median of --repeats):
  plain  score_table in this process over Parquet batches of 16,384 rows (the job's block size),
         the rater prepared by for_scoring, torch's default threads; nothing is written.
  job    (--job) python -m jobs.score on a local Ray it starts, its defaults; rows/s from its
         final line (from the first read to the last file written).
Profile (one 16,384-row encoded batch, median of 3): seconds in Arrow -> Python bytes, PNG decode
(Image.open + load), conversion to ndarray, gathering into one array, and the rater's forward.
Writes benchmarks/results/encoded_score.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from actors.score_pipeline import DEFAULT_BATCH_SIZE  # noqa: E402
from benchmarks.harness import RESULTS, machine_info  # noqa: E402
from drray.curation.scoring import for_scoring, score_table  # noqa: E402
from drray.data.images import _as_rows, _gathered, encoded_image_bytes  # noqa: E402
from drray.data.modality import ImageModality  # noqa: E402
from drray.models import build_rater, choose_arch  # noqa: E402
from drray.train.checkpoint import load_rater, save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DRRAY_BENCH_CACHE", "/tmp/drray-encoded-bench"))
SHARD_ROWS = 10_000
ROW_SHAPE = (32, 32, 3)


# ---------------------------------------------------------------- data and rater

def synthetic_images(n: int, seed: int) -> np.ndarray:
    """uint8 [n, 32, 32, 3]: random 8x8 colour fields enlarged bilinearly, plus noise (std 8)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    smooth = np.stack([np.asarray(Image.fromarray(c).resize((32, 32), Image.Resampling.BILINEAR)) for c in coarse])
    return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def write_shard(index: int) -> None:
    encoded, raw = CACHE / "encoded" / f"part-{index:05d}.parquet", CACHE / "raw" / f"part-{index:05d}.parquet"
    if encoded.exists() and raw.exists():
        return
    n = SHARD_ROWS
    images = synthetic_images(n, index)
    ids = pa.array(index * n + np.arange(n), pa.int64())
    labels = pa.array(np.random.default_rng(index).integers(0, 10, n), pa.int64())
    struct = pa.StructArray.from_arrays([pa.array([png(i) for i in images], pa.binary()), pa.nulls(n, pa.string())],
                                        names=["bytes", "path"])
    pixels = int(np.prod(ROW_SHAPE))
    for path, table in ((encoded, pa.table({"id": ids, "image": struct, "label": labels})),
                        (raw, pa.table({"id": ids, "image": pa.FixedSizeListArray.from_arrays(
                            pa.array(images.reshape(-1), pa.uint8()), pixels),
                            "shape": pa.FixedSizeListArray.from_arrays(pa.array(np.tile(ROW_SHAPE, n), pa.int32()), 3),
                            "label": labels}))):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(path.with_suffix(".partial")))
        os.replace(path.with_suffix(".partial"), path)


def datasets(rows: int) -> dict[str, list[str]]:
    """form -> the shard files of the first `rows` rows."""
    if rows % SHARD_ROWS:
        raise SystemExit(f"--rows {rows}: use a multiple of {SHARD_ROWS}")
    for index in range(rows // SHARD_ROWS):
        write_shard(index)
    return {form: [str(CACHE / form / f"part-{i:05d}.parquet") for i in range(rows // SHARD_ROWS)]
            for form in ("encoded", "raw")}


def rater_run() -> Path:
    run = CACHE / "rater"
    if not (run / "checkpoint" / "rater.pt").is_file():
        torch.manual_seed(0)
        arch = choose_arch("auto", ROW_SHAPE)
        rater = build_rater(arch, ROW_SHAPE, 10)
        save_checkpoint(run, {"step": 0}, {"rater": rater.state_dict(), "arch": arch, "row_shape": list(ROW_SHAPE),
                                           "num_classes": 10}, {})
    return run


# ---------------------------------------------------------------- the ways

def plain(files: list[str], rater) -> dict:
    rows, start = 0, time.perf_counter()
    for batch in pads.dataset(files, format="parquet").to_batches(batch_size=DEFAULT_BATCH_SIZE):
        rows += score_table(rater, pa.Table.from_batches([batch]), ROW_SHAPE, 10).num_rows
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


FINAL = re.compile(r"scored (\d+) rows in ([\d.]+) s \(([\d,]+) rows/s")


def job(files: list[str], out: Path) -> dict:
    folder = Path(files[0]).parent
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "jobs.score", "--rater", str(rater_run()), "--input", str(folder),
               "--output", str(out), "--overwrite"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    match = FINAL.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"jobs.score failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows, seconds = int(match.group(1)), float(match.group(2))
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def profile(files: list[str], rater) -> dict:
    """Seconds of each stage of scoring one encoded batch (median of 3)."""
    from PIL import Image

    table = pads.dataset(files[:2], format="parquet").head(DEFAULT_BATCH_SIZE)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        data = [d for d, _ in encoded_image_bytes(table.column("image"))]
        t1 = time.perf_counter()
        opened = []
        for d in data:
            image = Image.open(io.BytesIO(d))
            image.load()
            opened.append(image)
        t2 = time.perf_counter()
        arrays = [_as_rows(image) for image in opened]
        t3 = time.perf_counter()
        decoded = _gathered(arrays, {}, ROW_SHAPE, to_one_mode=False)
        t4 = time.perf_counter()
        labels = torch.from_numpy(table.column("label").to_numpy())
        with torch.no_grad():
            for start in range(0, len(labels), 512):
                rater(ImageModality.inputs(torch.from_numpy(decoded.images[start:start + 512])), labels[start:start + 512])
        t5 = time.perf_counter()
        runs.append({"arrow_to_bytes": t1 - t0, "png_decode": t2 - t1, "to_ndarray": t3 - t2, "gather": t4 - t3,
                     "rater": t5 - t4})
    stages = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {"rows": table.num_rows, "seconds": stages,
            "us_per_row": {key: 1e6 * value / table.num_rows for key, value in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--job", action="store_true", help="also time python -m jobs.score (Ray) on both forms")
    parser.add_argument("--quick", action="store_true", help="10,000 rows, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = SHARD_ROWS, 2
    files = datasets(args.rows)
    rater, _ = load_rater(rater_run())
    rater = for_scoring(rater, torch.device("cpu"))
    sizes = {form: sum(os.path.getsize(f) for f in paths) for form, paths in files.items()}
    runs: dict[str, list[dict]] = {f"{way}_{form}": [] for way in ("plain", "job") for form in files}
    for _ in range(args.repeats):
        for form in ("encoded", "raw"):  # alternated, so a shared machine's drifts hit both
            runs[f"plain_{form}"].append(plain(files[form], rater))
            print(f"plain {form}: {runs[f'plain_{form}'][-1]['rows_per_s']:,.0f} rows/s", flush=True)
    if args.job:
        for _ in range(args.repeats):
            for form in ("encoded", "raw"):
                runs[f"job_{form}"].append(job(files[form], CACHE / f"scored-{form}"))
                print(f"job {form}: {runs[f'job_{form}'][-1]['rows_per_s']:,.0f} rows/s", flush=True)
    medians = {key: statistics.median(r["rows_per_s"] for r in value) for key, value in runs.items() if value}
    stages = profile(files["encoded"], rater)
    result = {"machine": machine_info(), "rows": args.rows, "repeats": args.repeats, "row_shape": list(ROW_SHAPE),
              "arch": choose_arch("auto", ROW_SHAPE), "torch_threads": torch.get_num_threads(),
              "parquet_bytes": sizes, "median_rows_per_s": medians, "runs": runs, "profile": stages}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "encoded_score.quick.json" if args.quick else "encoded_score.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    for key, value in medians.items():
        print(f"median {key}: {value:,.0f} rows/s")
    for way in ("plain", "job"):
        if f"{way}_encoded" in medians:
            print(f"{way}: encoded / raw = {medians[f'{way}_encoded'] / medians[f'{way}_raw']:.2f}")
    print("encoded batch, us per row: " + ", ".join(f"{k} {v:.1f}" for k, v in stages["us_per_row"].items()))
    print(f"Parquet bytes: encoded {sizes['encoded']:,}, raw {sizes['raw']:,}")


if __name__ == "__main__":
    main()
