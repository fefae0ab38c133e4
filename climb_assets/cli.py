"""``climb``: the main job end to end on the built-in demo corpus, and the two UIs.

    climb demo        build the demo corpus (two waves), ingest it through the landing sensor, embed, cluster,
                      score, search mixtures with proxies, write ClimbMix and the proof; print where it all is
                      (--corpus packages: the same on the second built-in corpus, code, data, licences, dialogue)
    climb ingest      process everything newly landed in CLIMB_HOME/landing (the real landing sensor, one run per
                      new shard), without the UI
    climb crawl       your own crawl end to end, headless: ingest what landed, re-cluster, search for the target you
                      name, write ClimbMix and the proof; print where it all is (`climb demo` minus the demo corpus)
    climb run JOB     run one job (cluster_fit_job, recluster_job, search_job) on the local instance
    climb ui          the Dagster UI (dagster dev) on the same CLIMB_HOME
    climb mlflow-ui   the MLflow UI on the local tracking store
"""

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from climb_assets.home import ClimbHome

REPO_ROOT = Path(__file__).resolve().parents[1]


def platform_env(home: ClimbHome) -> dict[str, str]:
    return {
        "CLIMB_HOME": str(home.root),
        "DAGSTER_HOME": str(home.dagster),
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


# The demo's static embeddings put Ward's paper threshold (1.5, tuned on a 400M-parameter embedding space) at ~5
# super-clusters; the demo asks for the paper's granularity, ~20, instead.

# The console shows what each step reports (INFO), not Dagster's per-event DEBUG stream; the UI has everything.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def ingest_landed(defs, instance, home: ClimbHome) -> list[str]:
    """Evaluate the real landing sensor once and run what it requests (what the daemon does under `dagster dev`)."""
    import dagster as dg

    from climb_assets.instance import local_run_tags
    from climb_assets.resources import ClimbHomeResource

    sensor = defs.resolve_sensor_def("landing_sensor")
    result = sensor(dg.build_sensor_context(instance=instance, resources={"climb": ClimbHomeResource(root=str(home.root))}))
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in result.asset_events:  # refused files and rewrites reach the catalog, as under the daemon
        instance.report_runless_asset_event(event)
    job = defs.resolve_job_def("ingest_shard_job")
    for request in result.run_requests:
        outcome = job.execute_in_process(
            instance=instance, partition_key=request.partition_key, run_config=QUIET, raise_on_error=False,
            tags=request.tags | local_run_tags(),  # the attempt's tags: the sensor counts failed and killed ones
        )
        if not outcome.success:
            print(f"    ! {request.partition_key}: ingestion failed (see the Dagster UI)", flush=True)
    return [r.partition_key for r in result.run_requests]


def check_settings(defs, run_config: dict) -> None:
    """Build every configured resource and ClimbMix's config before launching, so a bad setting stops the command at
    once with the setting's name and allowed range (a UI launch stops at the run's first step, for the same reason)."""
    from pydantic import ValidationError

    from climb_assets.search.settings import ClimbMixConfig

    built = [(type(defs.resources[key]), defs.resources[key].model_dump() | (entry.get("config") or {}))
             for key, entry in (run_config.get("resources") or {}).items() if key in defs.resources]  # fmt: skip
    climbmix = ((run_config.get("ops") or {}).get("climbmix") or {}).get("config")
    built += [(ClimbMixConfig, climbmix)] if climbmix else []
    for kind, values in built:
        try:
            kind(**values)
        except ValidationError as error:
            raise SystemExit("; ".join(_named(e) for e in error.errors())) from None


def _named(error: dict) -> str:
    """A validation error with the setting it is about (a type or choice error does not name it by itself)."""
    message = error["msg"].removeprefix("Value error, ")
    return f"{'.'.join(map(str, error['loc']))}: {message}" if error["loc"] else message


def run_job(defs, instance, name: str, run_config: dict | None = None, *, gpu_slots: int = 1, asset_selection=None):
    """Run a job on the local instance. With one GPU slot, in this process; with more, every step in its own process
    (Dagster's multiprocess executor on the code location's own definitions), up to ``gpu_slots`` GPU steps at once
    (the instance's ``gpu`` pool limit), each on its own leased device."""
    import dagster as dg

    from climb_assets.instance import local_run_tags

    config = QUIET | (run_config or {})
    check_settings(defs, config)
    if gpu_slots > 1:
        job = dg.build_reconstructable_job("climb_assets.definitions", "resolved_job", reconstructable_args=(name,))
        config |= {"execution": {"config": {"multiprocess": {"max_concurrent": gpu_slots + 1}}}}
        outcome = dg.execute_job(
            job, instance, run_config=config, asset_selection=asset_selection, tags=local_run_tags()
        )
    else:
        outcome = defs.resolve_job_def(name).execute_in_process(
            instance=instance, run_config=config, raise_on_error=False, asset_selection=asset_selection,
            tags=local_run_tags(),
        )
    if not outcome.success:
        failures = [e.message for e in outcome.all_events if e.is_step_failure]
        raise SystemExit(f"{name} failed: {failures}")
    return outcome


def bring_clusters_current(defs, instance, home: ClimbHome, *, refit: bool = False, merge_config: dict | None = None):
    """What the recluster sensor requests, run in process: a fit when there are no centroids (or ``refit``), an
    assignment run for each shard missing under the current centroids (only new shards, unless refitted), a
    semantic dedup run for each shard not yet checked, then the merge (dbt_quality + super-clusters). Returns the
    shards assigned."""
    from climb_assets.cluster.lake import current_version, embedded_shards, unassigned_shards
    from climb_assets.cluster.semantic_dedup import checked_shards

    if refit or current_version(home) is None:
        run_job(defs, instance, "cluster_fit_job")
    shards = unassigned_shards(home)
    run_partitions(defs, instance, "cluster_assign_job", shards)
    settings = defs.resources["semantic_dedup"].settings()
    unchecked = sorted(set(embedded_shards(home)) - checked_shards(home, current_version(home), settings))
    run_partitions(defs, instance, "semantic_dedup_job", unchecked)
    run_job(defs, instance, "recluster_job", merge_config)
    return shards


def run_partitions(defs, instance, name: str, shards: list[str], run_config: dict | None = None) -> None:
    from climb_assets.instance import local_run_tags

    job = defs.resolve_job_def(name)
    config = QUIET | (run_config or {})
    for shard in shards:
        outcome = job.execute_in_process(
            instance=instance, partition_key=shard, run_config=config, raise_on_error=False, tags=local_run_tags()
        )
        if not outcome.success:
            raise SystemExit(f"{name} failed for shard {shard} (see the Dagster UI)")


def open_platform(gpu_slots: int = 0):
    """CLIMB_HOME, its Dagster instance (``gpu`` pool sized to ``gpu_slots``, default one per GPU) and the code
    location, with the environment every step expects."""
    home = ClimbHome.from_env().ensure()
    os.environ.update(platform_env(home))
    from climb_assets.instance import prepare_instance

    instance = prepare_instance(home, gpu_slots)
    from climb_assets.definitions import (
        defs,  # after the environment is set: resources read it at import
    )

    return home, instance, defs


def search_config(args: argparse.Namespace) -> dict:
    """Run config for search_job: the user's YAML, with the target and ``--full-search`` from the command line on top."""
    import yaml

    config = yaml.safe_load(Path(args.config).read_text()) if getattr(args, "config", None) else {}
    flags = {
        "target_texts_path": str(Path(args.target_texts).resolve()) if getattr(args, "target_texts", None) else None,
        "target_mc_path": str(Path(args.target_mc).resolve()) if getattr(args, "target_mc", None) else None,
        "target_kind": getattr(args, "target_kind", None),
        "search_start": "fresh" if getattr(args, "full_search", False) else None,
    }
    for key, path in flags.items():
        if key.endswith("_path") and path and not Path(path).is_file():
            raise SystemExit(f"{key.removesuffix('_path').replace('_', ' ')}: no such file {path}")
    chosen = {k: v for k, v in flags.items() if v}
    if chosen:
        search = config.setdefault("resources", {}).setdefault("search", {}).setdefault("config", {})
        search.update(chosen)
    return config


def search_plan_of(defs, home: ClimbHome, run_config: dict | None):
    """The search ``run_config`` asks for: the code location's search settings with the run's on top."""
    from climb_assets.search.keys import SearchPlan

    search = defs.resources["search"]
    chosen = ((run_config or {}).get("resources") or {}).get("search", {}).get("config") or {}
    return SearchPlan(home, type(search)(**(search.model_dump() | chosen)))


def search_key_of(defs, home: ClimbHome, run_config: dict | None) -> str:
    """The key of the search ``run_config`` ran: its ClimbMix and proof are under ``climbmix/<search key>/``."""
    return search_plan_of(defs, home, run_config).search_key


def tokenize_new_shards(defs, instance, home: ClimbHome, run_config: dict | None) -> list[str]:
    """One ``tokenize_shard_job`` run per shard without token files for the search's kept tokenizer (after a new
    wave: its new shards only); none before the first search, whose tokenizer step tokenizes every shard."""
    from climb_assets.search.sensors import shards_to_tokenize

    _, shards = shards_to_tokenize(search_plan_of(defs, home, run_config))
    resources = (run_config or {}).get("resources")  # the search settings name the tokenizer
    run_partitions(defs, instance, "tokenize_shard_job", shards, {"resources": resources} if resources else None)
    return shards


def print_locations(home: ClimbHome, search_key: str, total: float, summary_path: Path) -> None:
    from climb_assets.lake import climbmix_dir, proof_report_path

    proof = proof_report_path(home, search_key)
    if proof.exists():
        print("\n" + proof.read_text())
    print(f"\nDone in {total}s. Everything is under {home.root}:")
    print(f"  lake (Parquet per asset)  {home.lake}")
    print(f"  ClimbMix + manifest.json  {climbmix_dir(home, search_key)}")
    print(f"  proof report              {proof}")
    print(f"  Dagster instance          {home.dagster}    -> `make ui` (or `climb ui`) to browse runs, assets, checks")
    print(f"  MLflow store              {home.mlflow}     -> `make mlflow-ui` (or `climb mlflow-ui`) to compare proxies")
    print(f"  timings                   {summary_path}")


def write_summary(home: ClimbHome, search_key: str, name: str, summary: dict) -> Path:
    from climb_assets.lake import climbmix_dir, proof_report_path
    from climb_assets.search.tracking import local_tracking_uri

    path = home.root / name
    path.write_text(json.dumps(summary | {
        "search_key": search_key,
        "climbmix": str(climbmix_dir(home, search_key)),
        "proof_report": str(proof_report_path(home, search_key)),
        "mlflow_tracking_uri": local_tracking_uri(home),
    }, indent=2, default=str))  # fmt: skip
    return path


def demo(args: argparse.Namespace) -> None:
    from climb_assets.demo import RECIPES, build_demo_corpus
    from climb_assets.quality.merge import DEFAULT_TARGET_COUNT

    # The demo cuts the merge tree to the paper's ~20 super-clusters instead of trusting the distance threshold.
    merge_config = {"ops": {"quality_filtered_clusters": {"config": {"target_count": DEFAULT_TARGET_COUNT}}}}
    recipe = RECIPES[args.corpus]
    home, instance, defs = open_platform()
    timer = Timer()
    started = time.perf_counter()
    with timer.step(f"{recipe.name} corpus, wave 1"):
        wave1 = build_demo_corpus(home, wave=1, scale=args.scale, seed=args.seed, recipe=recipe)
    with timer.step("ingest + embed + score wave 1 (one run per new shard)"):
        first = ingest_landed(defs, instance, home)
    with timer.step("fit centroids on a sample, assign every shard, quality + super-clusters"):
        bring_clusters_current(defs, instance, home, merge_config=merge_config)
    with timer.step(f"{recipe.name} corpus, wave 2"):
        wave2 = build_demo_corpus(home, wave=2, scale=args.scale, seed=args.seed, recipe=recipe)
    with timer.step("ingest wave 2 (only the new shards)"):
        second = ingest_landed(defs, instance, home)
    with timer.step("assign only the new shards (same centroids), quality + super-clusters"):
        assigned = bring_clusters_current(defs, instance, home, merge_config=merge_config)
    with timer.step("CLIMB search, ClimbMix and proof"):
        run_job(defs, instance, "search_job")
    total = round(time.perf_counter() - started, 1)
    search_key = search_key_of(defs, home, None)
    summary = write_summary(home, search_key, "demo_summary.json", {
        "climb_home": str(home.root), "wave_1_shards": first, "wave_2_shards": second,
        "wave_2_shards_assigned": assigned,
        "corpus": {"wave_1": wave1, "wave_2": wave2}, "timings_seconds": timer.steps | {"total": total},
    })  # fmt: skip
    print_locations(home, search_key, total, summary)


def ingest(args: argparse.Namespace) -> None:
    """Process what has landed, exactly as the sensor does under `dagster dev`; print what was ingested."""
    home, instance, defs = open_platform()
    shards = ingest_landed(defs, instance, home)
    print(f"ingested {len(shards)} new shard(s) from {home.landing}: {shards}" if shards else f"nothing new in {home.landing}")


def crawl(args: argparse.Namespace) -> None:
    """`climb demo` on the user's own landed shards: ingest new files, re-cluster, search for the named target."""
    run_config = search_config(args)
    home, instance, defs = open_platform(args.gpu_slots)
    named = run_config.get("resources", {}).get("search", {}).get("config", {})
    if not (named.get("target_texts_path") or named.get("target_mc_path") or (home.targets / "target.jsonl").exists()):
        raise SystemExit(f"name a target: --target-texts FILE (or --target-mc FILE), or put it at {home.targets / 'target.jsonl'}")
    timer = Timer()
    started = time.perf_counter()
    with timer.step(f"ingest + embed + score what landed in {home.landing}"):
        shards = ingest_landed(defs, instance, home)
    if not instance.get_dynamic_partitions("raw_shards"):
        raise SystemExit(f"no shards ingested yet: drop jsonl, jsonl.gz or Parquet files into {home.landing}")
    with timer.step("clusters current (fit if none, assign new shards), quality + super-clusters"):
        bring_clusters_current(defs, instance, home)
    with timer.step("token files for shards the kept tokenizer has not seen (one run per shard)"):
        tokenized = tokenize_new_shards(defs, instance, home, run_config)
    with timer.step("CLIMB search, ClimbMix and proof"):
        run_job(defs, instance, "search_job", run_config, gpu_slots=args.gpu_slots or 1)
    total = round(time.perf_counter() - started, 1)
    search_key = search_key_of(defs, home, run_config)
    summary = write_summary(home, search_key, "crawl_summary.json", {
        "climb_home": str(home.root), "new_shards": shards, "shards_tokenized_before_search": tokenized,
        "search_config": run_config,
        "timings_seconds": timer.steps | {"total": total},
    })  # fmt: skip
    print_locations(home, search_key, total, summary)


def run(args: argparse.Namespace) -> None:
    """Run one job of the code location against the local instance (e.g. re-run the search after a change)."""
    run_config = search_config(args)
    _, instance, defs = open_platform(args.gpu_slots)
    run_job(defs, instance, args.job, run_config, gpu_slots=args.gpu_slots or 1)


# The UIs replace this process (exec), so `climb ui`'s pid is the server's: a signal to it stops the server and
# everything it started (dagster dev and mlflow forward SIGTERM to their children), never leaving them orphaned.
def ui(args: argparse.Namespace) -> None:
    home = ClimbHome.from_env().ensure()
    from climb_assets.instance import prepare_instance

    prepare_instance(home)
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(args.port)]
    os.chdir(REPO_ROOT)
    os.execve(sys.executable, command, os.environ | platform_env(home))


