"""Population logic in one process: schedule, truncated BPTT, determinism, resume, divergence."""
import json
import os
import stat
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import yaml

from drray.config import load_config
from drray.errors import ConfigError, TrainingDiverged
from drray.io import current_umask
from drray.meta.population import InnerLearner, build_problem, reset_due
from drray.train import checkpoint
from drray.train.loop import make_population, meta_train

TINY = ["data.source=digits", "data.max_train=400", "data.probe_size=200", "population.size=3",
        "population.lifetime=4", "inner.batch_size=32", "meta.outer_batch_size=32", "meta.steps=6",
        "run.checkpoint_every=3", "run.log_every=3",
        "data.corruption=[{kind: label_flip, fraction: 0.3}]"]


def tiny_config(tmp_path, *extra):
    return load_config(None, TINY + [f"run.out={tmp_path / 'run'}", *extra])


def test_staggered_reset_schedule_hand_worked():
    # N=4, L=10: first resets at ceil(10/4)=3, ceil(20/4)=5, ceil(30/4)=8, ceil(40/4)=10, then every 10.
    due = {i: [s for s in range(31) if reset_due(i, s, 4, 10)] for i in range(4)}
    assert due == {0: [3, 13, 23], 1: [5, 15, 25], 2: [8, 18, 28], 3: [10, 20, 30]}


def test_inner_models_persist_and_reset_on_schedule(tmp_path):
    """Truncated BPTT: each outer step continues from the previous theta_T (the model trains
    across steps), and a reset model starts again from fresh weights."""
    from drray.data.splits import build_splits

    cfg = tiny_config(tmp_path)
    pop = make_population(cfg, build_splits(cfg.data, cfg.run.seed))
    learner = pop.learners[0]  # first reset at step ceil(4/3) = 2
    theta0 = [t.clone() for t in learner.theta]
    pop.step()
    theta1 = [t.clone() for t in learner.theta]
    assert learner.age == 1 and any(not torch.equal(a, b) for a, b in zip(theta0, theta1))
    pop.step()
    assert learner.age == 2 and any(not torch.equal(a, b) for a, b in zip(theta1, learner.theta))
    stats = pop.step()  # step 2: learner 0 is reset first
    assert stats.resets == 1 and learner.age == 1 and learner.incarnation == 1


def rater_after(cfg):
    from drray.data.splits import build_splits

    pop = make_population(cfg, build_splits(cfg.data, cfg.run.seed))
    for _ in range(cfg.meta.steps):
        pop.step()
    return [p.clone() for p in pop.rater_params]


