"""The GPU check: drray's meta-learning on one accelerator, with torch and drray's own code alone (no Ray).

    python -m benchmarks.gpu_check                       # on a GPU: the full check, <= 5 minutes
    python -m benchmarks.gpu_check --device cpu --small  # tiny sizes on a CPU (tests/test_gpu_check.py)
    make gpu-check [PY=python3] [GPU_CHECK_ARGS="--out PATH"]

Four sections, each written to the JSON as soon as it ends (a section that fails records its error
and the others still run; a time guard per section cuts a section short rather than the run):

  population  the in-process population (run.backend=local) on the device: configs/mnist.yaml's
              settings (CNN inner models and rater, 40% label flips), 4 learners, 50 outer steps;
              seconds per outer step and the probe AUROC it reaches (every 10 steps and at the end).
              Data: MNIST where its IDX files are found (--mnist-dir, else ./.mnist or
              ../shared/data/mnist), else a seeded synthetic 28x28 set (10 class templates, shifts,
              noise) with the same label flips; the JSON says which ("data").
  gradients   mixflow (both MIXFLOW_MODES) against backprop on the device, float32 with TF32 off:
              the MNIST CNN (relative error of the meta-gradient <= 1e-5, as tests/test_metagrad.py)
              and the registered transformers (<= 1e-4, as tests/test_text.py).
  t_sweep     T in {1, 2, 4, 8, 16, 32}: peak device memory (torch.cuda.max_memory_allocated, minus
              what was allocated before the step) and median seconds per outer step of backprop and
              mixflow, on a causal byte LM large enough that activations dominate (d_model 256,
              4 layers, 4 heads, seq_len 256, batch 32; transformer rater d 32, 2 layers). One warm-up
              step, then --repeats timed ones between torch.cuda.synchronize() calls. MixFlow-MG
              reports >10x less memory and up to 25% less time than standard meta-gradients here.
              An out-of-memory configuration is recorded as such and the sweep goes on.
  scoring     rows/s of drray.curation.scoring.score_table (what jobs.score runs per batch: Arrow
              rows in, decoded, the rater prepared by for_scoring) on the device against the same
              code on the CPU; the MNIST cnn rater, synthetic 28x28 rows.

On --device cpu memory is null (no allocator statistics). --small: synthetic data, 2 learners,
4 steps, T in {1, 2} on a tiny LM, a few thousand rows scored. The JSON (--out, default
runs/gpu_check.json) holds every number; a short table, one line per section, ends the output.
Exit status 1 when a section failed or the gradients disagree.

On a GPU machine whose python3 has torch, numpy, pyarrow and pyyaml but no pydantic: fetch the
missing wheels where pip works, into a git-ignored .whl/ beside the checkout (and, optionally,
copy MNIST into a git-ignored .mnist/, ~11 MB), take both along, and install them there first:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing-extensions==4.16.0
    mkdir -p .mnist && cp ../shared/data/mnist/*.gz .mnist/

    # on the GPU machine
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    timeout 400 python3 -m benchmarks.gpu_check --mnist-dir .mnist --out runs/gpu_check.json

(Without .mnist the population runs on the synthetic set.)
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "runs/gpu_check.json"
SECTIONS = ("population", "gradients", "t_sweep", "scoring")
# Share of the time budget of each section (what one leaves unused goes to the ones after it).
SHARES = {"population": 0.30, "gradients": 0.12, "t_sweep": 0.43, "scoring": 0.15}
METHODS = ("backprop", "mixflow")
MNIST_CANDIDATES = (ROOT / ".mnist", ROOT.parent / "shared" / "data" / "mnist")
SYNTHETIC_SOURCE = "gpu_check_synthetic"
# Tolerances of the CPU tests: tests/test_metagrad.py (images) and tests/test_text.py (transformers).
TOLERANCE = {"image": 1e-5, "text": 1e-4}

FULL = {
    "population": {"size": 4, "steps": 50, "batch": 128, "probe": 2000, "auroc_every": 10,
                   "synthetic_pool": 60000, "synthetic_test": 10000},
    "gradients": {"image_batch": 64, "T": 3, "text_arch": "transformer", "text_seq": 64, "text_batch": 16},
    "t_sweep": {"T": (1, 2, 4, 8, 16, 32), "seq_len": 256, "d_model": 256, "layers": 4, "heads": 4, "batch": 32,
                "rater": (32, 2, 2), "repeats": 3},
    "scoring": {"cpu_rows": 16384, "device_rows": 131072, "large_chunk": 8192, "repeats": 3},
}
SMALL = {
    "population": {"size": 2, "steps": 4, "batch": 32, "probe": 200, "auroc_every": 2,
                   "synthetic_pool": 1500, "synthetic_test": 300},
    "gradients": {"image_batch": 8, "T": 2, "text_arch": "transformer_tiny", "text_seq": 32, "text_batch": 4},
    "t_sweep": {"T": (1, 2), "seq_len": 32, "d_model": 32, "layers": 1, "heads": 2, "batch": 4,
                "rater": (16, 1, 2), "repeats": 2},
    "scoring": {"cpu_rows": 2048, "device_rows": 2048, "large_chunk": 1024, "repeats": 2},
}


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- device helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak bytes a region allocates on a CUDA device over what was allocated when it started
    (None elsewhere)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = None

    def start(self) -> None:
        if self.device.type != "cuda":
            return
        release(self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)

    def peak_mb(self):
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - self.baseline) / 2**20


class Precision:
    """float32 without TF32 inside the block (matmuls and cuDNN convolutions), as on a CPU."""

    def __enter__(self):
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
        return False


def precision_settings() -> dict:
    return {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "loadavg": list(os.getloadavg())}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)
    return info


def relative_error(a, b) -> float:
    """||a - b|| / ||b|| over a tuple of tensors (tests/test_metagrad.py's measure)."""
    num = torch.sqrt(sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b)))
    den = torch.sqrt(sum((y.double() ** 2).sum() for y in b))
    return (num / den).item()