def mlflow_ui(args: argparse.Namespace) -> None:
    from climb_assets.search.tracking import local_tracking_uri

    home = ClimbHome.from_env().ensure()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", local_tracking_uri(home), "--port", str(args.port)]
    os.execv(sys.executable, command)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="Dagster run config (YAML), e.g. resources: {search: {config: {...}}}")
    parser.add_argument("--target-texts", help="held-out texts (jsonl or Parquet with a text field) the search targets")
    parser.add_argument("--target-mc", help="multiple-choice items (jsonl: context, choices, answer)")
    parser.add_argument("--target-kind", choices=["bpb", "mc", "blend"], help="what the search maximises")
    parser.add_argument("--full-search", action="store_true",
                        help="search from scratch instead of continuing the previous search (search_start: fresh)")
    parser.add_argument("--gpu-slots", type=int, default=0,
                        help="proxies trained side by side (default: one per GPU, one on CPU); >1 runs every step "
                             "in its own process")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="climb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run the main job end to end on the built-in demo corpus")
    run_demo.add_argument("--scale", type=float, default=float(os.environ.get("CLIMB_DEMO_SCALE", "1.0")))
    run_demo.add_argument("--seed", type=int, default=0)
    run_demo.add_argument("--corpus", choices=["demo", "packages"], default="demo",
                          help="built-in corpus: demo (prose + Python, Wikipedia target) or packages (code, data, "
                               "licences, dialogue; a target blended from dialogue, SQL and licences)")  # fmt: skip
    run_demo.set_defaults(func=demo)
    run_ingest = commands.add_parser("ingest", help="process everything newly landed (no UI needed)")
    run_ingest.set_defaults(func=ingest)
    run_crawl = commands.add_parser("crawl", help="your own crawl end to end: ingest, re-cluster, search, ClimbMix")
    add_target_arguments(run_crawl)
    run_crawl.set_defaults(func=crawl)
    run_one = commands.add_parser("run", help="run one job (`climb ingest` processes landed shards)")
    run_one.add_argument("job", choices=["cluster_fit_job", "recluster_job", "search_job"])
    add_target_arguments(run_one)
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
