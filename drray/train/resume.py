"""A run's output folder: refusing to clobber an earlier run, and checking that a resumed run
continues the same experiment."""
from __future__ import annotations

from pathlib import Path

from drray.config import Config, validate_config
from drray.errors import ConfigError
from drray.models import choose_arch
from drray.storage import RunDir, remove_local
from drray.train import checkpoint

RUN_FILES = ["metrics.jsonl", "tb", checkpoint.CHECKPOINT_DIR]


def check_run_output(run_dir: RunDir, resume: bool, overwrite: bool) -> bool:
    """Whether an earlier run in the output must be cleared (--overwrite). Removes nothing: the
    caller clears only once the run can start, so a refused run leaves the old one as it was."""
    run_dir.pull()
    out = run_dir.local
    if resume and not checkpoint.has_checkpoint(out):
        raise ConfigError(f"--resume: no checkpoint in {run_dir.display(checkpoint.CHECKPOINT_DIR)}; "
                          "run without --resume")
    # A checkpoint alone is a run too (a first upload cut short before metrics.jsonl went up).
    if resume or not ((out / "metrics.jsonl").exists() or checkpoint.has_checkpoint(out)):
        return False
    if not overwrite:
        raise ConfigError(f"{run_dir.display()} already holds a run; pass --resume to continue it, --overwrite "
                          "to replace it, or choose another --out")
    return True


def clear_run(run_dir: RunDir) -> None:
    for name in RUN_FILES:
        remove_local(run_dir.local / name)
    run_dir.clear_remote(RUN_FILES)


# What a resumed run may change: the length and pace of the run, learning rates, memory use
# (mixflow_chunk, mixflow_mode), where it runs. Anything else (data, architectures, population, T...) must match.
RESUMABLE_KEYS = ("meta.steps", "meta.lr", "meta.clip_norm", "meta.mixflow_chunk", "meta.mixflow_mode", "inner.lr",
                  "rater.warm_start_steps", "rater.warm_start_lr", "data.dir", "data.download", "resources.",
                  "run.", "evaluate.")


FIXED_RUN_KEYS = ("run.seed",)


def check_resumable(cfg: Config, out: Path, where: str, row_shape) -> None:
    """A one-line ConfigError naming the settings a resumed run changes that its checkpoint fixes."""
    saved_cfg = validate_config(checkpoint.load_run_config(out), str(checkpoint.run_config_path(out)))  # fields added since: defaults
    saved, now = (_flatten(_resolved_archs(c, row_shape).to_dict()) for c in (saved_cfg, cfg))
    changed = [key for key in sorted(saved.keys() | now.keys()) if saved.get(key) != now.get(key)
               and (key in FIXED_RUN_KEYS or not key.startswith(RESUMABLE_KEYS))]
    if changed:
        shown = ", ".join(f"{key} {saved.get(key)!r} -> {now.get(key)!r}" for key in changed[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {where}: {shown}{more}; resume "
                          "with the run's own settings, or start a new run (--out or --overwrite)")


def _resolved_archs(cfg: Config, row_shape) -> Config:
    """`auto` and the arch it stands for are the same model."""
    return cfg.model_copy(update={
        "rater": cfg.rater.model_copy(update={"arch": choose_arch(cfg.rater.arch, row_shape)}),
        "inner": cfg.inner.model_copy(update={"arch": choose_arch(cfg.inner.arch, row_shape)})})


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