# ---------------------------------------------------------------- data

SYNTHETIC_SIZES = {"pool": 60000, "test": 10000, "seed": 0}


def synthetic_images(n: int, seed: int, num_classes: int = 10, side: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """n seeded MNIST-shaped uint8 images [n, 28, 28] and labels: each class a fixed blocky template
    (the same for every seed), shifted by up to 2 pixels, scaled in brightness, plus noise."""
    templates = np.kron(np.random.default_rng(12345).random((num_classes, side // 4, side // 4)) < 0.35,
                        np.ones((4, 4))).astype(np.float32)  # [C, side, side] in {0, 1}
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = np.empty((n, side, side), dtype=np.uint8)
    for start in range(0, n, 8192):  # chunks: float32 work arrays stay small
        y = labels[start:start + 8192]
        m = len(y)
        base = templates[y]
        shifts = rng.integers(-2, 3, size=(m, 2))
        shifted = np.empty_like(base)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                pick = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                if pick.any():
                    shifted[pick] = np.roll(base[pick], (dy, dx), axis=(1, 2))
        pixels = shifted * rng.uniform(150, 255, size=(m, 1, 1)) + rng.normal(0, 40, size=(m, side, side))
        images[start:start + m] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return images, labels


def synthetic_source(cfg):
    """The `gpu_check_synthetic` data source: (pool, test) of SYNTHETIC_SIZES."""
    from drray.data.examples import ExampleSet

    n_pool, n_test, seed = SYNTHETIC_SIZES["pool"], SYNTHETIC_SIZES["test"], SYNTHETIC_SIZES["seed"]
    images, labels = synthetic_images(n_pool + n_test, seed)
    ids = np.arange(n_pool + n_test)
    pool = ExampleSet.clean(ids[:n_pool], images[:n_pool], labels[:n_pool], 10)
    test = ExampleSet.clean(ids[n_pool:], images[n_pool:], labels[n_pool:], 10)
    return pool, test


def register_synthetic_source() -> None:
    from drray.registry import DATA_SOURCES

    if SYNTHETIC_SOURCE not in DATA_SOURCES:
        DATA_SOURCES.register(SYNTHETIC_SOURCE)(synthetic_source)


def has_mnist(folder: Path) -> bool:
    return all((folder / name).is_file() or (folder / f"{name}.gz").is_file()
               for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def choose_data(args) -> dict:
    """{"source": "mnist", "dir": ...} or {"source": "synthetic", ...}, with the reason."""
    if args.data == "synthetic" or (args.data == "auto" and args.small and args.mnist_dir is None):
        return {"source": "synthetic", "why": "--data synthetic" if args.data == "synthetic" else "--small"}
    candidates = [Path(args.mnist_dir)] if args.mnist_dir else list(MNIST_CANDIDATES)
    for folder in candidates:
        folder = folder if folder.is_absolute() else (Path.cwd() / folder)
        if has_mnist(folder):
            return {"source": "mnist", "dir": str(folder.resolve()), "why": f"MNIST IDX files in {folder}"}
    if args.data == "mnist":
        raise SystemExit(f"--data mnist: no MNIST IDX files in {', '.join(map(str, candidates))}")
    return {"source": "synthetic", "why": f"no MNIST IDX files in {', '.join(map(str, candidates))}"}


# ---------------------------------------------------------------- sections

def section_population(ctx: dict, deadline: float) -> dict:
    from drray.config import load_config
    from drray.data.splits import build_splits
    from drray.train.loop import Prober, make_population

    size, device = ctx["size"]["population"], ctx["device"]
    data = choose_data(ctx["args"])
    overrides = [f"run.device={device}", "run.backend=local", f"run.seed={ctx['args'].seed}",
                 f"population.size={size['size']}", f"meta.steps={size['steps']}",
                 f"inner.batch_size={size['batch']}", f"meta.outer_batch_size={size['batch']}",
                 f"data.probe_size={size['probe']}", "inner.arch=cnn", "rater.arch=cnn"]
    if data["source"] == "mnist":
        overrides += ["data.source=mnist", f"data.dir={data['dir']}"]
    else:
        register_synthetic_source()
        SYNTHETIC_SIZES.update(pool=size["synthetic_pool"], test=size["synthetic_test"], seed=ctx["args"].seed)
        overrides += [f"data.source={SYNTHETIC_SOURCE}", "data.dir=null"]
        data.update(pool=size["synthetic_pool"], test=size["synthetic_test"])
    user_keys = {text.partition("=")[0].strip() for text in ctx["args"].set}
    overrides = [o for o in overrides if o.partition("=")[0] not in user_keys] + list(ctx["args"].set)
    cfg = load_config(ROOT / "configs" / "mnist.yaml", overrides)
    started = time.perf_counter()
    splits = build_splits(cfg.data, cfg.run.seed)
    data.update(train=len(splits.train), heldout=len(splits.heldout), probe=len(splits.probe),
                corrupted_train_fraction=float(splits.train.is_corrupted.mean()),
                corruption=[c.model_dump() for c in cfg.data.corruption], load_s=time.perf_counter() - started)
    log(f"population: data {data['source']} ({data['why']}), {data['train']} training rows, "
        f"{data['corrupted_train_fraction']:.0%} corrupted")
    population = make_population(cfg, splits)
    prober = Prober(cfg, splits)
    learner_device = str(population.learners[0].theta[0].device)
    times, curve, truncated = [], [], False
    for step in range(cfg.meta.steps):
        if step and time.monotonic() > deadline:
            truncated = True
            log(f"population: time guard after {step} steps")
            break
        t0 = time.perf_counter()
        stats = population.step()  # the meta-gradients come back to the CPU: the device has finished
        times.append(time.perf_counter() - t0)
        if not (math.isfinite(stats.outer_loss) and math.isfinite(stats.meta_grad_norm)):
            raise RuntimeError(f"step {step}: outer loss {stats.outer_loss}, meta-gradient norm "
                               f"{stats.meta_grad_norm}: not finite")
        if (step + 1) % size["auroc_every"] == 0 or step + 1 == cfg.meta.steps:
            auroc = prober.auroc(population.rater_params)
            curve.append({"step": step + 1, "auroc": auroc, "outer_loss": stats.outer_loss})
            log(f"population: step {step + 1}/{cfg.meta.steps}  outer loss {stats.outer_loss:.4f}  "
                f"AUROC {auroc:.3f}  {times[-1]:.3f} s/step")
    steps_done = len(times)
    if not curve or curve[-1]["step"] != steps_done:
        curve.append({"step": steps_done, "auroc": prober.auroc(population.rater_params),
                      "outer_loss": stats.outer_loss})
    steady = times[1:] or times
    return {"device": str(device), "learner_device": learner_device, "backend": cfg.run.backend,
            "learners": cfg.population.size, "steps": cfg.meta.steps, "steps_done": steps_done,
            "truncated": truncated, "method": cfg.meta.method, "T": cfg.inner.T, "batch": cfg.inner.batch_size,
            "inner_arch": cfg.inner.arch, "rater_arch": cfg.rater.arch, "data": data,
            "first_step_s": times[0], "sec_per_step": statistics.median(steady),
            "train_s": sum(times), "auroc": curve[-1]["auroc"], "auroc_curve": curve,
            "precision": precision_settings(), "overrides": overrides}


def image_batches(n, size, device, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 1, 28, 28, generator=g).to(device), torch.randint(0, 10, (size,), generator=g).to(device))
            for _ in range(n)]


def token_batches(n, size, seq_len, device, seed, ragged: bool):
    """Byte sequences [size, seq_len]: ragged ones padded after a random length (masks exercised)."""
    from drray.data.tokenizer import PAD

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(32, 127, (size, seq_len), generator=g)
        if ragged:
            lengths = torch.randint(3, seq_len + 1, (size, 1), generator=g)
            tokens = torch.where(torch.arange(seq_len)[None, :] < lengths, tokens, torch.full_like(tokens, PAD))
        out.append((tokens.to(device), torch.zeros(size, dtype=torch.long, device=device)))
    return out


def params_on(module, device):
    return tuple(p.detach().clone().to(device) for p in module.parameters())


def section_gradients(ctx: dict, deadline: float) -> dict:
    from drray.data.modality import ImageModality, TextModality
    from drray.meta.inner_optim import SGD, Adam
    from drray.meta.metagrad import MIXFLOW_MODES, MetaProblem, meta_step
    from drray.models import build_inner, build_rater

    size, device = ctx["size"]["gradients"], ctx["device"]
    T = size["T"]
    seq = size["text_seq"]
    cases = [
        ("mnist cnn", "image", "adam", Adam(lr=1e-3), lambda: (build_inner("cnn", (28, 28), 10),
                                                              build_rater("cnn", (28, 28), 10)), ImageModality,
         lambda: (image_batches(T, size["image_batch"], device, 1), image_batches(1, size["image_batch"], device, 2)[0])),
        ("mnist cnn", "image", "sgd", SGD(lr=0.1, momentum=0.9), lambda: (build_inner("cnn", (28, 28), 10),
                                                                         build_rater("cnn", (28, 28), 10)),
         ImageModality,
         lambda: (image_batches(T, size["image_batch"], device, 1), image_batches(1, size["image_batch"], device, 2)[0])),
        (size["text_arch"], "text", "adam", Adam(lr=1e-3),
         lambda: (build_inner(size["text_arch"], (seq,), 1), build_rater(size["text_arch"], (seq,), 1)), TextModality,
         lambda: (token_batches(T, size["text_batch"], seq, device, 1, True),
                  token_batches(1, size["text_batch"], seq, device, 2, True)[0])),
    ]
    checks, truncated = [], False
    with Precision():
        for name, kind, opt_name, optimizer, build, modality, make_batches in cases:
            if checks and time.monotonic() > deadline:
                truncated = True
                log("gradients: time guard")
                break
            torch.manual_seed(0)
            inner, rater = build()
            problem = MetaProblem(inner.to(device), rater.to(device), optimizer, temperature=0.3, modality=modality)
            theta, eta = params_on(inner, device), params_on(rater, device)
            inner_b, outer_b = make_batches()
            ref = meta_step(problem, "backprop", theta, optimizer.init(theta), eta, inner_b, outer_b)
            grad_norm = math.sqrt(sum((g.double() ** 2).sum().item() for g in ref.grad))
            for mode in MIXFLOW_MODES:
                problem.mixflow_mode = mode
                mix = meta_step(problem, "mixflow", theta, optimizer.init(theta), eta, inner_b, outer_b)
                grad_err, theta_err = relative_error(mix.grad, ref.grad), relative_error(mix.theta, ref.theta)
                tol = TOLERANCE[kind]
                agree = bool(math.isfinite(grad_err) and grad_err <= tol and grad_norm > 0)
                checks.append({"model": name, "kind": kind, "optimizer": opt_name, "mixflow_mode": mode, "T": T,
                               "batch": len(outer_b[1]), "grad_rel_error": grad_err, "theta_rel_error": theta_err,
                               "outer_loss_backprop": ref.outer_loss, "outer_loss_mixflow": mix.outer_loss,
                               "backprop_grad_norm": grad_norm, "tolerance": tol, "agree": agree})
                log(f"gradients: {name} {opt_name} {mode}: relative error {grad_err:.2e} (tolerance {tol:g}) "
                    f"{'agree' if agree else 'DISAGREE'}")
            del problem, inner, rater, ref, mix
            release(device)
    errors = [c["grad_rel_error"] for c in checks]
    return {"device": str(device), "dtype": "float32", "precision": "TF32 off (matmul and cuDNN)",
            "checks": checks, "max_grad_rel_error": max(errors) if errors else None,
            "max_error_over_tolerance": max(c["grad_rel_error"] / c["tolerance"] for c in checks) if checks else None,
            "all_agree": bool(checks) and all(c["agree"] for c in checks), "truncated": truncated}


def section_t_sweep(ctx: dict, deadline: float) -> dict:
    from drray.data.modality import TextModality
    from drray.meta.inner_optim import Adam
    from drray.meta.metagrad import MetaProblem, meta_step
    from drray.models.text import TransformerLM, TransformerRater

    size, device = ctx["size"]["t_sweep"], ctx["device"]
    seq, batch, repeats = size["seq_len"], size["batch"], size["repeats"]
    torch.manual_seed(0)
    inner = TransformerLM(seq, size["d_model"], size["layers"], size["heads"]).to(device)
    rater = TransformerRater(seq, *size["rater"]).to(device)
    optimizer = Adam(lr=1e-3)
    problem = MetaProblem(inner, rater, optimizer, temperature=0.3, modality=TextModality)
    theta, eta = params_on(inner, device), params_on(rater, device)
    model = {"inner": f"TransformerLM(seq_len={seq}, d_model={size['d_model']}, layers={size['layers']}, "
                      f"heads={size['heads']})", "rater": f"TransformerRater(d_model, layers, heads={size['rater']})",
             "inner_params": sum(t.numel() for t in theta), "rater_params": sum(e.numel() for e in eta),
             "batch": batch, "outer_batch": batch, "inner_optimizer": "adam"}
    log(f"t_sweep: {model['inner']}, {model['inner_params']:,} parameters, batch {batch}")
    all_batches = token_batches(max(size["T"]) + 1, batch, seq, device, 3, ragged=False)
    rows, last = [], {}
    memory = PeakMemory(device)
    for T in size["T"]:
        inner_b, outer_b = all_batches[:T], all_batches[T]
        grads = {}
        for method in METHODS:
            row = {"T": T, "method": method}
            if method in last:  # time ~ linear in T: skip what would overrun the guard
                estimate = last[method]["sec_per_step"] * T / last[method]["T"] * (repeats + 1)
                if time.monotonic() + estimate > deadline:
                    row["skipped"] = f"time guard (estimated {estimate:.1f} s)"
                    rows.append(row)
                    log(f"t_sweep: T={T} {method}: skipped, {row['skipped']}")
                    continue

            def step(method=method, inner_b=inner_b, outer_b=outer_b):
                return meta_step(problem, method, theta, optimizer.init(theta), eta, inner_b, outer_b)

            try:
                memory.start()
                result = step()  # warm-up (allocator, kernels); its peak counts: it is the same step
                sync(device)
                times = []
                for _ in range(repeats):
                    result = None
                    sync(device)
                    t0 = time.perf_counter()
                    result = step()
                    sync(device)
                    times.append(time.perf_counter() - t0)
                peak = memory.peak_mb()
                grads[method] = tuple(g.detach().clone() for g in result.grad)
                row.update(sec_per_step=statistics.median(times), sec_min=min(times), sec_all=times,
                           peak_mb=peak, outer_loss=result.outer_loss)
                last[method] = row
                result = None
            except torch.cuda.OutOfMemoryError as exc:
                result = None
                row.update(oom=True, error=str(exc).splitlines()[0])
            release(device)
            rows.append(row)
            if row.get("oom"):
                log(f"t_sweep: T={T} {method}: out of memory")
            else:
                mem = "" if row["peak_mb"] is None else f"  +{row['peak_mb']:.0f} MB peak"
                log(f"t_sweep: T={T:<3} {method:<9} {row['sec_per_step']:.4f} s/step{mem}")
        if len(grads) == 2:
            rows[-1]["grad_rel_error_vs_backprop"] = relative_error(grads["mixflow"], grads["backprop"])
    per_T = []
    for T in size["T"]:
        b, m = ({r["method"]: r for r in rows if r["T"] == T}.get(k, {}) for k in METHODS)
        entry = {"T": T}
        if "sec_per_step" in b and "sec_per_step" in m:
            entry["time_mixflow_over_backprop"] = m["sec_per_step"] / b["sec_per_step"]
        if b.get("peak_mb") and m.get("peak_mb") is not None:
            entry["memory_mixflow_over_backprop"] = m["peak_mb"] / b["peak_mb"]
        if b.get("oom") and not m.get("oom") and "sec_per_step" in m:
            entry["backprop_oom"] = True
        per_T.append(entry)
    return {"device": str(device), "model": model, "T_values": list(size["T"]), "repeats": repeats,
            "memory": "torch.cuda.max_memory_allocated during the warm-up and timed steps minus "
                      "torch.cuda.memory_allocated before them (MB); null on CPU",
            "precision": precision_settings(), "rows": rows, "per_T": per_T,
            "complete": all("sec_per_step" in r for r in rows)}


def scoring_table(n: int, seed: int):
    import pyarrow as pa

    images, labels = synthetic_images(n, seed)
    return pa.table({
        "id": pa.array(np.arange(n), pa.int64()),
        "image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1), pa.uint8()), 28 * 28),
        "shape": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([28, 28], n), pa.int32()), 2),
        "label": pa.array(labels, pa.int64()),
    })  # fmt: skip


