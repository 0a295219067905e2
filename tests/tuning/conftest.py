"""Fixtures of the tuning tests: one real Ray per test session on 127.0.0.1, a tiny dataset, one smoke search.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is *imported*, so it is set here, at conftest import,
before any test module of this folder imports Ray (../../../shared/RAY_NOTES.md).
"""

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from tests.multivae.helpers import small_split  # noqa: E402

SMOKE_NAME = "smoke"


@pytest.fixture(scope="session")
def ray_session():
    """Ray started once for the whole test session (start-up is most of a small search's time)."""
    import ray

    if ray.is_initialized():   # someone else's session fixture: share it, do not stop it
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)   # ours, not a `ray start` one
    try:
        node_ip = ray.util.get_node_ip_address()
        assert node_ip == "127.0.0.1", (f"Ray's node address is {node_ip}: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set "
                                        "before the first `import ray` of the test session")
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_split():
    """400 users (40 validation, 40 test) x 150 items with topic structure: an epoch takes milliseconds."""
    return small_split(n_users=400, n_items=150, heldout=40)


@pytest.fixture(scope="session")
def smoke_experiment(ray_session, tmp_path_factory):
    """`python -m tuning.run --space smoke`, in-process, once per session; the run and report tests read it."""
    from tuning import experiment, run

    storage = tmp_path_factory.mktemp("ray_results")
    cache = tmp_path_factory.mktemp("data_cache")
    t0 = time.perf_counter()
    optuna_db = f"sqlite:///{storage / 'study.db'}"   # the study optuna-dashboard would watch
    out = io.StringIO()   # the live lines, as a log file would get them
    with contextlib.redirect_stdout(out):
        rc = run.main(["--space", "smoke", "--storage", str(storage), "--name", SMOKE_NAME, "--cache-dir", str(cache),
                       "--optuna-storage", optuna_db])
    wall = time.perf_counter() - t0
    path = storage / SMOKE_NAME
    results = json.loads((path / experiment.RESULTS).read_text()) if (path / experiment.RESULTS).exists() else None
    return SimpleNamespace(rc=rc, out=out.getvalue(), path=path, storage=storage, cache=cache, wall=wall, results=results, optuna_db=optuna_db)
