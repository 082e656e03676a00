"""Typed configuration: YAML -> pydantic objects. Every field has a default.

`load_config(path, overrides=["inner.T=4"])` merges the file, then the `--set` overrides, and
validates. Any problem is a `ConfigError` whose message is one line naming the key. Names of
registered things (data.source, the archs, corruption kinds) are checked where they are looked up
(drray.registry), so this module needs no implementation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drray.errors import ConfigError
from drray.io import yaml_error


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CorruptionSpec(_Section):
    kind: str
    fraction: float = Field(ge=0.0, le=1.0)


class DataConfig(_Section):
    source: str = "digits"
    dir: Optional[str] = None
    # Split off one after the other, where the source has no such split: test from the whole pool,
    # then held-out from what remains (0.1 of the 0.8 left by the default test_fraction = 8% of it).
    heldout_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    corruption: list[CorruptionSpec] = []
    max_train: Optional[int] = Field(None, gt=0)  # cap the training pool (quick runs)
    probe_size: int = Field(2000, gt=0)  # fixed training examples scored for AUROC
    download: bool = False  # fetch a missing data set (online machines only)
    stream: bool = False  # parquet: read train in batches, never whole (needs heldout and test splits)
    seq_len: int = Field(128, ge=2, le=4096)  # text: bytes per sequence (shorter ones are padded)
    pattern: Optional[str] = None  # text: glob of the files in data.dir to read (default: every file)
    text_field: str = "text"  # text: the field of a JSON-lines record that holds its text
    # images: resize every image to [H, W] when loaded (Pillow, bilinear), so sets of mixed sizes load
    image_size: Optional[tuple[int, int]] = None
    # The held-out split of the outer loss: `clean` (drawn from clean rows, before corruption) or
    # `same` (drawn from the pool after corruption, at the same rate: the paper's regime, and what a
    # user's own data is). The test split is always clean: it is the judge.
    heldout: Literal["clean", "same"] = "clean"
    # The held-out split's size in rows (instead of heldout_fraction), e.g. 1000: a small clean set.
    heldout_size: Optional[int] = Field(None, gt=0)

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, size: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
        if size is not None and min(size) < 1:
            raise ValueError("give [H, W], each at least 1")
        return size

    @field_validator("corruption")
    @classmethod
    def _total_fraction(cls, specs: list[CorruptionSpec]) -> list[CorruptionSpec]:
        if sum(s.fraction for s in specs) > 1.0:
            raise ValueError("corruption fractions add up to more than 1")
        return specs

    @field_validator("stream")
    @classmethod
    def _stream_needs_prepared_parquet(cls, stream: bool, info) -> bool:
        if stream and info.data.get("source") != "parquet":
            raise ValueError("streaming reads Parquet only; set data.source=parquet")
        if stream and info.data.get("corruption"):
            raise ValueError("a streamed set is corrupted once when it is prepared, not while streaming; "
                             "remove data.corruption")
        return stream



class RaterConfig(_Section):
    arch: str = "auto"  # auto: chosen from the data's shape
    temperature: float = Field(0.3, gt=0.0)  # weights = softmax(score / temperature)
    # Class-conditioned raters: first train the rater as a classifier on the held-out split for
    # this many steps of inner.batch_size (drray.models.warm_start); 0: meta-learn from a random rater,
    # as in the paper.
    warm_start_steps: int = Field(0, ge=0)
    warm_start_lr: float = Field(1e-3, gt=0.0)


class InnerConfig(_Section):
    arch: str = "auto"
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd only
    T: int = Field(2, ge=1)  # inner steps the meta-gradient flows back through
    batch_size: int = Field(128, ge=1)


class PopulationConfig(_Section):
    # 4: AUROC as 8 gave, within the seeds' spread, at half the work per step (BENCHMARKS.md, "Defaults")
    size: int = Field(4, ge=1)
    lifetime: int = Field(150, ge=1)  # outer steps between reinitialisations of one model


# meta.method auto: backprop up to this T, mixflow above. On CPU backprop is faster at every T
# measured (mixflow takes 1.17-1.70x its time), but its memory grows 10.9 MB per inner step against
# mixflow's 3.6 (BENCHMARKS.md, "backprop and mixflow as T grows").
AUTO_BACKPROP_MAX_T = 8


class MetaConfig(_Section):
    # auto: resolved when the config is loaded (AUTO_BACKPROP_MAX_T); the run's config.yaml says which.
    method: Literal["auto", "mixflow", "backprop"] = "auto"
    lr: float = Field(1e-3, gt=0.0)  # 3e-4 learnt too slowly: AUROC 0.79 at 300 steps on digits, 1e-3 0.92
    clip_norm: Optional[float] = Field(5.0, gt=0.0)  # null: no clipping (the global norm of each meta-gradient)
    weight_decay: float = Field(0.0, ge=0.0)  # decoupled, as AdamW (the paper: 0.1)
    warmup_steps: int = Field(0, ge=0)  # the meta lr rises linearly over this many outer steps (the paper: 100)
    steps: int = Field(1000, ge=1)
    outer_batch_size: int = Field(128, ge=1)
    # mixflow: run the backward (JVP or double backward) over this many examples at a time (null: all).
    # Lowers the one transient that does not grow with T, at some speed (BENCHMARKS.md).
    mixflow_chunk: Optional[int] = Field(None, ge=1)
    # mixflow's backward: the paper's JVP, or a double backward (same gradient; less memory on CPU).
    # The double backward is the default: 1.08x backprop's time at T=16 on CPU against the JVP's 1.21x,
    # and less memory (BENCHMARKS.md, "mixflow's two backward modes").
    mixflow_mode: Literal["forward_over_reverse", "reverse_over_reverse"] = "reverse_over_reverse"


class ResourcesConfig(_Section):
    """What each inner-model actor asks Ray for. gpus_per_worker null: 1 where the cluster has GPUs."""
    cpus_per_worker: float = Field(0.25, gt=0.0)
    gpus_per_worker: Optional[float] = Field(None, ge=0.0)


class RunConfig(_Section):
    backend: Literal["ray", "local"] = "ray"  # local: the whole population in this process
    seed: int = Field(0, ge=0)
    out: str = "runs/default"
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)  # a progress line every this many steps
    auroc_every: int = Field(1, ge=1)  # score the probe set every this many steps (and at the last)
    device: str = "cpu"
    # backend local: inner models that take their meta-step at once, in threads that share torch's
    # threads (small models use one core better than two). null: on CPU one per torch thread (the
    # cores), at most the population size; on an accelerator 1; 1: one after another, each on all
    # of torch's threads. Always 1 with mixflow's JVP (forward-mode AD is not thread-safe).
    learner_threads: Optional[int] = Field(None, ge=1)


EVALUATE_METHODS = ("baseline", "datarater", "random", "loss", "loss_mid", "loss_high", "cleanlab", "oracle")


class EvaluateConfig(_Section):
    """jobs.evaluate: fresh models trained with the inner section's optimizer, lr and batch size."""
    steps: int = Field(1000, ge=1)  # training steps of every fresh model, whatever the method
    arch: Optional[str] = None  # the fresh models' arch (null: inner.arch), e.g. a larger one for transfer
    # label: every selection keeps each class's share of what it draws (none: the top scores, whatever
    # their class). Data without labels (text) is never stratified.
    stratify: Literal["label", "none"] = "label"
    folds: int = Field(5, ge=2)  # cleanlab: K of the K-fold cross-validation for out-of-sample probabilities
    seeds: int = Field(5, ge=1)
    # Measure each model on at most this many rows of the test and held-out splits (a fixed seeded
    # subset, the same for every run); null: all. A language model's forward pass is costly.
    max_eval_rows: Optional[int] = Field(None, ge=1)
    discard: list[float] = [0.1, 0.25, 0.5]
    # `oracle` (opt-in: needs ground truth) keeps the uncorrupted rows first: the upper bound of any score.
    methods: list[Literal[EVALUATE_METHODS]] = ["baseline", "datarater", "random", "loss"]

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError("give at least one method")
        return methods

    @field_validator("discard")
    @classmethod
    def _fractions(cls, discard: list[float]) -> list[float]:
        bad = [d for d in discard if not 0.0 <= d < 1.0]
        if not discard:
            raise ValueError("give at least one discard fraction, each in [0, 1)")
        if bad:
            raise ValueError(f"each discard fraction must be in [0, 1); {', '.join(map(str, bad))} is not")
        return sorted(set(discard))


