"""InnerWorker: one inner model, its optimizer state and its data stream, as a Ray actor.
A thin wrapper over drray.meta.population.InnerLearner; the maths lives there."""
from __future__ import annotations

import numpy as np
import ray
import torch
from torch.utils._pytree import tree_map

from drray.config import Config, validate_config
from drray.data.streams import BatchStream
from drray.meta.population import InnerLearner


@ray.remote
class InnerWorker:
    def __init__(self, cfg: dict, index: int, train, heldout_rows: np.ndarray, heldout_labels: np.ndarray,
                 row_shape, num_classes: int, incarnation: int):
        """train: [rows_ref, labels_ref] of an in-memory set, or this worker's Ray Data shard."""
        config: Config = validate_config(cfg)
        if ray.get_gpu_ids():
            config.run.device = "cuda"
        if isinstance(train, list):  # arrays map zero-copy (read-only) from the node's object store
            train = tuple(ray.get(train))
        else:
            shard = train
            train = BatchStream(lambda: shard.iter_batches(batch_size=config.inner.batch_size, batch_format="pyarrow"),
                                row_shape, num_classes, config.run.device, "training stream")
        self.learner = InnerLearner(config, index, train, (heldout_rows, heldout_labels), row_shape,
                                    num_classes, incarnation)

    @ray.method(num_returns=2)
    def meta_step(self, eta, incarnation: int | None):
        """One outer step for this model, first reinitialised as `incarnation` when the outer loop
        says it is stale (None: continue the current one)."""
        if incarnation is not None:
            self.learner.reset(incarnation)
        grad, stats = self.learner.meta_step(tuple(eta))
        return tuple(g.cpu() for g in grad), stats

    def max_rows_buffered(self) -> int | None:
        """For streamed training data: the most rows this worker ever held at once."""
        return getattr(self.learner.train, "max_buffered", None)

    def state_dict(self) -> dict:
        return _to_cpu(self.learner.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)


def _to_cpu(tree):
    return tree_map(lambda v: v.cpu() if isinstance(v, torch.Tensor) else v, tree)
