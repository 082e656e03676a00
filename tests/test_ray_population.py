"""The population on a real local Ray: same answer as in one process, fault tolerance, resume,
and clear errors for requests that can never be met."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from actors.population import RayPopulation
from actors.scheduler import WorkerFailure
from drray.config import load_config
from drray.data.splits import build_splits
from drray.errors import ConfigError
from drray.train import checkpoint
from drray.train.loop import make_population
from tests.test_metagrad import relative_error

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.source=digits", "data.max_train=300", "data.probe_size=150", "population.size=2",
        "population.lifetime=3", "inner.batch_size=32", "meta.outer_batch_size=32", "meta.steps=5",
        "run.checkpoint_every=2", "run.log_every=5", "data.corruption=[{kind: label_flip, fraction: 0.3}]"]




def tiny(tmp_path, *extra):
    return load_config(None, TINY + [f"run.out={tmp_path}", *extra])


def run_steps(population, steps):
    return [population.step() for _ in range(steps)]


def test_ray_population_matches_in_process(ray_cluster, tmp_path):
    cfg = tiny(tmp_path)
    splits = build_splits(cfg.data, cfg.run.seed)
    local, remote = make_population(cfg, splits), RayPopulation(cfg, splits)
    for a, b in zip(run_steps(local, 5), run_steps(remote, 5)):  # step 3 resets model 0 in both
        assert b.outer_loss == pytest.approx(a.outer_loss, rel=1e-5) and a.resets == b.resets
    want, got = local.rater_params, remote.rater_params
    assert relative_error(got, want) <= 1e-6
    assert any(not torch.equal(x, y) for x, y in zip(want, make_population(cfg, splits).rater_params))


def test_ray_parameter_server_starts_from_the_same_warm_rater(ray_cluster, tmp_path):
    cfg = tiny(tmp_path, "rater.arch=cnn_classifier", "rater.warm_start_steps=40")
    splits = build_splits(cfg.data, cfg.run.seed)
    want, got = make_population(cfg, splits).rater_params, RayPopulation(cfg, splits).rater_params
    assert relative_error(got, want) <= 1e-4  # Adam amplifies float rounding where thread counts differ
    cold = make_population(tiny(tmp_path, "rater.arch=cnn_classifier"), splits).rater_params
    assert any(not torch.equal(x, y) for x, y in zip(want, cold))  # the warm start did run


def test_ray_population_runs_text_like_in_process(ray_cluster, tmp_path):
    """The same actors carry text: int16 token rows through the object store, transformers in the workers."""
    cfg = load_config(ROOT / "configs" / "text-tiny.yaml",
                      [f"run.out={tmp_path}", f"data.dir={ROOT.parent / 'shared' / 'data' / 'text'}"])
    splits = build_splits(cfg.data, cfg.run.seed)
    local, remote = make_population(cfg, splits), RayPopulation(cfg, splits)
    for a, b in zip(run_steps(local, 3), run_steps(remote, 3)):
        assert b.outer_loss == pytest.approx(a.outer_loss, rel=1e-5)
    want, got = local.rater_params, remote.rater_params
    assert relative_error(got, want) <= 1e-4  # Adam on the rater amplifies float rounding (threads differ) a little


def test_killed_worker_is_replaced_and_run_completes(ray_cluster, tmp_path, capsys):
    cfg = tiny(tmp_path, "meta.steps=6")
    population = RayPopulation(cfg, build_splits(cfg.data, cfg.run.seed))
    stats = run_steps(population, 2)
    victim = population.worker_handles()[1]
    ray.kill(victim)
    stats += run_steps(population, 4)
    assert len(stats) == 6 and all(torch.isfinite(torch.tensor(s.outer_loss)) for s in stats)
    assert "worker 1 failed (" in capsys.readouterr().err
    assert population.worker_handles()[1] != victim
    assert population.state_dict()["learners"][1]["incarnation"] >= 1  # a fresh inner model


@ray.remote(num_cpus=1)
class _Occupant:
    """Holds a CPU, as another job on the cluster would."""


def test_a_replacement_the_cluster_has_no_room_for_stops_the_run(ray_cluster, tmp_path):
    """A lost node's worker cannot be replaced anywhere: one line after a while, not a wait forever."""
    cfg = tiny(tmp_path, "resources.cpus_per_worker=1")  # 2 workers fill the 2-CPU test cluster
    population = RayPopulation(cfg, build_splits(cfg.data, cfg.run.seed), replacement_start_s=3)
    run_steps(population, 1)
    ray.kill(population.worker_handles()[1])
    occupant = _Occupant.remote()
    ray.get(occupant.__ray_ready__.remote())  # placed once the dead worker's CPU is free
    try:
        with pytest.raises(WorkerFailure, match=r"worker 1 failed \(.*\) and its replacement did not start within 3 s "
                                                r"\(it needs 1 CPUs and 0 GPUs\)") as info:
            population.step()
        assert "--resume" in str(info.value) and "\n" not in str(info.value)
    finally:
        ray.kill(occupant)


def test_a_dead_scheduler_stops_the_run_in_one_line(ray_cluster, tmp_path):
    cfg = tiny(tmp_path)
    population = RayPopulation(cfg, build_splits(cfg.data, cfg.run.seed))
    run_steps(population, 1)
    ray.kill(population.scheduler)
    with pytest.raises(WorkerFailure, match=r"the run's scheduler died \(.+\); continue with --resume") as info:
        population.step()
    assert "\n" not in str(info.value)


