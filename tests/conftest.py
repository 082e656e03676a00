import os
import tempfile

import pytest

# torch's OpenMP threads spin beside pyarrow and Ray on 2 cores unless told to sleep (DESIGN.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
