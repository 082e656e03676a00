"""A Ray Tune search over meta-training knobs, described in YAML (configs/tune_*.yaml):

    base: configs/digits.yaml          # the config every trial starts from
    set: {meta.steps: 60}              # fixed overrides for every trial
    space:                             # config key -> one domain
      inner.T: {grid: [1, 2, 4]}       #   grid (every value), choice, uniform, loguniform, randint
      population.size: {grid: [2, 4]}
      meta.lr: {loguniform: [3.0e-4, 3.0e-3]}
    metric: auroc                      # or heldout_loss (of a fresh model trained with the rater)
    report_every: 10                   # outer steps between reports; ASHA's time unit
    asha: {grace_period: 2, reduction_factor: 2}

Every key of `set` and `space` is checked against the config schema (with each grid or choice
value, and both ends of a range) before anything runs: one line naming the key if it is wrong.
"""
from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drray.config import Config, apply_override, load_config, validate_config
from drray.errors import ConfigError, DrrayError
from drray.io import yaml_error
from drray.storage import is_uri

DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Domain(_Strict):
    grid: Optional[list] = None
    choice: Optional[list] = None
    uniform: Optional[tuple[float, float]] = None
    loguniform: Optional[tuple[float, float]] = None
    randint: Optional[tuple[int, int]] = None  # [low, high): high excluded, as in tune.randint

    @model_validator(mode="after")
    def _exactly_one(self) -> "Domain":
        given = [k for k in DOMAIN_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DOMAIN_KINDS)}")
        values = getattr(self, given[0])
        if given[0] in ("grid", "choice") and not values:
            raise ValueError(f"{given[0]} needs at least one value")
        if given[0] not in ("grid", "choice") and not values[0] < values[1]:
            raise ValueError(f"{given[0]} needs [low, high] with low < high")
        if given[0] == "loguniform" and values[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DOMAIN_KINDS if getattr(self, k) is not None)

    @property
    def values(self):
        return getattr(self, self.kind)

    def probes(self) -> list:
        """Values that must each make a valid config: every listed value, or the range's ends (and,
        for a continuous range, a point inside it that is no integer: an integer key needs randint)."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        low, high = self.values
        if self.kind == "randint":
            return [low, high - 1]
        inside = low + (high - low) * (5**0.5 - 1) / 2  # the golden section: never a whole number here
        return [low, inside, high]


class AshaSpec(_Strict):
    grace_period: int = Field(2, ge=1)  # reports every trial gets before it may be stopped
    reduction_factor: float = Field(2.0, gt=1.0)


class TuneSpec(_Strict):
    base: Optional[str] = None
    set: dict[str, Any] = {}
    space: dict[str, Domain]
    metric: Literal["auroc", "heldout_loss"] = "auroc"
    num_samples: int = Field(1, ge=1)  # repeats of the grid; samples of the random domains
    report_every: int = Field(10, ge=1)
    max_concurrent: Optional[int] = Field(None, ge=1)
    trial_cpus: float = Field(0.25, gt=0.0)  # the trial's own process, beside its worker actors
    discard: float = Field(0.25, ge=0.0, lt=1.0)  # heldout_loss: the fraction the fresh model drops
    asha: AshaSpec = AshaSpec()
    # A trial that fails (its node lost, say) starts again from its last checkpoint, this many times.
    max_failures: int = Field(2, ge=0)

    @property
    def mode(self) -> str:
        return "max" if self.metric == "auroc" else "min"


def load_tune_spec(path: str | Path) -> tuple[TuneSpec, dict]:
    """(spec, base config tree with `set` applied), every key checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: tune spec not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: not a tune spec (expected a mapping with space:, and optionally base:, set:, "
                          f"metric:, ...)")
    try:
        spec = TuneSpec.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe_spec_error(exc.errors()[0])}") from None
    base_tree = _base_tree(spec, path)
    for key, value in spec.set.items():
        _check(base_tree, key, value, f"{path}: set")
    for key, domain in spec.space.items():
        if key in spec.set:
            raise ConfigError(f"{path}: {key} is both in set and in space; keep one")
        for value in domain.probes():
            _check(base_tree, key, value, f"{path}: space")
    for key, value in spec.set.items():
        apply_override(base_tree, key.split("."), value)
    _check_together(base_tree, spec, f"{path}: space")
    _absolute_data_dir(base_tree)
    return spec, base_tree