def section_scoring(ctx: dict, deadline: float) -> dict:
    from drray.curation.scoring import CHUNK_ROWS, for_scoring, score_table
    from drray.models import build_rater

    size, device = ctx["size"]["scoring"], ctx["device"]
    repeats = size["repeats"]
    n_device = size["device_rows"] if device.type != "cpu" else size["cpu_rows"]
    table = scoring_table(max(size["cpu_rows"], n_device), ctx["args"].seed)
    torch.manual_seed(0)
    template = build_rater("cnn", (28, 28), 10).eval()
    runs = [("cpu", size["cpu_rows"], CHUNK_ROWS)]
    if device.type != "cpu":
        runs += [(str(device), n_device, CHUNK_ROWS), (str(device), n_device, size["large_chunk"])]
    results, scores, truncated = [], {}, False
    for where, n, chunk in runs:
        if results and time.monotonic() > deadline:
            truncated = True
            log("scoring: time guard")
            break
        dev = torch.device(where)
        rater = for_scoring(copy.deepcopy(template), dev)
        part = table.slice(0, n)
        score_table(rater, part.slice(0, min(n, 2 * chunk)), (28, 28), 10, device=dev, chunk_rows=chunk)  # warm-up
        times = []
        for _ in range(repeats):
            sync(dev)
            t0 = time.perf_counter()
            out = score_table(rater, part, (28, 28), 10, device=dev, chunk_rows=chunk)
            sync(dev)
            times.append(time.perf_counter() - t0)
        column = out.column("score").to_numpy()
        if len(column) != n or not np.isfinite(column).all():
            raise RuntimeError(f"scoring on {where}: {len(column)} scores for {n} rows, or some not finite")
        scores.setdefault(where, column)
        sec = statistics.median(times)
        results.append({"device": where, "rows": n, "chunk_rows": chunk, "sec": sec, "sec_all": times,
                        "rows_per_s": n / sec, "torch_threads": torch.get_num_threads()})
        log(f"scoring: {where} chunks of {chunk}: {n / sec:,.0f} rows/s ({n} rows, {sec:.3f} s)")
        del rater
        release(dev)
    cpu = next(r for r in results if r["device"] == "cpu")
    dev_runs = [r for r in results if r["device"] != "cpu"] or [cpu]
    best = max(dev_runs, key=lambda r: r["rows_per_s"])
    agreement = None
    if str(device) in scores:
        k = min(len(scores["cpu"]), len(scores[str(device)]))
        agreement = float(np.abs(scores["cpu"][:k] - scores[str(device)][:k]).max())
    return {"device": str(device), "rater": "cnn (28x28, 10 classes, seed 0)",
            "code": "drray.curation.scoring.score_table on for_scoring(rater, device)", "runs": results,
            "cpu_rows_per_s": cpu["rows_per_s"], "device_rows_per_s": best["rows_per_s"],
            "device_chunk_rows": best["chunk_rows"], "speedup": best["rows_per_s"] / cpu["rows_per_s"],
            "max_abs_score_diff_cpu_vs_device": agreement, "truncated": truncated}


