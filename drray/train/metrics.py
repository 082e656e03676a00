"""Metrics: AUROC of rater scores, metrics.jsonl + TensorBoard, and the progress line."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from drray.io import atomic_write_bytes


def corruption_auroc(scores: np.ndarray, is_corrupted: np.ndarray) -> float:
    """P(score of a clean example > score of a corrupted one), ties counting half: 1.0 means the
    rater puts every corrupted example below every clean one. NaN without both kinds, or with a
    NaN score (a diverged rater: NaN would otherwise rank as the highest score)."""
    scores = np.asarray(scores, dtype=np.float64)
    corrupted = np.asarray(is_corrupted, dtype=bool)
    n_bad, n_clean = corrupted.sum(), (~corrupted).sum()
    if n_bad == 0 or n_clean == 0 or np.isnan(scores).any():
        return float("nan")
    ranks = average_ranks(scores)  # Mann-Whitney U
    u_clean = ranks[~corrupted].sum() - n_clean * (n_clean + 1) / 2
    return float(u_clean / (n_clean * n_bad))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def _step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a blank or unreadable one."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """OUT/metrics.jsonl (one line per outer step; step 0's also names the held-out split) and
    TensorBoard events (the numbers of each line) in OUT/tb/.
    On resume from step S, lines for steps >= S are dropped: those steps run again."""

    def __init__(self, out: Path, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(out) / "metrics.jsonl"
        self._truncate(resume_step)
        self.file = self.path.open("a")
        self.tb = SummaryWriter(str(Path(out) / "tb"), purge_step=resume_step or None)

    def _truncate(self, resume_step: int) -> None:
        """Keeps the records of steps before resume_step; a line cut short (the process died while
        writing it) is after the checkpoint, so it goes too. Rewritten atomically."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if _step(line) < resume_step]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in keep).encode())

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        self.tb.close()


class Progress:
    """A line every `every` steps: step, loss, AUROC, steps/s and ETA. The rate leaves out the
    first step (Ray actors starting, torch's lazy imports and caches), once there are later ones."""

    def __init__(self, total: int, start: int, every: int, stream=None):
        self.total, self.start, self.every, self.stream = total, start, every, stream or sys.stdout
        self.t0 = time.perf_counter()
        self.after_first: float | None = None  # when the first step ended

    def update(self, step: int, record: dict) -> None:
        done = step + 1
        now = time.perf_counter()
        if self.after_first is None:
            self.after_first = now
        if done % self.every and done != self.total:
            return
        if done - self.start > 1:
            steps, elapsed = done - self.start - 1, now - self.after_first
        else:
            steps, elapsed = done - self.start, now - self.t0
        rate = steps / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        auroc = record.get("auroc")
        auroc_text = f"  auroc {auroc:.3f}" if auroc is not None and math.isfinite(auroc) else ""
        print(f"step {done:>6}/{self.total}  outer_loss {record['outer_loss']:.4f}{auroc_text}"
              f"  {rate:6.1f} steps/s  ETA {format_seconds(eta)}", file=self.stream, flush=True)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