def _absolute_data_dir(tree: dict) -> None:
    """A relative data.dir made absolute against this (the driver's) working directory: Ray Tune
    runs each trial in its own directory, where the relative path would name nothing."""
    data = tree.get("data") or {}
    if data.get("dir") and not is_uri(data["dir"]):
        data["dir"] = str(Path(data["dir"]).resolve())


MAX_COMBINATIONS = 4096  # beyond this, each space key is checked alone only (above)


def _check_together(base_tree: dict, spec: TuneSpec, where: str) -> None:
    """Every combination of the space's probe values, with `set` applied: a check across sections
    (run.learner_threads with mixflow's JVP) sees the keys together, before any trial starts."""
    keys = list(spec.space)
    probes = [spec.space[key].probes() for key in keys]
    if math.prod(len(p) for p in probes) > MAX_COMBINATIONS:
        return
    for values in itertools.product(*probes):
        try:
            validate_config(_overridden(base_tree, dict(zip(keys, values))), where)
        except ConfigError as exc:
            shown = ", ".join(f"{key}={value!r}" for key, value in zip(keys, values))
            raise ConfigError(f"{exc} (with {shown})") from None


def _describe_spec_error(error: dict) -> str:
    loc = error["loc"]
    key = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":  # name what is allowed where the unknown key sits
        owner = Domain if loc[0] == "space" else AshaSpec if loc[0] == "asha" else TuneSpec
        return f"unknown key {key!r}; allowed here: {', '.join(owner.model_fields)}"
    return f"{key}: {error['msg'].removeprefix('Value error, ')}"


def _base_tree(spec: TuneSpec, path: Path) -> dict:
    if spec.base is None:
        return {}
    base = Path(spec.base)
    if not base.is_file() and (path.parent / base).is_file():
        base = path.parent / base  # relative to the spec's own directory
    if not base.is_file():
        raise ConfigError(f"{path}: base: {spec.base} not found (looked for it as given and beside the spec)")
    return load_config(base).to_dict()


def _overridden(base_tree: dict, params: dict) -> dict:
    """A copy of the config tree with `params` (flat dotted keys) applied."""
    tree = copy.deepcopy(base_tree)
    for key, value in params.items():
        apply_override(tree, key.split("."), value)
    return tree


def _check(base_tree: dict, key: str, value, where: str) -> None:
    try:
        validate_config(_overridden(base_tree, {key: value}), where)
    except ConfigError as exc:
        raise ConfigError(str(exc) if key in str(exc) else f"{exc} (key {key!r})") from None


def trial_config(base_tree: dict, params: dict, out: str) -> Config:
    """The Config of one trial: the base with the sampled `params` (flat keys) and its output dir."""
    return validate_config(_overridden(base_tree, {**params, "run.out": out}), "trial")


def check_trial_models(spec: TuneSpec, base_tree: dict) -> None:
    """Load the base config's data once and build every arch a trial may use, and load the data of
    every data.* value in the space (an unknown source or corruption kind is refused at lookup), so
    missing data or an arch that does not fit it is one line before any trial starts."""
    from drray.data.splits import build_splits
    from drray.train.loop import check_models_fit

    base = trial_config(base_tree, {}, "unused")
    splits = build_splits(base.data, base.run.seed)
    check_models_fit(base, splits)
    for key, domain in spec.space.items():
        for value in domain.probes() if key.endswith(".arch") or key.startswith("data.") else ():
            try:
                cfg = trial_config(base_tree, {key: value}, "unused")
                check_models_fit(cfg, build_splits(cfg.data, cfg.run.seed) if key.startswith("data.") else splits)
            except DrrayError as exc:
                raise type(exc)(f"space {key}={value}: {exc}") from None


def trial_rows(spec: TuneSpec, results) -> list[dict]:
    """One row per trial of a Tune ResultGrid (its sampled keys, the metric, steps, reports and
    status), best first; trials that reported no metric last."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        value = metrics.get(spec.metric)
        rows.append({**{k: result.config.get(k) for k in spec.space}, spec.metric: value,
                     "steps": metrics.get("step"), "reports": metrics.get("training_iteration"),
                     "status": "error" if result.error else "ok"})
    rows.sort(key=lambda r: (r[spec.metric] is None, -(r[spec.metric] or 0) if spec.mode == "max"
                             else (r[spec.metric] if r[spec.metric] is not None else math.inf)))
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (floats to 4 significant digits)."""
    keys = list(rows[0]) if rows else []
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
