"""drray on a real multi-node Ray cluster: ray.cluster_utils.Cluster starts a head and worker nodes
on this host, each with its own raylet, and remove_node kills one as a lost machine would.

One cluster for the module: a head (the driver's node) and two worker nodes, one CPU each, with a
custom resource per node so placement can be read back. A test that removes a node adds a fresh
one before it ends, so the next test sees three nodes again."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml
from ray.cluster_utils import Cluster

from actors.population import RayPopulation
from actors.scheduler import WorkerFailure
from drray.config import load_config
from drray.data.parquet import write_parquet
from drray.data.splits import build_splits
from drray.train import checkpoint
from drray.train.loop import meta_train

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["data.source=digits", "data.max_train=800", "data.probe_size=400", "population.size=4",
          "resources.cpus_per_worker=0.5", "inner.batch_size=64", "meta.outer_batch_size=64",
          "meta.method=backprop", "meta.lr=1e-3", "population.lifetime=150", "run.log_every=1000",
          "data.corruption=[{kind: label_flip, fraction: 0.3}]"]


class Nodes:
    """The module's cluster: the head (the driver's node) and the live worker nodes by name."""

    def __init__(self, cluster: Cluster):
        self.cluster, self.workers, self.added = cluster, {}, 0

    def add(self) -> str:
        name = f"worker{self.added}"
        self.added += 1
        self.workers[name] = self.cluster.add_node(num_cpus=1, resources={name: 1})
        self.cluster.wait_for_nodes()
        return name

    def remove(self, name: str) -> None:
        self.cluster.remove_node(self.workers.pop(name))

    def refill(self) -> None:
        while len(self.workers) < 2:
            self.add()


@pytest.fixture(scope="module")
def nodes():
    if ray.is_initialized():
        pytest.fail("a Ray from another test module is still running")
    # The cluster writes its address file under the default temp folder: give it a folder of its own
    # (short: Unix socket paths under it must stay under 108 bytes).
    temp = tempfile.mkdtemp(prefix="drray-mn-")
    os.makedirs(f"{temp}/ray")
    saved_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"head": 1}, "temp_dir": f"{temp}/ray", "include_dashboard": False})
    found = Nodes(cluster)
    found.refill()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield found
    ray.shutdown()
    cluster.shutdown()
    if saved_tmpdir is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = saved_tmpdir
    shutil.rmtree(temp, ignore_errors=True)


def actor_nodes() -> dict[str, list[str]]:
    """Live actors by class: the name of the node each runs on (head or workerN), read from the GCS."""
    names = {}
    for node in ray.nodes():
        own = [key for key in node["Resources"] if key == "head" or key.startswith("worker")]
        names[node["NodeID"]] = own[0] if own else "?"
    placed = {}
    for actor in ray._private.state.actors().values():
        if actor["State"] == "ALIVE":
            placed.setdefault(actor["ActorClassName"], []).append(names.get(actor["Address"]["NodeID"], "gone"))
    return placed


def busiest_worker_node(placed: dict) -> str:
    workers = [name for name in placed["InnerWorker"] if name != "head"]
    return max(set(workers), key=workers.count)


def test_placement_and_a_lost_worker_node(nodes, tmp_path):
    """The scheduler and the parameter server sit on the driver's node, the workers spread over
    the nodes. A worker node lost at step 10: the run completes every step, the lost workers come
    back as fresh inner models on surviving nodes (metrics say so), the AUROC keeps rising, and a
    checkpoint written after the loss resumes bit for bit."""
    cfg = load_config(None, DIGITS + ["meta.steps=60", "run.checkpoint_every=20", f"run.out={tmp_path / 'run'}"])
    seen = {}

    def on_record(record, population, prober):
        step = record["step"] + 1
        if step == 10:
            seen["before"] = actor_nodes()
            seen["lost"] = busiest_worker_node(seen["before"])
            nodes.remove(seen["lost"])
        if step == 41:  # the step-40 checkpoint is on disk: continue a copy of it later
            shutil.copytree(tmp_path / "run", tmp_path / "copy")
        if step == 60:
            seen["after"] = actor_nodes()

    try:
        meta_train(cfg, population_factory=RayPopulation, on_record=on_record)
    finally:
        nodes.refill()
    before, after = seen["before"], seen["after"]
    assert before["Scheduler"] == before["ParameterServer"] == ["head"] == after["Scheduler"]
    assert len(set(before["InnerWorker"])) > 1  # spread over more than one node
    lost = before["InnerWorker"].count(seen["lost"])
    assert len(after["InnerWorker"]) == 4 and seen["lost"] not in after["InnerWorker"]

    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(60))
    assert [r["replaced"] for r in lines][10] == lost and sum(r["replaced"] for r in lines) == lost
    auroc = [r["auroc"] for r in lines]
    assert sum(auroc[-10:]) / 10 > sum(auroc[:10]) / 10 + 0.03, auroc[::5]

    copy = load_config(None, DIGITS + ["meta.steps=60", "run.checkpoint_every=20", f"run.out={tmp_path / 'copy'}"])
    meta_train(copy, resume=True, population_factory=RayPopulation)
    a = checkpoint.load_state(tmp_path / "run")["population"]["meta"]["params"]
    b = checkpoint.load_state(tmp_path / "copy")["population"]["meta"]["params"]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    deadline = time.monotonic() + 30  # a finished run leaves no actor behind (killing takes a moment)
    while actor_nodes().get("InnerWorker") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not actor_nodes().get("InnerWorker")


def test_a_lost_node_stops_a_streamed_run_which_resumes_on_the_rest(nodes, tmp_path):
    splits = build_splits(load_config(None, DIGITS).data, 0)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "heldout", "test"):
        write_parquet(getattr(splits, name), data / f"{name}.parquet")
    settings = [s for s in DIGITS if not s.startswith("data.corruption")] + [
        "data.source=parquet", f"data.dir={data}", "data.stream=true", "population.size=3",
        "run.checkpoint_every=4", "meta.steps=12", f"run.out={tmp_path / 'run'}"]
    cfg = load_config(None, settings)

    def lose_a_node(record, population, prober):
        if record["step"] + 1 == 6:
            nodes.remove(busiest_worker_node(actor_nodes()))

    try:
        with pytest.raises(WorkerFailure) as info:
            meta_train(cfg, population_factory=RayPopulation, on_record=lose_a_node)
    finally:
        nodes.refill()
    message = str(info.value)
    assert "a streamed run cannot replace a worker" in message and "--resume" in message and "\n" not in message
    assert checkpoint.load_state(tmp_path / "run")["step"] == 4  # the last checkpoint is kept
    summary = meta_train(cfg, resume=True, population_factory=RayPopulation)
    assert summary.steps == 12
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(12))


def meta_train_job(nodes, tmp_path, *overrides) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "jobs.meta_train", "--address", nodes.cluster.address, "--out",
               str(tmp_path / "run"), *[arg for o in (*DIGITS, "meta.steps=2", *overrides) for arg in ("--set", o)]]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overrides,expected", [
    (["population.size=1", "resources.cpus_per_worker=1.5"],  # 1.5 of the cluster's 3 CPUs, but on no one node
     "the cluster's nodes hold 0 at once (a worker runs on one node); lower resources.cpus_per_worker"),
    (["resources.gpus_per_worker=1"], "needs 4 GPUs but the cluster has 0; lower resources.gpus_per_worker"),
])
def test_a_worker_no_node_can_hold_is_refused_in_one_line(nodes, tmp_path, overrides, expected):
    """End to end on the multi-node cluster: refused at start, before any actor or output."""
    before = len(ray._private.state.actors())
    result = meta_train_job(nodes, tmp_path, *overrides)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert not (tmp_path / "run").exists()
    assert len(ray._private.state.actors()) == before


def lose_a_node_once(nodes, ready, hosting) -> threading.Thread:
    """In the background: once ready() holds, remove a worker node that runs an actor whose class
    name contains `hosting` (and note which in .lost)."""
    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if ready():
                placed = actor_nodes()
                candidates = [n for cls, where in placed.items() if hosting in cls for n in where if n in nodes.workers]
                if candidates:
                    thread.lost = candidates[0]
                    nodes.remove(candidates[0])
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.lost = None
    thread.start()
    return thread


def test_a_tune_trial_whose_node_is_lost_resumes_from_its_checkpoint(nodes, tmp_path):
    """The trial is retried (FailureConfig) from the run files it last reported with a checkpoint,
    and the search ends with every trial reported to the last step."""
    from actors.tuning import run_search
    from drray.train.search_space import load_tune_spec

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "base": str(ROOT / "configs" / "digits.yaml"),
        "set": {"meta.steps": 120, "run.checkpoint_every": 10, "data.max_train": 300, "data.probe_size": 150,
                "inner.batch_size": 32, "meta.outer_batch_size": 32, "run.log_every": 1000,
                "resources.cpus_per_worker": 0.25, "population.size": 2},
        "space": {"inner.T": {"grid": [1, 2]}}, "report_every": 10, "trial_cpus": 0.25,
        "asha": {"grace_period": 12}}))  # no early stopping: every trial runs to its last step
    spec, base_tree = load_tune_spec(spec_path)
    storage = tmp_path / "tune"
    # Once both trials have stored two checkpoints (steps 10 and 20 of 120; Tune has taken in the
    # first), lose the node of a trial's scheduler.
    stored = lambda: [len(list(trial.glob("checkpoint_*"))) for trial in storage.glob("search/*/")]  # noqa: E731
    reported = lambda: len(stored()) == 2 and min(stored()) >= 2  # noqa: E731
    loser = lose_a_node_once(nodes, reported, "Scheduler")
    try:
        results = run_search(spec, base_tree, storage, "search", 0.0)
    finally:
        loser.join()
        nodes.refill()
    assert loser.lost is not None
    finished = [r.metrics for r in results]
    assert len(finished) == 2 and all(r.error is None for r in results)
    assert all(m["step"] == 120 and m["training_iteration"] == 12 for m in finished), finished
    restored = [m["resumed_from_step"] for m in finished if m["resumed_from_step"] > 0]
    assert len(restored) == 1 and restored[0] % 10 == 0, finished  # from a checkpoint, not from step 0


def test_scoring_survives_a_lost_node_with_every_row_once(nodes, tmp_path):
    """Ray Data retries the lost tasks and restarts the lost scoring actors: the output holds every
    input row exactly once, with the scores of a run without the fault."""
    import numpy as np
    import pyarrow.dataset as pads

    from actors.score_pipeline import score_dataset
    from drray.models import build_rater

    cfg = load_config(None, DIGITS)
    rater = build_rater("cnn_classifier", (8, 8), 10)
    checkpoint.save_checkpoint(tmp_path / "rater", {"step": 0}, {"rater": rater.state_dict(), "arch": "cnn_classifier",
                                                                 "row_shape": [8, 8], "num_classes": 10}, cfg.to_dict())
    train = build_splits(cfg.data, 0).train
    (tmp_path / "in").mkdir()
    for part in range(24):  # 24 files of the training split, ids made unique
        copy = train.subset(np.arange(len(train)))
        copy.ids = copy.ids + part * 10_000
        write_parquet(copy, tmp_path / "in" / f"part-{part:02d}.parquet")

    def scores(folder):
        table = pads.dataset(str(folder), format="parquet").to_table(columns=["id", "score"])
        return dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist())), table.num_rows

    score_dataset(str(tmp_path / "rater"), str(tmp_path / "in"), str(tmp_path / "clean"), batch_size=200)
    loser = lose_a_node_once(nodes, lambda: True, "MapWorker")
    try:
        score_dataset(str(tmp_path / "rater"), str(tmp_path / "in"), str(tmp_path / "faulty"), batch_size=200)
    finally:
        loser.join()
        nodes.refill()
    assert loser.lost is not None
    (clean, clean_rows), (faulty, faulty_rows) = scores(tmp_path / "clean"), scores(tmp_path / "faulty")
    assert clean_rows == faulty_rows == 24 * len(train) == len(faulty)  # every row, none twice
    assert faulty == clean
