"""Connecting to Ray: join the cluster at --address / RAY_ADDRESS, or start a local one for the
run. Requests that can never fit are refused up front (Ray would otherwise wait forever)."""
from __future__ import annotations

import os
import socket
import sys
import tempfile
from contextlib import contextmanager

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from drray.config import Config
from drray.errors import ConfigError


def _reachable(address: str, timeout: float = 5.0) -> bool:
    if address in ("auto", "local") or "://" in address:
        return True  # 'auto' finds a running cluster itself; ray:// clients report their own errors
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def cluster_address(address: str | None) -> str | None:
    """The cluster to join (--address, else RAY_ADDRESS), checked reachable; None: run locally."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address and not _reachable(address):
        raise ConfigError(f"cannot reach a Ray cluster at {address}; check the address "
                          "(host:port of the head's GCS, 6379 by default) or leave it out to run locally")
    return address


def connect(address: str | None) -> bool:
    """Returns True when this call started a local Ray (and so should shut it down)."""
    if ray.is_initialized():
        return False
    address = cluster_address(address)
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError) as exc:
            raise ConfigError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
        return False
    temp_dir = os.environ.get("DRRAY_RAY_TMP", os.path.join(tempfile.gettempdir(), "drray-ray"))
    ray.init(include_dashboard=False, _temp_dir=temp_dir, log_to_driver=True, configure_logging=False)
    return True


@contextmanager
def ray_session(address: str | None):
    """Ray for the length of a job: the cluster at --address or RAY_ADDRESS, else a local Ray
    started here and shut down on the way out. A Ray this process already had, or a cluster it
    joined, is left as it was."""
    started = connect(address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def placement(on_node: str | None = None) -> dict:
    """Actor options: pinned to node `on_node` (hard: only losing that node loses the actor), or
    spread over the nodes, so that losing one node loses few workers. Inside a placement group
    (a Tune trial's) nothing: its bundles decide, and an explicit strategy would leave them."""
    if ray.util.get_current_placement_group() is not None:
        return {}
    if on_node is not None:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=on_node, soft=False)}
    return {"scheduling_strategy": "SPREAD"}


def worker_gpus(cfg: Config) -> float:
    """gpus_per_worker, with null meaning one GPU each where the cluster has GPUs."""
    if cfg.resources.gpus_per_worker is not None:
        return cfg.resources.gpus_per_worker
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def check_resources(cfg: Config, gpus_per_worker: float, reserve_cpus: float = 0.0) -> None:
    """reserve_cpus: CPUs that must stay free beside the workers (Ray Data's read tasks)."""
    total = ray.cluster_resources()
    size = cfg.population.size
    for name, each, reserve in (("CPU", cfg.resources.cpus_per_worker, reserve_cpus), ("GPU", gpus_per_worker, 0.0)):
        need, have = size * each + reserve, total.get(name, 0.0)
        if need > have + 1e-9:
            key = "cpus_per_worker" if name == "CPU" else "gpus_per_worker"
            extra = f" (+{reserve:g} for reading the data)" if reserve else ""
            raise ConfigError(f"population.size={size} x resources.{key}={each}{extra} needs {need:g} {name}s but "
                              f"the cluster has {have:g}; lower resources.{key} or population.size")
    worker = {"CPU": cfg.resources.cpus_per_worker, "GPU": gpus_per_worker}
    fit = how_many_fit(node_resources(), worker)
    if fit < size:
        raise ConfigError(f"population.size={size} workers of {worker['CPU']:g} CPUs and {worker['GPU']:g} GPUs each: "
                          f"the cluster's nodes hold {fit} at once (a worker runs on one node); lower "
                          "resources.cpus_per_worker or resources.gpus_per_worker, or population.size")


def node_resources() -> list[dict]:
    """What each live node of the cluster has (CPU, GPU, ...)."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def how_many_fit(nodes: list[dict], each: dict) -> int:
    """How many requests of `each` (e.g. {"CPU": 1, "GPU": 1}) the nodes hold at once: a request
    cannot span nodes, so totals overstate it (two 4-CPU nodes hold two 3-CPU workers, not 2.67)."""
    wanted = {name: amount for name, amount in each.items() if amount > 0}
    if not wanted:
        return sys.maxsize
    return sum(min(_fits(node.get(name, 0.0), amount, name) for name, amount in wanted.items()) for node in nodes)


def _fits(have: float, amount: float, name: str) -> int:
    if name == "GPU" and amount < 1:  # Ray keeps a fractional GPU request on one GPU
        return int(have + 1e-9) * int(1 / amount + 1e-9)
    return int(have / amount + 1e-9)
