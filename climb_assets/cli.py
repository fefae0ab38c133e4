"""``climb``: the main job end to end on the built-in demo corpus, and the two UIs.

    climb demo        build the demo corpus (two waves), ingest it through the landing sensor, embed, cluster,
                      score, search mixtures with proxies, write ClimbMix and the proof; print where it all is
    climb run JOB     run one job (cluster_fit_job, recluster_job, search_job) on the local instance
    climb ui          the Dagster UI (dagster dev) on the same CLIMB_HOME
    climb mlflow-ui   the MLflow UI on the local tracking store
"""

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from climb_assets.home import ClimbHome

REPO_ROOT = Path(__file__).resolve().parents[1]


def choose_embedding_model() -> str:
    """MiniLM on a GPU; on CPU the static model keeps the demo inside its time budget (set the env var to override)."""
    if os.environ.get("CLIMB_EMBEDDING_MODEL"):
        return os.environ["CLIMB_EMBEDDING_MODEL"]
    import torch

    return "minilm" if torch.cuda.is_available() else "static"


def platform_env(home: ClimbHome) -> dict[str, str]:
    return {
        "CLIMB_HOME": str(home.root),
        "DAGSTER_HOME": str(home.dagster),
        "CLIMB_EMBEDDING_MODEL": choose_embedding_model(),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


class Timer:
    def __init__(self) -> None:
        self.steps: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        print(f"==> {name}", flush=True)
        started = time.perf_counter()
        yield
        self.steps[name] = round(time.perf_counter() - started, 1)
        print(f"    {name}: {self.steps[name]}s", flush=True)


# The console shows what each step reports (INFO), not Dagster's per-event DEBUG stream; the UI has everything.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def ingest_landed(defs, instance, home: ClimbHome) -> list[str]:
    """Evaluate the real landing sensor once and run what it requests (what the daemon does under `dagster dev`)."""
    import dagster as dg

    from climb_assets.resources import ClimbHomeResource

    sensor = defs.resolve_sensor_def("landing_sensor")
    result = sensor(dg.build_sensor_context(instance=instance, resources={"climb": ClimbHomeResource(root=str(home.root))}))
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    job = defs.resolve_job_def("ingest_shard_job")
    for request in result.run_requests:
        outcome = job.execute_in_process(
            instance=instance, partition_key=request.partition_key, run_config=QUIET, raise_on_error=False
        )
        if not outcome.success:
            print(f"    ! {request.partition_key}: ingestion failed (see the Dagster UI)", flush=True)
    return [r.partition_key for r in result.run_requests]


def run_job(defs, instance, name: str, run_config: dict | None = None) -> None:
    config = QUIET | (run_config or {})
    outcome = defs.resolve_job_def(name).execute_in_process(instance=instance, run_config=config, raise_on_error=False)
    if not outcome.success:
        failures = [e.message for e in outcome.all_events if e.is_step_failure]
        raise SystemExit(f"{name} failed: {failures}")


def bring_clusters_current(defs, instance, home: ClimbHome, *, refit: bool = False) -> list[str]:
    """What the recluster sensor requests, run in process: a fit when there are no centroids (or ``refit``), an
    assignment run for each shard missing under the current centroids (only new shards, unless refitted), then
    the merge (dbt_quality + super-clusters). Returns the shards assigned."""
    from climb_assets.cluster.lake import current_version, unassigned_shards

    if refit or current_version(home) is None:
        run_job(defs, instance, "cluster_fit_job")
    job = defs.resolve_job_def("cluster_assign_job")
    shards = unassigned_shards(home)
    for shard in shards:
        outcome = job.execute_in_process(instance=instance, partition_key=shard, run_config=QUIET, raise_on_error=False)
        if not outcome.success:
            raise SystemExit(f"cluster_assign_job failed for shard {shard} (see the Dagster UI)")
    run_job(defs, instance, "recluster_job")
    return shards


def open_platform():
    """CLIMB_HOME, its Dagster instance and the code location, with the environment every step expects."""
    home = ClimbHome.from_env().ensure()
    os.environ.update(platform_env(home))
    from climb_assets.instance import prepare_instance

    instance = prepare_instance(home)
    from climb_assets.definitions import defs  # after the environment is set: resources read it at import

    return home, instance, defs


def demo(args: argparse.Namespace) -> None:
    from climb_assets.demo.corpus import build_demo_corpus

    home, instance, defs = open_platform()
    timer = Timer()
    started = time.perf_counter()
    with timer.step("demo corpus, wave 1"):
        wave1 = build_demo_corpus(home, wave=1, scale=args.scale, seed=args.seed)
    with timer.step("ingest + embed + score wave 1 (one run per new shard)"):
        first = ingest_landed(defs, instance, home)
    with timer.step("fit centroids on a sample, assign every shard, quality + super-clusters"):
        bring_clusters_current(defs, instance, home)
    with timer.step("demo corpus, wave 2"):
        wave2 = build_demo_corpus(home, wave=2, scale=args.scale, seed=args.seed)
    with timer.step("ingest wave 2 (only the new shards)"):
        second = ingest_landed(defs, instance, home)
    with timer.step("assign only the new shards (same centroids), quality + super-clusters"):
        assigned = bring_clusters_current(defs, instance, home)
    with timer.step("CLIMB search, ClimbMix and proof"):
        run_job(defs, instance, "search_job")
    total = round(time.perf_counter() - started, 1)
    summary = {
        "climb_home": str(home.root),
        "wave_1_shards": first,
        "wave_2_shards": second,
        "wave_2_shards_assigned": assigned,
        "corpus": {"wave_1": wave1, "wave_2": wave2},
        "timings_seconds": timer.steps | {"total": total},
        "climbmix": str(home.climbmix),
        "proof_report": str(home.climbmix / "proof.md"),
        "mlflow_tracking_uri": f"sqlite:///{home.mlflow / 'mlflow.db'}",
    }
    (home.root / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    proof = home.climbmix / "proof.md"
    if proof.exists():
        print("\n" + proof.read_text())
    print(f"\nDone in {total}s. Everything is under {home.root}:")
    print(f"  lake (Parquet per asset)  {home.lake}")
    print(f"  ClimbMix + manifest.json  {home.climbmix}")
    print(f"  proof report              {proof}")
    print(f"  Dagster instance          {home.dagster}    -> `make ui` (or `climb ui`) to browse runs, assets, checks")
    print(f"  MLflow store              {home.mlflow}     -> `make mlflow-ui` (or `climb mlflow-ui`) to compare proxies")
    print(f"  timings                   {home.root / 'demo_summary.json'}")


def run(args: argparse.Namespace) -> None:
    """Run one job of the code location against the local instance (e.g. re-run the search after a change)."""
    import yaml

    _, instance, defs = open_platform()

    run_job(defs, instance, args.job, yaml.safe_load(Path(args.config).read_text()) if args.config else None)


def ui(args: argparse.Namespace) -> None:
    home = ClimbHome.from_env().ensure()
    from climb_assets.instance import prepare_instance

    prepare_instance(home)
    env = os.environ | platform_env(home)
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(args.port)]
    raise SystemExit(subprocess.call(command, env=env, cwd=REPO_ROOT))


def mlflow_ui(args: argparse.Namespace) -> None:
    home = ClimbHome.from_env().ensure()
    from climb_assets.search.tracking import local_tracking_uri

    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", local_tracking_uri(home), "--port", str(args.port)]
    raise SystemExit(subprocess.call(command))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="climb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run the main job end to end on the built-in demo corpus")
    run_demo.add_argument("--scale", type=float, default=float(os.environ.get("CLIMB_DEMO_SCALE", "1.0")))
    run_demo.add_argument("--seed", type=int, default=0)
    run_demo.set_defaults(func=demo)
    run_one = commands.add_parser("run", help="run one job (ingest_shard_job needs a partition: use the UI)")
    run_one.add_argument("job", choices=["cluster_fit_job", "recluster_job", "search_job"])
    run_one.add_argument("--config", help="Dagster run config (YAML), e.g. resources: {search: {config: {...}}}")
    run_one.set_defaults(func=run)
    run_ui = commands.add_parser("ui", help="start the Dagster UI on this CLIMB_HOME")
    run_ui.add_argument("--port", type=int, default=3000)
    run_ui.set_defaults(func=ui)
    run_mlflow = commands.add_parser("mlflow-ui", help="start the MLflow UI on the local tracking store")
    run_mlflow.add_argument("--port", type=int, default=5000)
    run_mlflow.set_defaults(func=mlflow_ui)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
