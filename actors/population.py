"""RayPopulation: the driver's view of the population on Ray, with the same interface as the
in-process drray.population.Population (step, rater_params, step_count, state_dict)."""
from __future__ import annotations

import sys

import ray
from ray.exceptions import RayTaskError

from actors.cluster import check_resources, worker_gpus
from actors.scheduler import Scheduler, WorkerFailure
from drray.config import Config
from drray.data import DataSplits
from drray.population import StepStats


class RayPopulation:
    def __init__(self, cfg: Config, splits: DataSplits):
        gpus = worker_gpus(cfg)
        check_resources(cfg, gpus)
        # Put each array in the object store once; every worker maps the same copy.
        data_refs = [ray.put(a) for a in (splits.train.images, splits.train.labels,
                                          splits.heldout.images, splits.heldout.labels)]
        self.scheduler = Scheduler.remote(cfg.to_dict(), data_refs, splits.image_shape, splits.num_classes, gpus)
        self.step_count = 0

    def step(self) -> StepStats:
        try:
            result = ray.get(self.scheduler.step.remote())
        except RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, WorkerFailure):
                raise WorkerFailure(*cause.args) from None  # one line, not the remote traceback
            raise
        for index, reason in result["replaced"]:
            print(f"worker {index} failed ({reason}); replaced with a fresh inner model", file=sys.stderr, flush=True)
        self.step_count += 1
        return result["stats"]

    @property
    def rater_params(self):
        return ray.get(self.scheduler.rater_params.remote())

    def worker_handles(self) -> list:
        return ray.get(self.scheduler.worker_handles.remote())

    def state_dict(self) -> dict:
        return ray.get(self.scheduler.state_dict.remote())

    def load_state_dict(self, state: dict) -> None:
        ray.get(self.scheduler.load_state_dict.remote(state))
        self.step_count = int(state["step"])