class Config(_Section):
    data: DataConfig = DataConfig()
    rater: RaterConfig = RaterConfig()
    inner: InnerConfig = InnerConfig()
    population: PopulationConfig = PopulationConfig()
    meta: MetaConfig = MetaConfig()
    resources: ResourcesConfig = ResourcesConfig()
    run: RunConfig = RunConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _resolve_auto_method(self) -> "Config":
        if self.meta.method == "auto":
            self.meta.method = "backprop" if self.inner.T <= AUTO_BACKPROP_MAX_T else "mixflow"
        return self

    @model_validator(mode="after")
    def _threads_need_reverse_mode(self) -> "Config":
        if self.run.backend == "local" and (self.run.learner_threads or 1) > 1 and uses_forward_mode_ad(self):
            raise ValueError(f"run.learner_threads={self.run.learner_threads}: PyTorch's forward-mode AD (mixflow's "
                             "JVP) is not thread-safe; set meta.mixflow_mode=reverse_over_reverse, meta.method="
                             "backprop or run.learner_threads=1")
        return self


def uses_forward_mode_ad(cfg: Config) -> bool:
    return cfg.meta.method == "mixflow" and cfg.meta.mixflow_mode == "forward_over_reverse"


def parse_override(text: str) -> tuple[list[str], Any]:
    """'inner.T=4' -> (['inner', 'T'], 4); the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set inner.T=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _describe(error: dict, model: type[BaseModel]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if not key:  # a check across sections names its keys itself
        return error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, error["loc"][:-1])
        return f"unknown key {key!r}; allowed here: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message} (got {error.get('input')!r})"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def validate_config(tree: dict, origin: str = "config", overrides: list[str] = (),
                    typed_as: Optional[dict[str, str]] = None) -> Config:
    """origin: where the tree came from (a file); a bad key that an override set is blamed on it."""
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        blamed = _blame(first, origin, overrides)
        blamed = (typed_as or {}).get(blamed.removeprefix("--set "), blamed)
        raise ConfigError(f"{blamed}: {_describe(first, Config)}") from None


def _blame(error: dict, origin: str, overrides: list[str]) -> str:
    key = ".".join(str(p) for p in error["loc"] if isinstance(p, str))
    if not key:  # a check across sections: the last override among the keys its message names
        named = [text for text in overrides if text.partition("=")[0].strip() in error["msg"]]
        return f"--set {named[-1]}" if named else origin
    for text in reversed(overrides):  # the last override of a key is the one that took effect
        set_key = text.partition("=")[0].strip()
        if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
            return f"--set {text}"
    return origin


def load_config(path: Optional[str | Path] = None, overrides: list[str] = (),
                typed_as: Optional[dict[str, str]] = None) -> Config:
    """typed_as: override -> how the user typed it (a job's flag that sets one key), for messages."""
    tree: dict = {}
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: {'a folder, not a config file' if path.is_dir() else 'config file not found'}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise yaml_error(path, exc) from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return validate_config(tree, origin, overrides, typed_as)
