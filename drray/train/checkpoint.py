"""Checkpoints under OUT/checkpoint/, each file written atomically (temp file + rename), so a
crash leaves the previous complete file, never a half-written one.

  state.pt     everything needed to resume: step, rater, meta-optimizer, population
  rater.pt     the rater weights alone (state_dict) with the step and what scoring needs: arch,
               row_shape, num_classes, image_size and class_names (label id -> name; None where
               the data did not name its classes)
  config.yaml  the validated config of the run
Loading uses torch.load(weights_only=True): tensors and plain containers only.
"""
from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import torch
import yaml

from drray.data.modality import describe_rows
from drray.errors import ConfigError, DrrayError
from drray.io import atomic_torch_save, atomic_write_bytes
from drray.models import build_rater

CHECKPOINT_DIR = "checkpoint"


def save_checkpoint(out: Path, state: dict, rater: dict, config: dict) -> Path:
    """rater: {"rater": state_dict, "arch", "row_shape", "num_classes", "image_size", "class_names"}:
    enough to rebuild and use the rater without the run's data."""
    directory = Path(out) / CHECKPOINT_DIR
    atomic_write_bytes(directory / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    atomic_torch_save(state, directory / "state.pt")
    atomic_torch_save({"step": state["step"], **rater}, directory / "rater.pt")
    return directory


def has_checkpoint(out: Path) -> bool:
    return (Path(out) / CHECKPOINT_DIR / "state.pt").is_file()


def load_state(out: Path) -> dict:
    return torch.load(Path(out) / CHECKPOINT_DIR / "state.pt", weights_only=True, map_location="cpu")


def load_rater_weights(run_dir: Path) -> dict:
    return torch.load(Path(run_dir) / CHECKPOINT_DIR / "rater.pt", weights_only=True, map_location="cpu")


def run_config_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / "config.yaml"


def load_run_config(run_dir: Path) -> dict:
    """The run's saved config tree; a missing or damaged file is a one-line ConfigError."""
    from drray.errors import ConfigError
    from drray.io import yaml_error

    path = run_config_path(run_dir)
    try:
        tree = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the run's config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: not a drray config (expected a mapping of sections)")
    if isinstance(tree.get("meta"), dict):
        tree["meta"].pop("optimizer", None)  # a key of earlier runs: always adam, never read
    return tree


def run_dir_of(location) -> Path:
    """The run directory a user meant: the run itself, its checkpoint/ folder or checkpoint/rater.pt."""
    path = Path(location)
    if path.name == "rater.pt" and path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    if path.name == CHECKPOINT_DIR and (path / "rater.pt").is_file():
        return path.parent
    return path


def load_rater(run_dir: Path):
    """The trained rater of a run, ready to score: (module in eval mode, checkpoint metadata).
    run_dir may also be its checkpoint folder or rater.pt. A missing, unreadable or incompatible
    rater.pt is a one-line ConfigError naming the file."""
    path = run_dir_of(run_dir) / CHECKPOINT_DIR / "rater.pt"
    if not path.is_file():
        raise ConfigError(f"{path}: no rater checkpoint; pass the --out directory of a meta-train run")
    return rater_from_bytes(path.read_bytes(), path)


def rater_from_bytes(blob: bytes, where="rater.pt"):
    """load_rater from the bytes of a rater.pt (as shipped to remote actors, which may not see the
    run directory); `where` names it in messages."""
    try:
        with warnings.catch_warnings():  # the weights-only unpickler warns about foreign pickles
            warnings.simplefilter("ignore")
            saved = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or not a torch file at all
        reason = ("damaged, or holds more than tensors and plain values" if isinstance(exc, pickle.UnpicklingError)
                  else _first_line(exc))
        raise ConfigError(f"{where}: not a readable checkpoint ({reason}); pass the --out directory of "
                          "a finished meta-train run, or meta-train again") from None
    if isinstance(saved, dict) and "image_shape" in saved:  # written before rows had one name
        saved["row_shape"] = saved.pop("image_shape")
    needed = ("rater", "arch", "row_shape", "num_classes")
    missing = [key for key in needed if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise ConfigError(f"{where}: not a drray rater checkpoint (no {', '.join(missing)}); "
                          "meta-train the rater again with this version")
    try:
        rater = build_rater(saved["arch"], tuple(saved["row_shape"]), saved["num_classes"])
        rater.load_state_dict(saved["rater"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, DrrayError):
            raise
        try:
            made = f"arch {saved['arch']}, {describe_rows(saved['row_shape'])}, {saved['num_classes']} classes"
        except Exception:  # noqa: BLE001 - malformed metadata: say so instead
            made = "unreadable metadata"
        raise ConfigError(f"{where}: the checkpoint ({made}) does not load into this version's rater of that "
                          f"config ({_first_line(exc)}); use the drray version that trained it, or retrain") from None
    info = {k: v for k, v in saved.items() if k != "rater"}
    info["class_names"] = _class_names(info.get("class_names"))
    return rater.eval(), info


def _class_names(names):
    """A checkpoint's class names as a tuple of strings; None when absent (earlier runs) or odd."""
    if isinstance(names, (list, tuple)) and names and all(isinstance(name, str) for name in names):
        return tuple(names)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
