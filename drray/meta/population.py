"""A population of persistent inner models and the rater they meta-train (Algorithm 1).

`InnerLearner` owns one inner model: its weights, optimizer state and data streams; the Ray
InnerWorker actor wraps exactly this class. `OuterLoop` is Algorithm 1's outer step, written once:
the staggered resets, the learners' meta-gradients, the meta-optimizer, the step's summary.
`Population` runs it with N learners in this process; actors.scheduler runs it with actors.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from drray import seeds
from drray.config import Config, uses_forward_mode_ad
from drray.data.modality import modality_for
from drray.data.streams import ArrayStream
from drray.meta.inner_optim import Params, build_inner_optimizer
from drray.meta.meta_optim import AveragedAdam
from drray.meta.metagrad import MetaProblem, meta_step
from drray.models import build_inner, build_rater
from drray.models.warm_start import check_warm_start, warm_start
from drray.seeds import derive_seed


def first_reset_step(index: int, size: int, lifetime: int) -> int:
    return math.ceil((index + 1) * lifetime / size)


def reset_due(index: int, step: int, size: int, lifetime: int) -> bool:
    """Model i is reinitialised at step ceil((i+1)L/N), then every L steps, so the population
    always spans early, middle and late training."""
    first = first_reset_step(index, size, lifetime)
    return step >= first and (step - first) % lifetime == 0


def build_problem(cfg: Config, row_shape: tuple[int, int], num_classes: int) -> MetaProblem:
    inner = build_inner(cfg.inner.arch, row_shape, num_classes)
    rater = build_rater(cfg.rater.arch, row_shape, num_classes)
    optimizer = build_inner_optimizer(cfg.inner.optimizer, cfg.inner.lr, cfg.inner.momentum)
    return MetaProblem(inner.to(cfg.run.device), rater.to(cfg.run.device), optimizer, cfg.rater.temperature,
                       modality_for(row_shape), cfg.meta.mixflow_chunk, cfg.meta.mixflow_mode)


def init_params(build, seed: int, device: str) -> Params:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    return tuple(p.detach().to(device) for p in module.parameters())


@dataclass
class LearnerStats:
    outer_loss: float
    inner_loss: float
    age: int


class InnerLearner:
    def __init__(self, cfg: Config, index: int, train, heldout: tuple[np.ndarray, np.ndarray], row_shape,
                 num_classes: int, incarnation: int = 0):
        """train: (rows, labels) arrays held in memory, or a stream (drray.data.streams.BatchStream)."""
        self.cfg, self.index = cfg, index
        self.row_shape, self.num_classes = tuple(row_shape), num_classes
        self.problem = build_problem(cfg, self.row_shape, num_classes)
        self.train = ArrayStream(*train, cfg.run.device) if isinstance(train, tuple) else train
        self.heldout = ArrayStream(*heldout, cfg.run.device)
        self.reset(incarnation)

    def reset(self, incarnation: int) -> None:
        """A fresh inner model (new weights, optimizer state and data order). The outer loop numbers
        the incarnations; incarnation k of model i is the same wherever it runs, so the Ray and
        in-process populations agree."""
        self.incarnation = incarnation
        seed = derive_seed(self.cfg.run.seed, self.index, self.incarnation)
        self.theta = init_params(
            lambda: build_inner(self.cfg.inner.arch, self.row_shape, self.num_classes), seed, self.cfg.run.device
        )
        self.state = self.problem.optimizer.init(self.theta)
        self.train.reseed(seed)
        self.heldout.reseed(seed + 1)
        self.age = 0

    def meta_step(self, eta: Params) -> tuple[Params, LearnerStats]:
        """T weighted inner steps from the current weights, and the meta-gradient through them, on
        the device of the rater parameters given (the meta-optimizer's: CPU), not this learner's."""
        inner = [self.train.sample(self.cfg.inner.batch_size) for _ in range(self.cfg.inner.T)]
        outer = self.heldout.sample(self.cfg.meta.outer_batch_size)
        home = eta[0].device
        eta = tuple(e.to(self.cfg.run.device) for e in eta)
        result = meta_step(self.problem, self.cfg.meta.method, self.theta, self.state, eta, inner, outer)
        self.theta, self.state = result.theta, result.state
        self.age += 1
        return tuple(g.to(home) for g in result.grad), LearnerStats(result.outer_loss, result.inner_loss, self.age)

    def state_dict(self) -> dict:
        state = {k: (v if isinstance(v, int) else list(v)) for k, v in self.state.items()}
        return {"theta": list(self.theta), "opt": state, "age": self.age, "incarnation": self.incarnation,
                "train_rng": self.train.get_state(), "heldout_rng": self.heldout.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        device = self.cfg.run.device
        self.theta = tuple(t.to(device) for t in sd["theta"])
        self.state = {k: (v if isinstance(v, int) else tuple(t.to(device) for t in v)) for k, v in sd["opt"].items()}
        self.age, self.incarnation = int(sd["age"]), int(sd["incarnation"])
        self.train.set_state(sd["train_rng"])
        self.heldout.set_state(sd["heldout_rng"])


def initial_rater(cfg: Config, row_shape, num_classes: int, heldout: tuple[np.ndarray, np.ndarray]) -> Params:
    """The rater meta-training starts from: seeded, warm-started on the held-out split if asked
    (batches of inner.batch_size)."""
    def build():
        rater = build_rater(cfg.rater.arch, row_shape, num_classes)
        steps = cfg.rater.warm_start_steps
        if steps:
            check_warm_start(rater, cfg.rater.arch, steps)
            loss = warm_start(rater, *heldout, steps, cfg.rater.warm_start_lr, cfg.inner.batch_size,
                              derive_seed(cfg.run.seed, seeds.RATER_WARM_START))
            print(f"rater warm start: {steps} steps on the held-out split, loss {loss:.4f}", flush=True)
        return rater

    return init_params(build, derive_seed(cfg.run.seed, seeds.RATER_INIT), "cpu")


def new_meta_optimizer(cfg: Config, row_shape, num_classes: int,
                       heldout: tuple[np.ndarray, np.ndarray]) -> AveragedAdam:
    eta = initial_rater(cfg, row_shape, num_classes, heldout)
    return AveragedAdam(eta, lr=cfg.meta.lr, clip_norm=cfg.meta.clip_norm, weight_decay=cfg.meta.weight_decay,
                        warmup_steps=cfg.meta.warmup_steps)


@dataclass
class StepStats:
    outer_loss: float       # mean over the population
    inner_loss: float
    meta_grad_norm: float   # mean global norm of the N meta-gradients, before clipping
    resets: int             # inner models reinitialised before this step
    replaced: int = 0       # inner models that failed during it and were replaced with fresh ones


def summarize(stats: list[LearnerStats], norms: list[float], resets: int, replaced: int = 0) -> StepStats:
    return StepStats(
        outer_loss=float(np.mean([s.outer_loss for s in stats])),
        inner_loss=float(np.mean([s.inner_loss for s in stats])),
        meta_grad_norm=float(np.mean(norms)),
        resets=resets,
        replaced=replaced,
    )


def learner_threads(cfg: Config) -> tuple[int, int]:
    """(inner models that take their meta-step at once in this process, torch threads each).
    run.learner_threads, by default one per torch thread on CPU; 1 on an accelerator (one device:
    concurrent unrolls would only add memory) and always 1 with mixflow's JVP (PyTorch's
    forward-mode AD levels are global, not per thread). The cores are shared among them."""
    cores = torch.get_num_threads()
    if uses_forward_mode_ad(cfg):
        return 1, cores
    default = cores if torch.device(cfg.run.device).type == "cpu" else 1
    threads = max(1, min(cfg.run.learner_threads or default, cfg.population.size))
    return threads, max(1, cores // threads)


class OuterLoop:
    """Algorithm 1's outer loop, written once for both backends. It owns the step count, the
    rater's current parameters and each model's incarnation (how many times slot i got a fresh
    model), and leaves to the backend where the models run:

      backend.meta_steps(params, resets, renew) -> (grads, stats): every model's meta-gradient at
          `params`, model i first reinitialised as incarnation resets[i]; a backend that replaces
          a failed model asks renew(i) for the incarnation of its replacement;
      backend.apply(grads) -> (params, norms): the meta-optimizer's step;
      backend.meta_state() / load_meta_state(state), backend.learner_states() /
      load_learner_states(states), backend.current_params(): what a checkpoint holds.
    """

    def __init__(self, backend, size: int, lifetime: int):
        self.backend, self.size, self.lifetime = backend, size, lifetime
        self.step_count, self.incarnations = 0, [0] * size
        self.params = backend.current_params()

    def stale(self) -> list[int]:
        return [i for i in range(self.size) if reset_due(i, self.step_count, self.size, self.lifetime)]

    def renew(self, index: int) -> int:
        """The next incarnation of slot `index`: a fresh model takes the place of the old one."""
        self.incarnations[index] += 1
        return self.incarnations[index]

    def step(self) -> StepStats:
        stale = self.stale()
        resets = {i: self.renew(i) for i in stale}
        renewed = sum(self.incarnations)
        grads, stats = self.backend.meta_steps(self.params, resets, self.renew)
        self.params, norms = self.backend.apply(grads)
        self.step_count += 1
        return summarize(stats, norms, len(stale), replaced=sum(self.incarnations) - renewed)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "meta": self.backend.meta_state(), "learners": self.backend.learner_states()}

    def load_state_dict(self, sd: dict) -> None:
        self.step_count = int(sd["step"])
        self.backend.load_meta_state(sd["meta"])
        self.backend.load_learner_states(sd["learners"])
        self.incarnations = [int(state["incarnation"]) for state in sd["learners"]]
        self.params = self.backend.current_params()


class Population:
    """N inner models in this process: the backend of an OuterLoop. step() is one outer step."""

    def __init__(self, cfg: Config, train, heldout, row_shape, num_classes: int):
        """train(i) gives model i its training data: arrays or a stream (see InnerLearner)."""
        self.learners = [InnerLearner(cfg, i, train(i), heldout, row_shape, num_classes)
                         for i in range(cfg.population.size)]
        self.meta = new_meta_optimizer(cfg, row_shape, num_classes, heldout)
        # Like the Ray workers, each thread runs one learner at a time on its share of the cores: a
        # learner's arithmetic does not depend on the thread, and each has its own modules and
        # data stream (functional_call swaps a module's parameters, so modules are never shared).
        threads, self._torch_threads_each = learner_threads(cfg)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="learner") if threads > 1 else None
        self.loop = OuterLoop(self, cfg.population.size, cfg.population.lifetime)

    def step(self) -> StepStats:
        return self.loop.step()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    @property
    def step_count(self) -> int:
        return self.loop.step_count

    @property
    def rater_params(self) -> Params:
        return self.loop.params

    def state_dict(self) -> dict:
        return self.loop.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.loop.load_state_dict(sd)

    # The OuterLoop's backend: learners in this process (they never fail in a way a fresh one fixes).
    def meta_steps(self, params: Params, resets: dict[int, int], renew) -> tuple[list, list[LearnerStats]]:
        for i, incarnation in resets.items():
            self.learners[i].reset(incarnation)
        if self._pool is None:
            results = [learner.meta_step(params) for learner in self.learners]
        else:
            cores = torch.get_num_threads()
            results = list(self._pool.map(lambda learner: self._meta_step_in_thread(learner, params), self.learners))
            torch.set_num_threads(cores)  # a thread's setting also becomes the default of threads started later
        return [grad for grad, _ in results], [stats for _, stats in results]

    def _meta_step_in_thread(self, learner: InnerLearner, params: Params):
        torch.set_num_threads(self._torch_threads_each)
        return learner.meta_step(params)

    def apply(self, grads: list[Params]) -> tuple[Params, list[float]]:
        norms = self.meta.apply(grads)
        return self.meta.params, norms

    def current_params(self) -> Params:
        return self.meta.params

    def meta_state(self) -> dict:
        return self.meta.state_dict()

    def load_meta_state(self, state: dict) -> None:
        self.meta.load_state_dict(state)

    def learner_states(self) -> list[dict]:
        return [learner.state_dict() for learner in self.learners]

    def load_learner_states(self, states: list[dict]) -> None:
        for learner, state in zip(self.learners, states, strict=True):
            learner.load_state_dict(state)
