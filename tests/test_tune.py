"""The Tune search: spec validation (one-line errors before any work) and a real search whose
trials' worker actors can only run inside the trials' placement groups."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drray.config import load_config
from drray.errors import ConfigError
from drray.train.search_space import load_tune_spec, trial_config

ROOT = Path(__file__).resolve().parents[1]


def write_spec(path: Path, **fields) -> Path:
    spec = {"base": str(ROOT / "configs" / "digits.yaml"),
            "set": {"meta.steps": 4, "data.max_train": 300, "data.probe_size": 150, "inner.batch_size": 32,
                    "meta.outer_batch_size": 32, "run.log_every": 3, "resources.cpus_per_worker": 0.5},
            "space": {"inner.T": {"grid": [1, 2]}, "population.size": {"grid": [2]},
                      "meta.lr": {"loguniform": [1e-3, 3e-3]}, "population.lifetime": {"choice": [4, 8]}},
            "report_every": 2, "trial_cpus": 1.0}
    spec.update(fields)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_spec_applies_set_and_samples_into_a_valid_config(tmp_path):
    spec, base = load_tune_spec(write_spec(tmp_path / "s.yaml"))
    assert spec.mode == "max" and base["meta"]["steps"] == 4 and base["data"]["source"] == "digits"
    cfg = trial_config(base, {"inner.T": 2, "population.size": 2, "meta.lr": 2e-3}, str(tmp_path / "t"))
    assert (cfg.inner.T, cfg.meta.lr, cfg.meta.steps, cfg.run.out) == (2, 2e-3, 4, str(tmp_path / "t"))


def test_relative_data_dir_is_made_absolute_for_the_trials(tmp_path, monkeypatch):
    """Ray Tune runs each trial in its own directory: configs/tune_mnist.yaml's base names
    data.dir relative to the checkout, which a trial would have resolved against its own."""
    monkeypatch.chdir(ROOT)
    _, base = load_tune_spec(ROOT / "configs" / "tune_mnist.yaml")
    assert base["data"]["dir"] == str((ROOT / "../shared/data/mnist").resolve())
    _, base = load_tune_spec(write_spec(tmp_path / "s.yaml", set={"data.source": "parquet", "data.dir": "s3://b/d"}))
    assert base["data"]["dir"] == "s3://b/d"  # a URI is left as it is


@pytest.mark.parametrize("fields,expected", [
    ({"space": {"inner.Tx": {"grid": [1, 2]}}}, "unknown key 'inner.Tx'"),
    ({"space": {"inner.T": {"grid": [1, 0]}}}, "inner.T"),  # T >= 1: every grid value is checked
    ({"space": {"meta.lr": {"loguniform": [0.0, 1e-3]}}}, "loguniform needs low > 0"),
    ({"space": {"inner.T": {"grid": [1], "choice": [2]}}}, "give exactly one of"),
    ({"set": {"population.sizes": 3}}, "unknown key 'population.sizes'"),
    ({"metric": "accuracy"}, "metric"),
    ({"space": {"inner.T": {"uniform": [1, 3]}}}, "inner.T: Input should be a valid integer"),  # needs randint
    ({"reprot_every": 5}, "unknown key 'reprot_every'; allowed here: base, set, space, metric"),
    ({"space": {"meta.lr": {"normal": [0, 1]}}}, "unknown key 'space.meta.lr.normal'; allowed here: grid, choice, "
                                                 "uniform, loguniform, randint"),
    ({"asha": {"grace": 3}}, "unknown key 'asha.grace'; allowed here: grace_period, reduction_factor"),
    ({"base": "nowhere.yaml"}, "base: nowhere.yaml not found (looked for it as given and beside the spec)"),
    # each key is fine alone; together they are not
    ({"set": {"meta.steps": 4, "run.backend": "local", "meta.mixflow_mode": "forward_over_reverse"},
      "space": {"run.learner_threads": {"grid": [1, 2]}, "meta.method": {"grid": ["backprop", "mixflow"]}}},
     "not thread-safe; set meta.mixflow_mode=reverse_over_reverse, meta.method=backprop or run.learner_threads=1 "
     "(with run.learner_threads=2, meta.method='mixflow')"),
])
def test_bad_spec_is_one_line(tmp_path, fields, expected):
    path = write_spec(tmp_path / "s.yaml", **fields)
    with pytest.raises(ConfigError) as info:
        load_tune_spec(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_spec_that_is_not_a_mapping_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("just some notes\n")
    with pytest.raises(ConfigError, match=r"notes.txt: not a tune spec \(expected a mapping with space:"):
        load_tune_spec(tmp_path / "notes.txt")


def run_tune(*args):
    return subprocess.run([sys.executable, "-m", "jobs.tune", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=400)


def test_trial_that_can_never_fit_is_refused_and_the_old_search_kept(tmp_path, ray_cluster):
    spec = write_spec(tmp_path / "s.yaml", space={"population.size": {"grid": [2, 4]}})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "best.yaml").write_text("an earlier search")
    result = run_tune("--spec", str(spec), "--out", str(tmp_path / "out"), "--address", ray_cluster, "--overwrite")
    assert result.returncode == 2 and (tmp_path / "out" / "best.yaml").read_text() == "an earlier search"
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the largest trial (population.size=4") and "needs 3 CPUs" in line


def test_arch_that_does_not_fit_the_data_is_refused_before_any_trial(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", space={"rater.arch": {"grid": ["mlp", "transformer_tiny"]}})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "best.yaml").write_text("an earlier search")
    result = run_tune("--spec", str(spec), "--out", str(tmp_path / "out"), "--overwrite")
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and line.startswith(f"error: {spec}: space rater.arch=transformer_tiny: "), result.stderr
    assert (tmp_path / "out" / "best.yaml").read_text() == "an earlier search"
    # Missing data, set in the spec: the error names the spec, where the fix goes.
    spec = write_spec(tmp_path / "nodata.yaml", set={"data.source": "mnist", "data.dir": str(tmp_path / "none")})
    result = run_tune("--spec", str(spec), "--out", str(tmp_path / "out"), "--overwrite")
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and line.startswith(f"error: {spec}: ") and "MNIST file missing" in line, result.stderr
    assert (tmp_path / "out" / "best.yaml").read_text() == "an earlier search"


def test_overwrite_never_deletes_files_a_search_did_not_write(tmp_path):
    """--out . or --out runs with --overwrite once meant shutil.rmtree of that folder."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("not a search")
    (tmp_path / "out" / "best.yaml").write_text("an earlier search")
    result = run_tune("--spec", str(write_spec(tmp_path / "s.yaml")), "--out", str(tmp_path / "out"), "--overwrite")
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "holds files a search did not write (precious.txt)" in line, result.stderr
    assert (tmp_path / "out" / "precious.txt").read_text() == "not a search"
    assert (tmp_path / "out" / "best.yaml").read_text() == "an earlier search"