def test_every_worker_failing_the_same_way_stops_the_run(ray_cluster, tmp_path):
    cfg = tiny(tmp_path, "run.device=cuda", "resources.gpus_per_worker=0")  # no CUDA here: all workers raise
    population = RayPopulation(cfg, build_splits(cfg.data, cfg.run.seed))
    with pytest.raises(WorkerFailure, match="every worker failed the same way") as info:
        population.step()
    assert "\n" not in str(info.value)


def test_workers_are_counted_per_node():
    """A worker runs on one node: cluster totals overstate what fits."""
    from actors.cluster import how_many_fit

    two_nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0}]
    assert how_many_fit(two_nodes, {"CPU": 3.0, "GPU": 0.0}) == 2  # not 8 / 3
    assert how_many_fit(two_nodes, {"CPU": 1.0, "GPU": 1.0}) == 1  # the GPU decides on node 1
    assert how_many_fit(two_nodes, {"CPU": 0.25, "GPU": 0.0}) == 32
    assert how_many_fit(two_nodes, {"CPU": 5.0}) == 0
    assert how_many_fit([{"CPU": 8.0, "GPU": 2.0}], {"CPU": 0.1, "GPU": 0.4}) == 4  # 2 per GPU, not 2 / 0.4 = 5


def test_tune_bundles_are_placed_together():
    """The trial's bundle takes room the workers' bundles then lack."""
    from actors.tuning import bundles_fit

    two_nodes = [{"CPU": 4.0}, {"CPU": 4.0}]
    assert not bundles_fit(two_nodes, {"CPU": 1.5}, {"CPU": 3.0}, 2)  # totals fit: 7.5 of 8
    assert bundles_fit(two_nodes, {"CPU": 1.0}, {"CPU": 3.0}, 2)
    assert not bundles_fit(two_nodes, {"CPU": 5.0}, {"CPU": 1.0}, 1)


def test_a_dead_parameter_server_is_named_as_such(monkeypatch):
    """Ray makes a task's error an instance of its cause's class too: the server's death reaches
    the driver as a RayTaskError that is also a RayActorError."""
    from ray.exceptions import ActorDiedError, RayTaskError

    population = RayPopulation.__new__(RayPopulation)
    population.scheduler = type("Stub", (), {"step": type("M", (), {"remote": staticmethod(lambda: None)})})()
    error = RayTaskError("step", "Traceback: ...", ActorDiedError()).as_instanceof_cause()
    monkeypatch.setattr(ray, "get", lambda ref: (_ for _ in ()).throw(error))
    with pytest.raises(WorkerFailure, match="the run's parameter server died"):
        population.step()


def test_impossible_resources_are_refused_at_start(ray_cluster, tmp_path):
    cfg = tiny(tmp_path, "resources.gpus_per_worker=1")
    with pytest.raises(ConfigError, match=r"needs 2 GPUs but the cluster has 0"):
        RayPopulation(cfg, build_splits(cfg.data, cfg.run.seed))
    cfg = tiny(tmp_path, "resources.cpus_per_worker=4")
    with pytest.raises(ConfigError, match=r"needs 8 CPUs but the cluster has 2"):
        RayPopulation(cfg, build_splits(cfg.data, cfg.run.seed))


def job(address, out, *extra):
    cmd = [sys.executable, "-m", "jobs.meta_train", "--address", address, "--out", str(out)]
    for item in TINY + ["meta.steps=8", "run.checkpoint_every=2", *extra]:
        cmd += ["--set", item]
    return cmd


def test_killed_driver_resumes_to_the_same_rater(ray_cluster, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert subprocess.run(job(ray_cluster, whole), cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    driver = subprocess.Popen(job(ray_cluster, broken), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(1200):  # poll for up to 4 minutes
        if checkpoint.has_checkpoint(broken) and checkpoint.load_state(broken)["step"] >= 2:
            break
        assert driver.poll() is None, "the driver exited before writing a checkpoint"
        time.sleep(0.2)
    else:
        pytest.fail("the driver never wrote a checkpoint")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_at = checkpoint.load_state(broken)["step"]
    resumed = subprocess.run(job(ray_cluster, broken) + ["--resume"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert killed_at < 8
    a = checkpoint.load_state(whole)["population"]["meta"]["params"]
    b = checkpoint.load_state(broken)["population"]["meta"]["params"]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_remote_failures_are_summarised_in_one_line(ray_cluster):
    from actors.scheduler import one_line

    @ray.remote(num_cpus=0.1)
    def explode():
        raise KeyError("boom")

    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(explode.remote())
    assert one_line(info.value) == "KeyError: 'boom'"


def test_streamed_parquet_reaches_workers_through_ray_data(ray_cluster, tmp_path):
    from tests.test_streaming import prepared_digits, stream_config

    prepared_digits(tmp_path / "data")
    cfg = stream_config(tmp_path / "data", tmp_path / "run")
    population = RayPopulation(cfg, build_splits(cfg.data, cfg.run.seed))
    stats = run_steps(population, 3)
    assert all(torch.isfinite(torch.tensor(s.outer_loss)) for s in stats)
    held = ray.get([w.max_rows_buffered.remote() for w in population.worker_handles()])
    assert all(0 < rows < 2 * cfg.inner.batch_size for rows in held)  # a batch or two, never the whole set
    # A replacement would wait forever on its shard (a streaming split's epoch starts for all shards
    # together, and the other workers wait for it): the run stops in one line instead.
    ray.kill(population.worker_handles()[1])
    with pytest.raises(WorkerFailure, match=r"worker 1 failed \(.*\); a streamed run cannot replace a worker") as info:
        population.step()
    assert "--resume" in str(info.value) and "\n" not in str(info.value)