SECTION_FUNCTIONS = {"population": section_population, "gradients": section_gradients,
                     "t_sweep": section_t_sweep, "scoring": section_scoring}


# ---------------------------------------------------------------- report

def summary_lines(report: dict) -> list[str]:
    lines = []
    for name in SECTIONS:
        s = report["sections"].get(name)
        if s is None:
            lines.append(f"{name:<11} not run")
            continue
        if "error" in s:
            lines.append(f"{name:<11} FAILED: {s['error']}")
            continue
        cut = " (cut short by the time guard)" if s.get("truncated") else ""
        if name == "population":
            lines.append(f"{name:<11} {s['learner_device']}, {s['learners']} learners ({s['method']}, T={s['T']}), "
                         f"{s['steps_done']}/{s['steps']} steps on {s['data']['source']}: AUROC {s['auroc']:.3f}, "
                         f"{s['sec_per_step']:.3f} s/step{cut}")
        elif name == "gradients":
            lines.append(f"{name:<11} mixflow vs backprop, {len(s['checks'])} checks: max relative error "
                         f"{s['max_grad_rel_error']:.1e} ({s['max_error_over_tolerance']:.2f} of tolerance): "
                         f"{'agree' if s['all_agree'] else 'DISAGREE'}{cut}")
        elif name == "t_sweep":
            parts = []
            for T in s["T_values"]:
                by = {r["method"]: r for r in s["rows"] if r["T"] == T}
                cells = []
                for method in METHODS:
                    r = by.get(method, {})
                    if "sec_per_step" in r:
                        mem = "" if r["peak_mb"] is None else f"/{r['peak_mb']:.0f}MB"
                        cells.append(f"{r['sec_per_step']:.3g}s{mem}")
                    else:
                        cells.append("oom" if r.get("oom") else "skip")
                parts.append(f"T{T} " + " vs ".join(cells))
            both = [p for p in s["per_T"] if "time_mixflow_over_backprop" in p]
            headline = ""
            if both:
                top = both[-1]
                mem = top.get("memory_mixflow_over_backprop")
                headline = (f" | mixflow/backprop at T={top['T']}: time {top['time_mixflow_over_backprop']:.2f}x"
                            + ("" if mem is None else f", memory {mem:.3f}x"))
            lines.append(f"{name:<11} backprop vs mixflow (s/step[/peak MB]): " + "; ".join(parts) + headline)
        elif name == "scoring":
            lines.append(f"{name:<11} {s['device']} {s['device_rows_per_s']:,.0f} rows/s (chunks of "
                         f"{s['device_chunk_rows']}) vs cpu {s['cpu_rows_per_s']:,.0f} rows/s: "
                         f"{s['speedup']:.1f}x{' (the device is the CPU)' if s['device'] == 'cpu' else ''}{cut}")
    return lines


