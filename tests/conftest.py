import os
import tempfile

import pytest

# torch's OpenMP threads spin beside pyarrow and Ray on 2 cores unless told to sleep (docs/design.md, "Ray on small machines").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# And sleeping threads wake slowly: the suite's models are small, and one torch thread per process
# (as Ray gives each worker) runs them faster (test_metagrad, _population, _text, ...: 60 s -> 43 s;
# the digits demo: 138 s -> 54 s). Set before torch is imported; jobs started as subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for the tests of one module; shut down only if this fixture started it.
    Yields the GCS address, for job subprocesses that join it."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="drray-t-"),
                 configure_logging=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
