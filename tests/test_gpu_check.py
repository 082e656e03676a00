"""benchmarks.gpu_check stays runnable: its --small run on the CPU writes every section with
computed numbers (the device check itself runs on a GPU machine; see the script's docstring)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("population", "gradients", "t_sweep", "scoring")


def run_check(out: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args, "--out", str(out)], check=False,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_small_run_on_cpu_writes_every_section_with_computed_numbers(tmp_path):
    out = tmp_path / "x.json"
    proc = run_check(out, "--device", "cpu", "--small")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["ray_imported"] is False  # torch and drray alone
    for name in SECTIONS:
        assert name in report["sections"], name
        assert "error" not in report["sections"][name], report["sections"][name].get("traceback")
        assert not report["sections"][name].get("truncated"), name

    population = report["sections"]["population"]
    assert population["learner_device"] == "cpu" and population["backend"] == "local"
    assert population["steps_done"] == population["steps"] == 4 and population["learners"] == 2
    assert population["data"]["source"] == "synthetic" and population["data"]["corrupted_train_fraction"] > 0
    assert finite(population["auroc"]) and 0.0 <= population["auroc"] <= 1.0
    assert population["auroc"] == population["auroc_curve"][-1]["auroc"]
    assert population["sec_per_step"] > 0

    gradients = report["sections"]["gradients"]
    checks = gradients["checks"]
    # both mixflow modes, on the CNN (two inner optimizers) and on a transformer
    assert {(c["model"], c["optimizer"], c["mixflow_mode"]) for c in checks} == {
        (model, opt, mode) for model, opt in (("mnist cnn", "adam"), ("mnist cnn", "sgd"), ("transformer_tiny", "adam"))
        for mode in ("forward_over_reverse", "reverse_over_reverse")}
    for c in checks:
        assert c["tolerance"] == {"image": 1e-5, "text": 1e-4}[c["kind"]]  # the CPU tests' tolerances
        assert finite(c["grad_rel_error"]) and 0.0 <= c["grad_rel_error"] <= c["tolerance"], c
        assert c["backprop_grad_norm"] > 0, c  # a zero gradient would agree trivially
        assert c["agree"] is True
    assert gradients["max_grad_rel_error"] == max(c["grad_rel_error"] for c in checks)
    assert gradients["all_agree"] is True

    sweep = report["sections"]["t_sweep"]
    assert sweep["T_values"] == [1, 2]
    rows = {(r["T"], r["method"]): r for r in sweep["rows"]}
    assert set(rows) == {(T, m) for T in (1, 2) for m in ("backprop", "mixflow")}
    for row in rows.values():
        assert finite(row["sec_per_step"]) and row["sec_per_step"] > 0, row
        assert len(row["sec_all"]) == sweep["repeats"] and min(row["sec_all"]) == row["sec_min"] > 0
        assert row["peak_mb"] is None  # no allocator statistics on a CPU
        assert finite(row["outer_loss"])
    for T in (1, 2):  # the same step by both methods: the same gradient
        assert 0.0 <= rows[(T, "mixflow")]["grad_rel_error_vs_backprop"] <= 1e-4
    assert [p["T"] for p in sweep["per_T"]] == [1, 2] and all(p["time_mixflow_over_backprop"] > 0 for p in sweep["per_T"])

    scoring = report["sections"]["scoring"]
    assert scoring["cpu_rows_per_s"] > 0 and scoring["device_rows_per_s"] > 0
    assert all(r["rows_per_s"] > 0 and r["rows"] > 0 for r in scoring["runs"])

    # the closing table: one line per section, also in the JSON
    table = report["table"]
    assert [line.split()[0] for line in table] == list(SECTIONS)
    assert all(line in proc.stdout for line in table)


def test_no_cuda_device_is_an_error_in_the_json(tmp_path):
    out = tmp_path / "x.json"
    proc = run_check(out, "--device", "cuda", "--small", env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    assert "sees no CUDA device" in report["error"] and report["sections"] == {}


def test_a_failed_section_and_the_time_guards_still_leave_a_whole_report(tmp_path):
    """population fails (an invalid override), the others run, cut short by a zero time budget:
    each runs its first configuration only, says so, and the JSON and table cover every section."""
    out = tmp_path / "x.json"
    proc = run_check(out, "--device", "cpu", "--small", "--budget-s", "0", "--set", "population.size=0")
    assert proc.returncode == 1
    report = json.loads(out.read_text())
    assert report["ok"] is False and "population.size" in report["sections"]["population"]["error"]
    gradients, sweep = report["sections"]["gradients"], report["sections"]["t_sweep"]
    assert gradients["truncated"] and len(gradients["checks"]) == 2 and gradients["all_agree"]
    assert [(r["T"], "sec_per_step" in r) for r in sweep["rows"]] == [(1, True), (1, True), (2, False), (2, False)]
    assert all("time guard" in r["skipped"] for r in sweep["rows"] if r["T"] == 2) and not sweep["complete"]
    assert report["sections"]["scoring"]["cpu_rows_per_s"] > 0
    assert report["table"][0].startswith("population  FAILED") and len(report["table"]) == 4
