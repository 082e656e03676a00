"""The fresh-process measurement harness the meta-step benchmarks share: peak-RSS probes (Linux
/proc), a child run in its own process reporting one RESULT line, the machine's description, and
runs alternated across configurations so a shared machine's drifts hit every one."""
from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA_DIR = "../shared/data/mnist"
RESULT_TAG = "RESULT "


def proc_status_mb(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024.0


def reset_peak_rss() -> float:
    """Free what can be freed, reset VmHWM to the current RSS; returns the RSS (MB)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS counter (Linux >= 4.0)
    return proc_status_mb("VmRSS")


def spawn(extra: list[str], timeout: float = 1800, env_extra: dict | None = None,
          module: str = "benchmarks.meta_step") -> dict:
    """Run `python -m module *extra` (by default a meta_step child) in a fresh process; returns its
    RESULT line."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", module, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {' '.join(extra)} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def machine_info() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        pass
    import torch

    return {"nproc": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "loadavg_start": os.getloadavg()}


def alternate(labelled: list, repeats: int, path: Path, header: dict, keys: tuple) -> tuple[dict, dict]:
    """Run each (label, run) of `labelled` once per repeat, cycling through all of them so a shared
    machine's drifts hit every one; the runs so far are saved to `path` after each. Returns
    (runs per label, median per label of each of `keys`)."""
    runs: dict[str, list[dict]] = {}
    for repeat in range(repeats):
        for label, run in labelled:
            r = run()
            runs.setdefault(label, []).append(r)
            path.write_text(json.dumps({**header, "runs": runs}, indent=2) + "\n")
            print(f"[{repeat + 1}/{repeats}] {label:<42} {r['sec_per_step']:.3f} s/step  CPU {r['cpu_sec_per_step']:.3f} s  "
                  f"peak {r['peak_rss_mb']:.0f} MB  extra {r['extra_mb']:.0f} MB", flush=True)
    return runs, {label: {k: statistics.median(r[k] for r in rs) for k in keys} for label, rs in runs.items()}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
