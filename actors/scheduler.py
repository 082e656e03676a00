"""Scheduler: owns the InnerWorkers and the ParameterServer and runs Algorithm 1's outer loop
(drray.meta.population.OuterLoop) over them: stale models are reinitialised on the staggered
schedule, and a worker that died (or raised) is replaced with a fresh inner model, so the step
completes."""
from __future__ import annotations

import re

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from actors.cluster import placement
from actors.inner_worker import InnerWorker
from actors.parameter_server import ParameterServer
from drray.config import validate_config
from drray.errors import DrrayError
from drray.meta.population import OuterLoop

MAX_TRIES_PER_STEP = 3
REPLACEMENT_START_S = 600.0  # a replacement not started by then has no room on the cluster (a lost node)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class WorkerFailure(DrrayError, RuntimeError):
    """Workers fail in a way replacing them does not fix: the run stops instead of looping."""


def one_line(error: Exception) -> str:
    """A remote failure in one line: the traceback's last line ('ValueError: ...') when there is
    one (a raising task or constructor), else the error's class and last line."""
    lines = [ANSI.sub("", line).strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    has_traceback = any(line.startswith("File ") for line in lines)
    return last if has_traceback else f"{type(error).__name__}: {last}"


@ray.remote(num_cpus=0)
class Scheduler:
    """The OuterLoop's backend on Ray: InnerWorker actors and a ParameterServer."""

    def __init__(self, cfg: dict, train_shards: list, heldout_refs: list, row_shape, num_classes: int,
                 gpus_per_worker: float, replacement_start_s: float = REPLACEMENT_START_S,
                 driver_node: str | None = None):
        """train_shards[i]: worker i's training data ([rows_ref, labels_ref] or a Ray Data shard);
        driver_node: where the parameter server goes (the scheduler's own node)."""
        self.replacement_start_s = replacement_start_s
        self.cfg_dict, self.cfg = cfg, validate_config(cfg)
        self.train_shards, self.heldout_refs = train_shards, heldout_refs  # nested: still references
        self.shape, self.num_classes, self.gpus = tuple(row_shape), num_classes, gpus_per_worker
        self.server = ParameterServer.options(**placement(driver_node)).remote(cfg, self.shape, num_classes,
                                                                           *heldout_refs)
        self.workers = [self._spawn(i, 0) for i in range(self.cfg.population.size)]
        self.loop = OuterLoop(self, self.cfg.population.size, self.cfg.population.lifetime)
        self.replaced = []

    def _spawn(self, index: int, incarnation: int):
        options = {"num_cpus": self.cfg.resources.cpus_per_worker, "num_gpus": self.gpus, **placement()}
        return InnerWorker.options(**options).remote(self.cfg_dict, index, self.train_shards[index],
                                                     *self.heldout_refs, self.shape, self.num_classes, incarnation)

    def step(self) -> dict:
        self.replaced = []
        stats = self.loop.step()
        # The new parameters travel as a reference: the driver fetches them only if it needs them.
        return {"stats": stats, "replaced": self.replaced, "params": self.loop.params}

    # The OuterLoop's backend. The parameters go server -> workers by reference.
    def meta_steps(self, eta, resets: dict[int, int], renew):
        pending = {i: self.workers[i].meta_step.remote(eta, resets.get(i)) for i in range(len(self.workers))}
        return self._gather(eta, pending, renew)

    def apply(self, grads: list):
        eta, norms = self.server.apply.remote(*grads)
        return eta, ray.get(norms)

    def _gather(self, eta, pending: dict, renew):
        size = len(self.workers)
        grads, stats = [None] * size, [None] * size
        for attempt in range(MAX_TRIES_PER_STEP):
            failures = self._collect(pending, grads, stats)
            if not failures:
                return grads, stats
            if len(failures) == size and len(set(failures.values())) == 1:
                raise WorkerFailure(f"every worker failed the same way: {next(iter(failures.values()))}")
            for i, reason in failures.items():
                self.replaced.append((i, reason))
                ray.kill(self.workers[i])
                self.workers[i] = self._spawn(i, renew(i))  # a fresh inner model takes the dead one's place
            self._wait_until_started(failures)
            pending = {i: self.workers[i].meta_step.remote(eta, None) for i in failures}
        raise WorkerFailure(f"workers kept failing after {MAX_TRIES_PER_STEP} tries: {self.replaced[-1][1]}")

    def _collect(self, pending: dict, grads: list, stats: list) -> dict:
        """Fills in the workers' results as they come; returns {worker: why} for those that failed."""
        waiting, failures = {stats_ref: i for i, (_, stats_ref) in pending.items()}, {}
        while waiting:
            (ready,), _ = ray.wait(list(waiting), num_returns=1)
            i = waiting.pop(ready)
            try:
                # The gradient too, here on the parameter server's node: left in the worker's object
                # store, it would be lost with that node before the server reads it.
                stats[i], grads[i] = ray.get(ready), ray.get(pending[i][0])
            except (RayActorError, RayTaskError, ObjectLostError) as error:
                failures[i] = one_line(error)
                if self.cfg.data.stream:
                    # A streaming split starts each epoch for all its shards together: the other workers
                    # wait for the dead one's shard (so their results never come), and a replacement on
                    # it would wait for them, forever.
                    raise WorkerFailure(f"worker {i} failed ({failures[i]}); a streamed run cannot replace a "
                                        "worker mid-epoch: fix the cause and continue it with --resume (from its "
                                        "last checkpoint)") from None
        return failures

    def _wait_until_started(self, failures: dict) -> None:
        """Replacements the cluster has no room for would be waited on forever: stop the run instead."""
        starting = {self.workers[i].__ray_ready__.remote(): i for i in failures}
        _, waiting = ray.wait(list(starting), num_returns=len(starting), timeout=self.replacement_start_s)
        if not waiting:
            return
        for ref in waiting:
            ray.kill(self.workers[starting[ref]])
        i = starting[waiting[0]]
        raise WorkerFailure(
            f"worker {i} failed ({failures[i]}) and its replacement did not start within {self.replacement_start_s:g} s "
            f"(it needs {self.cfg.resources.cpus_per_worker:g} CPUs and {self.gpus:g} GPUs): the cluster has no room "
            "for it now; continue with --resume once it has")

    def current_params(self):
        return self.server.params.remote()

    def meta_state(self) -> dict:
        return ray.get(self.server.state_dict.remote())

    def load_meta_state(self, state: dict) -> None:
        ray.get(self.server.load_state_dict.remote(state))

    def learner_states(self) -> list[dict]:
        return ray.get([w.state_dict.remote() for w in self.workers])

    def load_learner_states(self, states: list[dict]) -> None:
        ray.get([w.load_state_dict.remote(s) for w, s in zip(self.workers, states)])

    # What the driver (actors.population.RayPopulation) asks for.
    def params_ref(self) -> list:
        return [self.loop.params]  # in a list, so the caller receives the reference, not the value

    def worker_handles(self) -> list:
        return list(self.workers)

    def state_dict(self) -> dict:
        return self.loop.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loop.load_state_dict(state)
