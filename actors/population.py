"""RayPopulation: the driver's view of the population on Ray, with the same interface as the
in-process drray.meta.population.Population (step, rater_params, step_count, state_dict)."""
from __future__ import annotations

import sys

import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.cluster import check_resources, placement, worker_gpus
from actors.scheduler import REPLACEMENT_START_S, Scheduler, WorkerFailure, one_line
from drray.config import Config
from drray.data.examples import DataSplits
from drray.data.streams import stream_columns
from drray.meta.population import StepStats

STREAM_READ_CPUS = 0.25  # what each Ray Data read task asks for; left free beside the workers


def train_shards(cfg: Config, splits: DataSplits) -> list:
    """Worker i's training data: the in-memory arrays, put in the object store once and shared
    by every worker; or, for a streamed Parquet set, shard i of a Ray Data streaming_split."""
    size = cfg.population.size
    if splits.train_path is None:
        arrays = [ray.put(splits.train.rows), ray.put(splits.train.labels)]
        return [arrays] * size
    columns = stream_columns(splits.row_shape)
    # The legacy Parquet datasource: Ray Data 2.60's default one first lists the files in a task of
    # a whole CPU, which waits forever where the workers leave no node a whole CPU free.
    context = ray.data.DataContext.get_current()
    saved, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        dataset = ray.data.read_parquet(splits.train_path, num_cpus=STREAM_READ_CPUS).select_columns(columns)
        return dataset.streaming_split(size, equal=True)
    finally:
        context.use_datasource_v2 = saved


class RayPopulation:
    def __init__(self, cfg: Config, splits: DataSplits, replacement_start_s: float = REPLACEMENT_START_S):
        gpus = worker_gpus(cfg)
        streamed = splits.train_path is not None
        check_resources(cfg, gpus, reserve_cpus=STREAM_READ_CPUS if streamed else 0.0)
        heldout = [ray.put(splits.heldout.rows), ray.put(splits.heldout.labels)]
        # The scheduler and the parameter server live on the driver's node: then only losing that
        # node (which ends the driver anyway) ends the run; the workers spread over the others.
        driver_node = ray.get_runtime_context().get_node_id()
        self.scheduler = Scheduler.options(**placement(driver_node)).remote(
            cfg.to_dict(), train_shards(cfg, splits), heldout, splits.row_shape, splits.num_classes, gpus,
            replacement_start_s, driver_node)
        self.step_count = 0
        self._params_ref, self._params = ray.get(self.scheduler.params_ref.remote())[0], None

    def step(self) -> StepStats:
        try:
            result = ray.get(self.scheduler.step.remote())
        except RayTaskError as error:  # first: Ray makes it an instance of its cause's class too
            cause = getattr(error, "cause", None)
            if isinstance(cause, WorkerFailure):
                raise WorkerFailure(*cause.args) from None  # one line, not the remote traceback
            if isinstance(cause, RayActorError):  # the parameter server is gone
                raise WorkerFailure(f"the run's parameter server died ({one_line(cause)}); continue with "
                                    "--resume") from None
            raise
        except RayActorError as error:  # the scheduler itself is gone (its node lost, or killed)
            raise WorkerFailure(f"the run's scheduler died ({one_line(error)}); continue with --resume") from None
        for index, reason in result["replaced"]:
            print(f"worker {index} failed ({reason}); replaced with a fresh inner model", file=sys.stderr, flush=True)
        self.step_count += 1
        self._params_ref, self._params = result["params"], None
        return result["stats"]

    @property
    def rater_params(self):
        if self._params is None:  # fetched from the object store once per step, when asked for
            self._params = ray.get(self._params_ref)
        return self._params

    def worker_handles(self) -> list:
        return ray.get(self.scheduler.worker_handles.remote())

    def close(self) -> None:
        """Kills the scheduler; its workers and parameter server die with it. The Ray session is left
        running (a Tune trial's or a test's)."""
        ray.kill(self.scheduler)

    def state_dict(self) -> dict:
        return ray.get(self.scheduler.state_dict.remote())

    def load_state_dict(self, state: dict) -> None:
        ray.get(self.scheduler.load_state_dict.remote(state))
        self.step_count = int(state["step"])
        self._params_ref, self._params = ray.get(self.scheduler.params_ref.remote())[0], None
