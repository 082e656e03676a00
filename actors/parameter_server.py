"""ParameterServer: owns the rater parameters and the meta-optimizer (drray.meta.meta_optim)."""
from __future__ import annotations

import ray

from drray.config import validate_config
from drray.meta.population import new_meta_optimizer


@ray.remote(num_cpus=0)
class ParameterServer:
    def __init__(self, cfg: dict, row_shape, num_classes: int, heldout_rows, heldout_labels):
        """The held-out arrays arrive resolved from their object refs (a warm start trains on them)."""
        heldout = (heldout_rows, heldout_labels)
        self.meta = new_meta_optimizer(validate_config(cfg), row_shape, num_classes, heldout)

    def params(self):
        return self.meta.params

    @ray.method(num_returns=2)
    def apply(self, *grads):
        """Adam from the same state for each meta-gradient, proposals averaged. Returns the new
        parameters (one object, broadcast to every worker by reference) and the gradient norms."""
        norms = self.meta.apply(list(grads))
        return self.meta.params, norms

    def state_dict(self) -> dict:
        return self.meta.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.meta.load_state_dict(state)