def clean(value):
    """JSON without NaN/inf (null instead)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(clean(report), indent=2) + "\n")
    os.replace(partial, path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--small", action="store_true", help="tiny sizes (a CPU test run)")
    p.add_argument("--out", default=DEFAULT_OUT, help="the JSON report (default: %(default)s)")
    p.add_argument("--budget-s", type=float, default=270.0,
                   help="time budget of all sections together, shared by SHARES (default: %(default)s)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--data", choices=("auto", "mnist", "synthetic"), default="auto",
                   help="population data: auto = MNIST when found (synthetic with --small), else synthetic")
    p.add_argument("--mnist-dir", default=None,
                   help=f"MNIST IDX folder (default: the first of {', '.join(str(c) for c in MNIST_CANDIDATES)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the population section, e.g. --set meta.method=mixflow")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    wall0 = time.monotonic()
    out = Path(args.out)
    device = torch.device(args.device)
    report = {"command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "small": args.small, "device": str(device),
              "sections": {}}
    if device.type == "cuda" and not torch.cuda.is_available():
        report["error"] = f"--device {args.device}: torch {torch.__version__} sees no CUDA device"
        write(report, out)
        log(report["error"] + f"; wrote {out}")
        return 1
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.zeros(1, device=device)  # the CUDA context, outside the sections' clocks
        report["device"] = str(device)
    report["machine"] = machine_info(device)
    log(f"device {device} ({report['machine'].get('gpu', 'cpu')}), torch {torch.__version__}, "
        f"budget {args.budget_s:.0f} s, out {out}")
    write(report, out)
    ctx = {"args": args, "device": device, "size": SMALL if args.small else FULL}
    end = time.monotonic() + args.budget_s
    todo = [name for name in SECTIONS if name in args.sections]
    for i, name in enumerate(todo):
        now = time.monotonic()
        share = SHARES[name] / sum(SHARES[n] for n in todo[i:])
        deadline = now + max(0.0, end - now) * share
        log(f"{name}: start ({deadline - now:.0f} s guard)")
        t0 = time.perf_counter()
        try:
            result = SECTION_FUNCTIONS[name](ctx, deadline)
        except Exception as exc:  # noqa: BLE001  (recorded; the next sections still run)
            result = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                      "traceback": traceback.format_exc()[-4000:]}
            log(f"{name}: FAILED {result['error']}")
        release(device)  # the section's models and batches are gone with its frame
        result["section_s"] = time.perf_counter() - t0
        report["sections"][name] = result
        report["elapsed_s"] = time.monotonic() - wall0
        write(report, out)
        log(f"{name}: done in {result['section_s']:.1f} s")
    report["table"] = summary_lines(report)
    report["elapsed_s"] = time.monotonic() - wall0
    report["ray_imported"] = "ray" in sys.modules
    failed = [n for n, s in report["sections"].items() if "error" in s]
    disagree = "gradients" in report["sections"] and report["sections"]["gradients"].get("all_agree") is False
    report["ok"] = not failed and not disagree
    write(report, out)
    print()
    print("\n".join(report["table"]))
    print(f"total {report['elapsed_s']:.1f} s; wrote {out}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
