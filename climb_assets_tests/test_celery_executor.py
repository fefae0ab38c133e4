"""The search on a real distributed engine: Dagster's Celery executor with two separate Celery worker processes, one
of them the designated "GPU" worker (it consumes the ``gpu`` queue). Steps are routed by their tags alone: every
proxy-training and proof step must run in the GPU worker's process, and every other step in the CPU worker's.

The broker and result backend are SQLite files (kombu's SQLAlchemy transport, Celery's database backend), so the
cluster starts without root, Docker or a server; in production the same executor config points at Redis or RabbitMQ.
Nothing is mocked: the workers import the code location and execute the steps against the test's Dagster instance.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.api import create_execution_plan
from dagster_celery import celery_executor

from climb_assets.definitions import build_definitions
from climb_assets.home import ClimbHome
from climb_assets.instance import prepare_instance
from climb_assets.lake import proof_report_path
from climb_assets.search.keys import SearchPlan
from climb_assets.search.settings import SearchSettings
from climb_assets.search.tracking import local_tracking_uri
from climb_assets.tags import GPU_POOL
from climb_assets_tests.conftest import TINY_SEARCH, TINY_SEARCH_RUN_CONFIG
from climb_assets_tests.test_resume import write_search_state

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {**TINY_SEARCH, "proxies_per_iteration": [3, 2, 2], "token_budget": 3_000, "base_token_budget": 3_000,
            "max_repeats": 20.0, "num_threads": 1}  # fmt: skip


def celery_search_job() -> dg.JobDefinition:
    """The code location's search_job on the Celery executor (rebuilt by each worker from this pointer)."""
    return build_definitions(executor=celery_executor).resolve_job_def("search_job")


def start_worker(name: str, queue: str, config_dir: Path, log: Path) -> subprocess.Popen:
    """A Celery worker process; ``--pool solo`` runs each task in the worker's own process (its pid is the step's)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(config_dir), str(REPO)])}

    def default_signals():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker", "-Q", queue, "-n", f"{name}@%h",
         "--pool", "solo", "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=default_signals,
    )  # fmt: skip


def stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.kill(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=20)


@pytest.fixture
def celery_cluster(tmp_path, monkeypatch):
    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    backend = f"db+sqlite:///{tmp_path / 'results.db'}"
    config_dir = tmp_path / "celery_config"
    config_dir.mkdir()
    (config_dir / "dagster_celery_config.py").write_text(f"broker_url = {broker!r}\nresult_backend = {backend!r}\n")
    home = ClimbHome(tmp_path / "climb").ensure()
    write_search_state(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))  # prepare_instance sets it; restored afterwards
    prepare_instance(home).dispose()  # writes dagster.yaml: the workers open the same persistent instance
    workers = {
        "gpu": start_worker("gpu-worker", "gpu", config_dir, tmp_path / "gpu-worker.log"),
        "cpu": start_worker("cpu-worker", "dagster", config_dir, tmp_path / "cpu-worker.log"),
    }
    try:
        time.sleep(3)
        for name, worker in workers.items():
            assert worker.poll() is None, (tmp_path / f"{name}-worker.log").read_text()[-3000:]
        yield home, workers, {"broker": broker, "backend": backend}, tmp_path
    finally:
        for worker in workers.values():
            stop(worker)


def test_search_runs_on_celery_with_gpu_steps_on_the_gpu_worker(celery_cluster):
    home, workers, executor_config, tmp_path = celery_cluster
    run_config = {
        **TINY_SEARCH_RUN_CONFIG,
        "resources": TINY_SEARCH_RUN_CONFIG["resources"] | {
            "climb": {"config": {"root": str(home.root)}},
            "search": {"config": SETTINGS},
            "mlflow_tracking": {"config": {"tracking_uri": local_tracking_uri(home)}},
        },
        "execution": {"config": executor_config},
    }  # fmt: skip
    job = dg.build_reconstructable_job("climb_assets_tests.test_celery_executor", "celery_search_job")
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(job, instance, run_config=run_config)
        logs = "".join((tmp_path / f"{n}-worker.log").read_text()[-2000:] for n in ("gpu", "cpu"))
        assert result.success, logs
        starts = {e.step_key: e.dagster_event.pid for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)}
    # the GPU steps, from the code location's own pools: the base checkpoint and every mapped training step
    pools = {step.key.split("[")[0]: step.pool for step in create_execution_plan(celery_search_job()).steps}
    gpu_steps = {key for key in starts if pools[key.split("[")[0]] == GPU_POOL}
    proxy_steps = [k for k in gpu_steps if "_proxy_train[" in k]
    proof_steps = [k for k in gpu_steps if k.startswith("climbmix_proof.proof_train[")]
    assert len(proxy_steps) == sum(SETTINGS["proxies_per_iteration"])  # every proxy its own step
    assert len(proof_steps) == 6 * len(TINY_SEARCH_RUN_CONFIG["resources"]["proof"]["config"]["seeds"])
    for key, pid in starts.items():
        expected = workers["gpu"].pid if key in gpu_steps else workers["cpu"].pid
        assert pid == expected, (key, pid, {n: w.pid for n, w in workers.items()})
    assert proof_report_path(home, SearchPlan(home, SearchSettings(**SETTINGS)).search_key).exists()
