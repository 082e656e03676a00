"""The meta-train job as a user runs it: a subprocess, its exit status, stdout and stderr."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.max_train=300", "--set", "data.probe_size=150", "--set", "population.size=2",
        "--set", "meta.steps=4", "--set", "run.log_every=2", "--set", "inner.batch_size=32"]


def run_job(*args, module="jobs.meta_train"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_meta_train_job_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run_job("--config", "configs/digits.yaml", "--out", str(out), *TINY)
    assert result.returncode == 0, result.stderr
    assert "step      4/4" in result.stdout and "AUROC on the probe set" in result.stdout
    assert str(out / "checkpoint" / "rater.pt") in result.stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    # Resumed in this process (run.backend may change on resume; the Ray resume through the CLI is
    # test_ray_population's killed-driver test): one local Ray start fewer for the suite.
    resumed = run_job("--config", "configs/digits.yaml", "--out", str(out), *TINY, "--set", "meta.steps=6",
                      "--set", "run.backend=local", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == list(range(6))


@pytest.mark.parametrize("args,expected", [
    (["--set", "inner.optimizer=rmsprop"], "inner.optimizer"),
    (["--config", "configs/nope.yaml"], "config file not found"),
    (["--set", "data.source=idx", "--set", "data.dir=/nonexistent/mnist"], "/nonexistent/mnist"),
    (["--address", "127.0.0.1:1", *TINY], "cannot reach a Ray cluster at 127.0.0.1:1"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, expected):
    out = tmp_path / "run"
    result = run_job(*args, "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not out.exists()


def test_out_under_a_file_is_refused_before_ray_starts(tmp_path):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "run"
    result = run_job("--config", "configs/digits.yaml", "--out", str(out), *TINY)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --out {out}: {tmp_path / 'a_file'} is a file, not a folder; choose another --out"]
    assert "Ray" not in result.stdout + result.stderr and (tmp_path / "a_file").read_text() == "x"


def test_drray_command_dispatches_to_jobs(tmp_path, capsys):
    from jobs.cli import SUBCOMMANDS, main

    assert main(["--help"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert all(any(line.split()[:1] == [name] and len(line.split()) > 3 for line in listing) for name in SUBCOMMANDS)
    assert main(["no-such-job"]) == 2
    for name, flag in [("meta-train", "--resume"), ("prepare", "--corrupt"), ("score", "--rater"),
                       ("filter", "--discard")]:
        result = subprocess.run([sys.executable, "-m", "jobs.cli", name, "--help"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and flag in result.stdout, (name, result.stderr)


def test_job_usage_names_the_command_the_user_ran():
    """`drray meta-train --help` says `usage: drray meta-train`, `python -m jobs.meta_train --help`
    says `usage: python -m jobs.meta_train` (as the README and `ray job submit` run it)."""
    console = Path(sys.executable).with_name("drray")  # installed by `make setup` with the project
    for command, usage in [([str(console), "score"], "usage: drray score "),
                           ([sys.executable, "-m", "jobs.score"], "usage: python -m jobs.score ")]:
        result = subprocess.run(command + ["--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.startswith(usage), (command, result.stdout[:200], result.stderr)
