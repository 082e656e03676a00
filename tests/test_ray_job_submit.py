"""The meta-train job on a real Ray cluster: start a head (`ray start --head`), submit the job with
`ray job submit --working-dir`, and check what it wrote. The head is this test's own: its own
temp dir and ports, stopped through its own process (never a bare `ray stop`, which would kill
every Ray on the machine)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
STEPS = 6


def free_ports(count: int) -> list[int]:
    """Distinct ports the OS calls free now (all held open together, so no two are the same)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def ray_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no stray RAY_ADDRESS etc.
    # Ray 2.60 turns on token auth (and looks for ~/.ray/auth_token); this throwaway head is local only.
    # On SIGTERM, `ray start --block` first drains the node for up to 30 s; there is nothing to drain here.
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", OMP_WAIT_POLICY="PASSIVE",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    return env


def wait_for_dashboard(head: subprocess.Popen, port: int, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=5) as reply:
                if reply.status == 200 and "ray_version" in json.loads(reply.read()):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(1.0)
    pytest.fail(f"the dashboard on port {port} did not answer within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def stop_head(head: subprocess.Popen) -> None:
    """Stop the head this test started, and only it. SIGTERM to `ray start --block` alone shuts its
    processes down in a few seconds (SIGTERM to the whole group at once leaves the autoscaler
    monitor lingering ~30 s); then whatever is left in its process group gets SIGTERM, then SIGKILL."""
    try:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
            for _ in range(100):
                time.sleep(0.1)
                head.poll()  # reap the leader, or its zombie keeps the group alive
                os.killpg(head.pid, 0)
        except ProcessLookupError:
            break


def job_logs(dash: str, submission_id: str, env: dict) -> str:
    result = subprocess.run([str(RAY), "job", "logs", "--address", dash, submission_id],
                            capture_output=True, text=True, timeout=60, env=env)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A throwaway head with the dashboard (job submission) on: yields (dashboard URL, temp dir, env)."""
    tmp_path = tmp_path_factory.mktemp("head")
    temp_dir = tempfile.mkdtemp(prefix="drray-")  # short: Ray's socket paths live under it
    (gcs, dashboard, client, node_manager, object_manager, agent_http, agent_grpc, runtime_env_agent,
     metrics) = free_ports(9)
    env = ray_env()
    head_log = tmp_path / "head.log"
    # --num-gpus 0: on a GPU machine gpus_per_worker=null would ask one GPU per worker.
    command = [str(RAY), "start", "--head", "--block", "--temp-dir", temp_dir, "--num-cpus", "2", "--num-gpus", "0",
               "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dashboard),
               "--ray-client-server-port", str(client), "--node-manager-port", str(node_manager),
               "--object-manager-port", str(object_manager), "--dashboard-agent-listen-port", str(agent_http),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env_agent),
               "--metrics-export-port", str(metrics), "--min-worker-port", "0", "--max-worker-port", "0",
               "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats"]
    with open(head_log, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   cwd=tmp_path, start_new_session=True)
    started = time.monotonic()
    try:
        wait_for_dashboard(process, dashboard, head_log)
        print(f"\nthe head answered after {time.monotonic() - started:.1f} s")
        yield f"http://127.0.0.1:{dashboard}", temp_dir, env
    finally:
        started = time.monotonic()
        stop_head(process)
        print(f"the head stopped in {time.monotonic() - started:.1f} s")
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(head, cwd: Path, *job: str) -> str:
    """`ray job submit --working-dir ROOT -- python -m JOB...`; fails the test unless the job succeeds.
    Returns what the job printed (streamed back by ray job submit)."""
    dash, _, env = head
    submission_id = f"drray-test-{uuid.uuid4().hex[:8]}"
    command = [str(RAY), "job", "submit", "--address", dash, "--submission-id", submission_id,
               "--working-dir", str(ROOT), "--", sys.executable, "-m", *job]
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ray job submit took over 300 s:\n{exc.stdout}\n{exc.stderr}\n"
                    f"--- job logs ---\n{job_logs(dash, submission_id, env)}")
    output = result.stdout + result.stderr
    status = subprocess.run([str(RAY), "job", "status", "--address", dash, submission_id],
                            capture_output=True, text=True, timeout=60, env=env)
    print(f"ray job submit {job[0]} took {time.monotonic() - started:.1f} s")
    assert result.returncode == 0 and f"Job '{submission_id}' succeeded" in output + status.stdout, (
        f"the job did not succeed (exit {result.returncode}):\n{output}\n--- status ---\n{status.stdout}"
        f"{status.stderr}\n--- job logs ---\n{job_logs(dash, submission_id, env)}")
    return output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_meta_train_job_on_a_ray_cluster(head, tmp_path):
    out = tmp_path / "run"
    output = submit(head, tmp_path, "jobs.meta_train", "--config", "configs/digits.yaml", "--out", str(out),
                    "--set", f"meta.steps={STEPS}", "--set", "population.size=2", "--set", "data.max_train=300",
                    "--set", "data.probe_size=150", "--set", "inner.batch_size=32", "--set", "run.log_every=2",
                    "--set", "run.checkpoint_every=3")
    # The working dir went up as a zip and was unpacked on the head; .venv (hundreds of MB) stays out.
    temp_dir = head[1]
    packages = [p for p in Path(temp_dir).glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*")
                if p.is_dir()]
    assert len(packages) == 1, f"unpacked working dirs: {packages}; {sorted(Path(temp_dir).rglob('_ray_pkg_*'))}"
    size = sum(f.stat().st_size for f in packages[0].rglob("*") if f.is_file())
    print(f"working-dir package: {size / 2**20:.2f} MiB")
    assert (packages[0] / "jobs" / "meta_train.py").is_file() and not (packages[0] / ".venv").exists()
    assert size < 10 * 2**20, f"the working-dir package is {size / 2**20:.1f} MiB"

    for name in ("rater.pt", "state.pt", "config.yaml"):
        assert (out / "checkpoint" / name).is_file(), f"missing checkpoint/{name}\n{output}"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS))
    assert "AUROC on the probe set" in output  # the driver's report, streamed back by ray job submit

    evaluation = tmp_path / "eval"
    output = submit(head, tmp_path, "jobs.evaluate", "--config", "configs/digits.yaml", "--rater", str(out),
                    "--discard", "0.2", "--seeds", "2", "--steps", "10", "--methods", "baseline,datarater",
                    "--out", str(evaluation))
    rows = json.loads((evaluation / "results.json").read_text())["rows"]
    assert [(r["method"], r["n"]) for r in rows] == [("baseline", 2), ("datarater", 2)] and "| datarater |" in output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tune_job_on_a_ray_cluster(head, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""base: {ROOT / "configs" / "digits.yaml"}
set: {{meta.steps: 2, data.max_train: 300, data.probe_size: 150, inner.batch_size: 32}}
space: {{inner.T: {{grid: [1]}}, population.size: {{grid: [2]}}}}
report_every: 1
""")
    output = submit(head, tmp_path, "jobs.tune", "--spec", str(spec), "--out", str(tmp_path / "search"))
    assert "best: inner.T=1, population.size=2" in output and (tmp_path / "search" / "best.yaml").is_file()
