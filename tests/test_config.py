import pytest

from drray.config import Config, load_config
from drray.errors import ConfigError
from drray.registry import RATERS


def test_every_field_has_a_default_and_source_only_config_runs(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: mnist}\n")
    cfg = load_config(path)
    assert cfg.data.source == "mnist" and cfg.inner.arch == "auto" and cfg.meta.method == "backprop"
    assert Config().model_dump() == load_config(None).model_dump()


def test_auto_method_resolves_by_T():
    """meta.method auto is backprop up to AUTO_BACKPROP_MAX_T inner steps, mixflow above; a method
    given explicitly is kept."""
    from drray.config import AUTO_BACKPROP_MAX_T

    assert load_config(None, [f"inner.T={AUTO_BACKPROP_MAX_T}"]).meta.method == "backprop"
    assert load_config(None, [f"inner.T={AUTO_BACKPROP_MAX_T + 1}"]).meta.method == "mixflow"
    assert load_config(None, ["meta.method=mixflow", "inner.T=1"]).meta.method == "mixflow"
    assert load_config(None, ["meta.method=backprop", "inner.T=32"]).meta.method == "backprop"


def test_issue_keys_work_as_written(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("""
data:   {source: idx, dir: /x, heldout_fraction: 0.1,
         corruption: [{kind: pixel_noise, fraction: 0.1}, {kind: label_flip, fraction: 0.2}]}
rater:  {arch: cnn}
inner:  {arch: mlp, optimizer: sgd, lr: 1e-3, T: 2, batch_size: 128}
population: {size: 8, lifetime: 150}
meta:   {method: backprop, lr: 3e-4, clip_norm: 5.0, steps: 1000, outer_batch_size: 128}
run:    {seed: 0, out: runs/NAME, checkpoint_every: 100}
""")
    cfg = load_config(path)
    assert cfg.inner.lr == pytest.approx(1e-3) and cfg.meta.lr == pytest.approx(3e-4)
    assert [c.kind for c in cfg.data.corruption] == ["pixel_noise", "label_flip"]
    assert cfg.meta.method == "backprop" and cfg.inner.optimizer == "sgd"


def test_set_overrides_parse_yaml_values():
    cfg = load_config(None, ["inner.T=4", "meta.clip_norm=null", "data.corruption=[{kind: label_flip, fraction: 0.4}]",
                             "run.out=runs/x"])
    assert cfg.inner.T == 4 and cfg.meta.clip_norm is None and cfg.data.corruption[0].fraction == 0.4
    assert cfg.run.out == "runs/x"


@pytest.mark.parametrize("override,expected", [
    ("inner.optimiser=sgd", "unknown key 'inner.optimiser'; allowed here: arch, optimizer"),
    ("inner.optimizer=rmsprop", "inner.optimizer: Input should be 'sgd' or 'adam'"),
    ("inner.T=0", "inner.T: Input should be greater than or equal to 1"),
    ("run.seed=-1", "run.seed: Input should be greater than or equal to 0"),  # seeds derive per model and stage
    ("bogus.key=1", "unknown key 'bogus'; allowed here: data, rater"),
    ("inner", "expected section.key=value"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("override,look_up,expected", [
    ("data.source=imagenet", "splits", "data.source: unknown source 'imagenet'; allowed: digits, "),
    ("data.corruption=[{kind: blur, fraction: 0.1}]", "splits", "data.corruption: unknown corruption 'blur'; allowed: "),
    ("rater.arch=resnet", "rater", "rater.arch: unknown arch 'resnet'; allowed: auto, cnn, "),
    ("inner.arch=resnet", "inner", "inner.arch: unknown arch 'resnet'; allowed: auto, cnn, "),
])
def test_unknown_names_are_refused_where_they_are_looked_up(override, look_up, expected):
    """The config imports no implementation, so it takes any name; the registry refuses an
    unknown one, in one line naming the key and what is allowed."""
    from drray.data.splits import build_splits
    from drray.models import build_inner, build_rater

    cfg = load_config(None, [override])
    calls = {"splits": lambda: build_splits(cfg.data, 0), "rater": lambda: build_rater(cfg.rater.arch, (8, 8), 10),
             "inner": lambda: build_inner(cfg.inner.arch, (8, 8), 10)}
    with pytest.raises(ConfigError) as info:
        calls[look_up]()
    message = str(info.value)
    assert message.startswith(expected) and "\n" not in message


def test_a_bad_override_is_blamed_on_the_set_flag_and_a_bad_file_key_on_the_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("inner: {T: 3}\n")
    with pytest.raises(ConfigError, match=r"^--set inner\.TT=4: unknown key 'inner\.TT'"):
        load_config(config, ["inner.TT=4"])
    with pytest.raises(ConfigError, match=r"^--set inner=\{T: four\}: inner\.T: Input should be a valid integer"):
        load_config(config, ["inner={T: four}"])
    with pytest.raises(ConfigError, match=r"^--set inner\.T=0: inner\.T: Input should be greater"):
        load_config(config, ["inner.T=2", "inner.T=0"])  # the override that took effect
    config.write_text("inner: {T: 0}\n")
    with pytest.raises(ConfigError, match=rf"^{config}: inner\.T: Input should be greater"):
        load_config(config, ["meta.steps=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"^{tmp_path}: a folder, not a config file$"):
        load_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == f"{bad}:2:1: not valid YAML (expected ',' or ']', but got '<stream end>')"


def test_user_registered_rater_is_accepted_by_name():
    import torch.nn as nn

    from drray.models import build_rater
    from drray.models.image import ClassConditionedRater

    @RATERS.register("test_linear_rater")
    def build(row_shape, num_classes):
        return ClassConditionedRater(nn.Sequential(nn.Flatten(), nn.Linear(row_shape[0] * row_shape[1], num_classes)))

    cfg = load_config(None, ["rater.arch=test_linear_rater"])
    rater = build_rater(cfg.rater.arch, (8, 8), 10)
    assert sum(p.numel() for p in rater.parameters()) == 64 * 10 + 10


def test_every_shipped_config_and_tune_spec_loads():
    """configs/*.yaml and benchmarks/configs/*.yaml are configs, configs/tune_*.yaml tune specs
    (every key and domain value checked): a renamed key or a removed default breaks one here."""
    from pathlib import Path

    from drray.train.search_space import load_tune_spec

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "configs").glob("*.yaml")) + sorted((root / "benchmarks" / "configs").glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        if path.name.startswith("tune_"):
            spec, _ = load_tune_spec(path)
            assert spec.space, path
        else:
            assert load_config(path).data.source, path
