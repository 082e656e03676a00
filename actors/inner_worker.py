"""InnerWorker: one inner model, its optimizer state and its data stream, as a Ray actor.
A thin wrapper over drray.population.InnerLearner; the maths lives there."""
from __future__ import annotations

import numpy as np
import ray
import torch
from torch.utils._pytree import tree_map

from drray.config import Config, validate_config
from drray.population import InnerLearner


@ray.remote
class InnerWorker:
    def __init__(self, cfg: dict, index: int, train_images: np.ndarray, train_labels: np.ndarray,
                 heldout_images: np.ndarray, heldout_labels: np.ndarray, image_shape, num_classes: int,
                 incarnation: int):
        # The arrays arrive from the object store zero-copy (read-only); they are shared by every
        # worker on the node, not copied per worker.
        config: Config = validate_config(cfg)
        if ray.get_gpu_ids():
            config.run.device = "cuda"
        torch.manual_seed(0)  # nothing here should draw from the global RNG; make sure of it
        self.learner = InnerLearner(config, index, (train_images, train_labels), (heldout_images, heldout_labels),
                                    image_shape, num_classes, incarnation)

    @ray.method(num_returns=2)
    def meta_step(self, eta, reset: bool):
        """One outer step for this model: reinitialise first if the scheduler says it is stale."""
        if reset:
            self.learner.reset()
        grad, stats = self.learner.meta_step(tuple(eta))
        return tuple(g.cpu() for g in grad), stats

    def state_dict(self) -> dict:
        return _to_cpu(self.learner.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)


def _to_cpu(tree):
    return tree_map(lambda v: v.cpu() if isinstance(v, torch.Tensor) else v, tree)