@pytest.mark.parametrize("out,expected", [
    ("out", "error: --out {tmp}/out is a file; give a folder (new or empty) for the outputs"),
    ("out/search", "error: --out {tmp}/out/search: {tmp}/out is a file, not a folder; choose another --out"),
    ("s3://bucket/search", "error: --out s3://bucket/search: a search writes to a local folder"),
])
def test_out_that_cannot_be_a_local_folder_is_refused(tmp_path, out, expected):
    (tmp_path / "out").write_text("x")
    out = out if "://" in out else str(tmp_path / out)
    result = run_tune("--spec", str(write_spec(tmp_path / "s.yaml")), "--out", out)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        expected.format(tmp=tmp_path))
    assert (tmp_path / "out").read_text() == "x"


@pytest.mark.timeout(400)
def test_search_runs_trials_in_their_placement_groups(tmp_path, ray_cluster):
    """Each trial's group takes the whole 2-CPU cluster (1 for the trial + 2 x 0.5 for its workers),
    so the trials finish only if the worker actors run inside it."""
    out = tmp_path / "out"
    result = run_tune("--spec", str(write_spec(tmp_path / "s.yaml")), "--out", str(out), "--address", ray_cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "trials.md").read_text().splitlines()
    assert table[2].startswith("| inner.T | population.size |")
    rows = [line.split(" | ") for line in table[4:]]
    assert len(rows) == 2 and all(r[-1].strip(" |") == "ok" and r[-3] == "4" for r in rows)
    aurocs = [float(r[4]) for r in rows]
    assert aurocs == sorted(aurocs, reverse=True)  # best first (metric auroc, mode max)
    best = load_config(out / "best.yaml")
    assert (best.inner.T, best.population.size) == (int(rows[0][0].strip("| ")), int(rows[0][1]))
    assert best.meta.steps == 4 and "best:" in result.stdout
    assert (out / "tune" / "search").is_dir()


def test_heldout_loss_metric_is_a_fresh_model_trained_with_the_trials_rater(tmp_path):
    """metric: heldout_loss scores the training split with the population's current rater, trains a
    fresh model with the batch rule at spec.discard, and returns its mean held-out loss."""
    import numpy as np

    from actors.tuning import _metric_fn
    from drray.data.splits import build_splits
    from drray.evaluation.fresh import (
        Budget,
        per_example_losses,
        rater_scores,
        train_fresh,
    )
    from drray.models import build_rater
    from drray.train.loop import Prober, make_population

    spec, base = load_tune_spec(write_spec(tmp_path / "s.yaml", metric="heldout_loss", discard=0.3))
    cfg = trial_config(base, {"evaluate.steps": 20, "population.size": 2}, str(tmp_path / "t"))
    splits = build_splits(cfg.data, cfg.run.seed)
    population, prober = make_population(cfg, splits), Prober(cfg, splits)
    population.step()
    value = _metric_fn(spec, cfg)(population, prober, {})
    rater = build_rater(prober.arch, splits.row_shape, splits.num_classes)
    for p, v in zip(rater.parameters(), population.rater_params):
        p.data.copy_(v)
    scores = rater_scores(rater, splits.train)
    model = train_fresh(Budget.from_config(cfg), splits.train.rows, splits.train.labels, splits.num_classes,
                        cfg.run.seed, scores, 0.3)
    want = float(np.mean(per_example_losses(model, splits.heldout.rows, splits.heldout.labels)))
    assert spec.mode == "min" and value == pytest.approx(want, rel=1e-5) and 0.0 < value < 10.0


@pytest.mark.parametrize("space,expected", [
    ({"data.source": {"grid": ["digits", "nope"]}}, "space data.source=nope: data.source: unknown source 'nope'"),
    ({"data.corruption": {"choice": [[{"kind": "blur", "fraction": 0.1}]]}},
     "data.corruption: unknown corruption 'blur'"),
    ({"rater.arch": {"grid": ["mlp", "resnet"]}}, "space rater.arch=resnet: rater.arch: unknown arch 'resnet'"),
])
def test_unknown_names_in_the_space_are_refused_before_any_trial(tmp_path, space, expected):
    """The config takes any name (the registries check them where they are looked up): the
    search looks up every listed value before it starts."""
    from drray.train.search_space import check_trial_models

    spec, base = load_tune_spec(write_spec(tmp_path / "s.yaml", space=space))
    with pytest.raises(ConfigError) as info:
        check_trial_models(spec, base)
    assert expected in str(info.value) and "\n" not in str(info.value)