def test_deterministic_for_a_seed(tmp_path):
    a, b = rater_after(tiny_config(tmp_path)), rater_after(tiny_config(tmp_path))
    c = rater_after(tiny_config(tmp_path, "run.seed=1"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("method", ["meta.method=backprop", "meta.mixflow_mode=reverse_over_reverse"])
def test_learners_in_threads_match_one_after_another(tmp_path, monkeypatch, method):
    """run.learner_threads: learners stepped at once in threads give bit-for-bit what the same
    learners give one after another on as many torch threads as each thread had."""
    from drray.meta.population import learner_threads

    threads_seen = set()
    meta_step = InnerLearner.meta_step

    def recording(self, eta):
        threads_seen.add(threading.current_thread().name)
        return meta_step(self, eta)

    monkeypatch.setattr(InnerLearner, "meta_step", recording)
    before = torch.get_num_threads()
    threaded = rater_after(tiny_config(tmp_path, method, "run.learner_threads=3"))
    assert len(threads_seen) > 1 and all(name.startswith("learner") for name in threads_seen)
    assert torch.get_num_threads() == before  # the threads' own setting leaks neither into this thread
    with ThreadPoolExecutor(1) as fresh:  # nor into threads started afterwards
        assert fresh.submit(torch.get_num_threads).result() == before
    threads_seen.clear()
    torch.set_num_threads(learner_threads(tiny_config(tmp_path, method, "run.learner_threads=3"))[1])
    try:
        sequential = rater_after(tiny_config(tmp_path, method, "run.learner_threads=1"))
    finally:
        torch.set_num_threads(before)
    assert threads_seen == {threading.main_thread().name}
    assert all(torch.equal(x, y) for x, y in zip(threaded, sequential))


def test_learner_threads_default_to_the_cpu_threads_and_to_one_where_they_cannot_help(monkeypatch):
    from drray.meta.population import learner_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    backprop = ["meta.method=backprop", "population.size=8"]
    assert learner_threads(load_config(None, backprop)) == (8, 1)
    assert learner_threads(load_config(None, backprop + ["population.size=3"])) == (3, 2)  # the cores shared
    assert learner_threads(load_config(None, backprop + ["run.device=cuda"])) == (1, 8)  # one device: memory only
    jvp = ["meta.method=mixflow", "meta.mixflow_mode=forward_over_reverse", "population.size=8"]
    assert learner_threads(load_config(None, jvp)) == (1, 8)  # mixflow's JVP
    assert learner_threads(load_config(None, jvp + ["run.learner_threads=4"])) == (1, 8)
    assert learner_threads(load_config(None, backprop + ["run.learner_threads=2"])) == (2, 4)


def test_learner_threads_refuse_forward_mode_ad(tmp_path):
    config = tmp_path / "local.yaml"
    config.write_text("run: {backend: local}\n")
    jvp = ["meta.method=mixflow", "meta.mixflow_mode=forward_over_reverse"]
    with pytest.raises(ConfigError, match=r"^--set run.learner_threads=2: .*forward-mode AD.*not thread-safe"):
        load_config(config, jvp + ["run.learner_threads=2"])
    assert load_config(config, ["run.learner_threads=2"]).run.learner_threads == 2  # the default: backprop
    assert load_config(None, ["run.learner_threads=2"]).run.backend == "ray"  # unused on Ray: not refused


@pytest.mark.parametrize("extra", [[], ["rater.arch=cnn_classifier", "rater.warm_start_steps=20"],
                                   ["meta.method=backprop", "run.learner_threads=3"]],
                         ids=["cold", "warm-start", "learner-threads"])
def test_resume_continues_bit_identically(tmp_path, extra):
    full = tiny_config(tmp_path / "full", *extra)
    meta_train(full)
    part = tiny_config(tmp_path / "part", "meta.steps=3", *extra)
    meta_train(part)
    meta_train(tiny_config(tmp_path / "part", *extra), resume=True)  # steps 3..5 from the step-3 checkpoint
    a = checkpoint.load_state(full.run.out)["population"]["meta"]["params"]
    b = checkpoint.load_state(part.run.out)["population"]["meta"]["params"]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    lines = [json.loads(line) for line in open(f"{part.run.out}/metrics.jsonl")]
    assert [r["step"] for r in lines] == list(range(6))
    full_lines = [json.loads(line) for line in open(f"{full.run.out}/metrics.jsonl")]
    assert [r["outer_loss"] for r in lines] == [r["outer_loss"] for r in full_lines]


def test_resume_at_or_past_the_last_step(tmp_path, capsys):
    """Resuming a finished run trains nothing and reports the steps it has; asking for fewer steps
    than the checkpoint has is a one-line error that leaves the run as it was."""
    meta_train(tiny_config(tmp_path, "meta.steps=4"))
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    summary = meta_train(tiny_config(tmp_path, "meta.steps=4"), resume=True)
    assert summary.steps == 4 and "at step 4: nothing left to train" in capsys.readouterr().out
    with pytest.raises(ConfigError) as info:
        meta_train(tiny_config(tmp_path, "meta.steps=3"), resume=True)
    assert "is at step 4, past meta.steps=3; set meta.steps above 4" in str(info.value) and "\n" not in str(info.value)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    assert checkpoint.load_state(tmp_path / "run")["step"] == 4
    summary = meta_train(tiny_config(tmp_path, "meta.steps=5"), resume=True)
    assert summary.steps == 5 and "at step 4: 1 of 5 outer steps to go" in capsys.readouterr().out


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    assert current_umask() == 0o022
    yield
    os.umask(previous)


def test_outputs_and_refusal_to_clobber(tmp_path, umask_022):
    cfg = tiny_config(tmp_path)
    summary = meta_train(cfg)
    out = tmp_path / "run"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {"step", "outer_loss", "meta_grad_norm", "auroc"} <= set(records[0])
    assert 0.0 <= summary.auroc <= 1.0
    assert any((out / "tb").iterdir())
    weights = checkpoint.load_rater_weights(out)
    assert weights["step"] == 6 and set(weights["rater"]) == {"body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias"}
    rater, info = checkpoint.load_rater(out)
    assert info == {"step": 6, "arch": "mlp", "row_shape": [8, 8], "num_classes": 10, "image_size": None, "class_names": None}
    final = checkpoint.load_state(out)["population"]["meta"]["params"]
    assert all(torch.equal(p, q) for p, q in zip(rater.parameters(), final))
    assert {stat.S_IMODE(f.stat().st_mode) for f in (out / "checkpoint").iterdir()} == {0o644}  # umask 022
    with pytest.raises(ConfigError, match="already holds a run"):
        meta_train(cfg)
    with pytest.raises(ConfigError, match="no checkpoint"):
        meta_train(tiny_config(tmp_path / "empty"), resume=True)
    (out / "metrics.jsonl").unlink()  # a first upload cut short: the checkpoint alone is still a run
    with pytest.raises(ConfigError, match="already holds a run"):
        meta_train(cfg)


def test_resume_drops_a_metrics_line_cut_short(tmp_path):
    """The process died while writing a line: it is after the checkpoint, so resume drops it."""
    meta_train(tiny_config(tmp_path, "meta.steps=4"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 4, "outer_lo')
    meta_train(tiny_config(tmp_path, "meta.steps=5"), resume=True)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_overwrite_refused_by_a_later_check_keeps_the_old_run(tmp_path):
    cfg = tiny_config(tmp_path)
    meta_train(cfg)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()

    def no_room(cfg, splits):  # as the Ray population refuses a population the cluster cannot fit
        raise ConfigError("population.size=3 x resources.cpus_per_worker=1 needs 3 CPUs")

    with pytest.raises(ConfigError, match="needs 3 CPUs"):
        meta_train(cfg, overwrite=True, population_factory=no_room)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    assert checkpoint.has_checkpoint(tmp_path / "run")
    meta_train(tiny_config(tmp_path, "meta.steps=2"), overwrite=True)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_a_changed_config_in_one_line(tmp_path):
    meta_train(tiny_config(tmp_path, "meta.steps=3"))
    for change, named in [("population.size=2", "population.size 3 -> 2"),
                          ("inner.optimizer=sgd", "inner.optimizer 'adam' -> 'sgd'"),
                          ("rater.arch=cnn", "rater.arch 'mlp' -> 'cnn'"),  # auto is mlp for 8x8
                          ("run.seed=1", "run.seed 0 -> 1")]:
        with pytest.raises(ConfigError) as info:
            meta_train(tiny_config(tmp_path, change), resume=True)
        message = str(info.value)
        assert message.startswith("--resume: the config differs from the checkpoint's in ") and named in message
        assert "\n" not in message
    # A checkpoint from before a field existed reads it at its default.
    saved = tmp_path / "run" / "checkpoint" / "config.yaml"
    tree = yaml.safe_load(saved.read_text())
    del tree["data"]["seq_len"], tree["meta"]["mixflow_chunk"], tree["meta"]["mixflow_mode"]
    saved.write_text(yaml.safe_dump(tree))
    # The run's length, its learning rates, memory use and where it runs may change; `auto` is its arch.
    meta_train(tiny_config(tmp_path, "meta.lr=1e-4", "inner.lr=5e-4", "run.log_every=1", "meta.mixflow_chunk=16",
                           "meta.mixflow_mode=reverse_over_reverse", "rater.arch=mlp"), resume=True)
    assert checkpoint.load_state(tmp_path / "run")["step"] == 6
    saved.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config.yaml:2:1: not valid YAML"):
        meta_train(tiny_config(tmp_path, "meta.steps=7"), resume=True)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from drray.meta.population import Population

    cfg = tiny_config(tmp_path)
    real_step = Population.step

    def step_then_nan(self):
        stats = real_step(self)
        if self.step_count == 5:  # the checkpoint at step 3 is the last good one
            stats.outer_loss = float("nan")
        return stats

    monkeypatch.setattr(Population, "step", step_then_nan)
    with pytest.raises(TrainingDiverged, match="step 4: outer loss nan") as info:
        meta_train(cfg)
    assert "\n" not in str(info.value)
    assert checkpoint.load_state(cfg.run.out)["step"] == 3


def test_outputs_to_a_filesystem_uri_and_resume_from_it(tmp_path, monkeypatch):
    """run.out may be any pyarrow filesystem URI; file:// goes through the same upload path."""
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))  # where the local staging copies go
    uri = f"file://{tmp_path}/remote-run"
    cfg = load_config(None, TINY + [f"run.out={uri}", "meta.steps=3"])
    summary = meta_train(cfg)
    remote = tmp_path / "remote-run"
    assert summary.out.display("metrics.jsonl") == f"{uri}/metrics.jsonl"
    assert checkpoint.load_state(remote)["step"] == 3
    assert not list(remote.rglob("*.uploading"))
    # Beside the run under its prefix: another file (never pulled or re-uploaded) and a file a cut
    # push left half-uploaded (deleted on resume).
    (remote / "notes.txt").write_text("someone else's")
    os.utime(remote / "notes.txt", (1_000_000_000, 1_000_000_000))
    (remote / "checkpoint" / "state.pt.uploading").write_bytes(b"half")
    (remote / "metrics.jsonl.uploading").write_bytes(b"half")
    meta_train(load_config(None, TINY + [f"run.out={uri}", "meta.steps=6"]), resume=True)
    assert checkpoint.load_state(remote)["step"] == 6
    assert (remote / "notes.txt").stat().st_mtime == 1_000_000_000 and not list(remote.rglob("*.uploading"))
    assert len((remote / "metrics.jsonl").read_text().splitlines()) == 6
    assert not list(staging.glob("drray-out-*"))  # each run removed its staging copy once pushed
    with pytest.raises(ConfigError, match="already holds a run"):
        meta_train(load_config(None, TINY + [f"run.out={uri}"]))



def test_auroc_every_n_steps_and_at_the_last(tmp_path):
    cfg = tiny_config(tmp_path, "run.auroc_every=4")
    meta_train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "auroc" in r] == [3, 5]


def test_mixflow_settings_reach_the_meta_problem(tmp_path):
    cfg = tiny_config(tmp_path, "meta.mixflow_mode=reverse_over_reverse", "meta.mixflow_chunk=7")
    problem = build_problem(cfg, (8, 8), 10)
    assert (problem.mixflow_mode, problem.mixflow_chunk) == ("reverse_over_reverse", 7)
    assert build_problem(tiny_config(tmp_path), (8, 8), 10).mixflow_mode == "reverse_over_reverse"  # the default
