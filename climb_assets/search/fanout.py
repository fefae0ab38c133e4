"""Training runs (proxies, baselines, proof runs) as cached units of work, and their fan-out into one Dagster step
per run.

``train_or_reuse`` is the one place a run is trained: its record is stored under the run's fingerprint, so a
finished run is never repeated and a changed one is never reused. ``training_fan_out`` is the one fan-out used by
the proxies, the random baseline and the proof: a list op yields one dynamic output per run, a train step per run
(Dagster dynamic mapping) is in the ``gpu`` pool, holds a device lease for its lifetime and can be retried alone,
and a collect op gathers the records.
"""

import json
import re
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import dagster as dg
import numpy as np

from climb_assets.devices import device_lease, gpu_slots
from climb_assets.home import ClimbHome
from climb_assets.lm.proxy import ProxySettings, run_proxy
from climb_assets.lm.train import load_checkpoint
from climb_assets.resources import ClimbHomeResource
from climb_assets.search.keys import SearchPlan, cached_file_sha256
from climb_assets.search.settings import SearchSettings
from climb_assets.search.state import search_inputs
from climb_assets.search.tracking import MlflowTracking, log_run, weight_params
from climb_assets.storage import exclusive_lock, write_json_atomic
from climb_assets.tags import GPU_POOL, GPU_TAGS


@dataclass(frozen=True)
class TrainingRun:
    """One proxy or proof training run: its display name, mixture, settings, seed and starting checkpoint."""

    name: str
    groups: list[int]
    weights: np.ndarray
    settings: ProxySettings
    seed: int
    init_path: Path | None = None

    def named_weights(self) -> dict[str, float]:
        return weight_params(self.groups, self.weights)


@dataclass
class RunLog:
    """Where a training run reports: the MLflow experiment, the parent run and tags, and the step's logger."""

    tracking: MlflowTracking
    client: object
    experiment: str
    parent: str | None
    tags: dict[str, str]
    log: object


def train_or_reuse(plan: SearchPlan, run: TrainingRun, marker_dir: Path, sink: RunLog) -> dict:
    """The finished record of ``run``: read from its fingerprinted marker, or trained now (as a new MLflow run).

    One attempt per key at a time: a second attempt (a retry while the first is alive, or two searches sharing a
    run) waits on the key's lock, then reuses the first's record. Holding the lock, a run still RUNNING in MLflow
    with the same key can only be a killed attempt's, and is marked FAILED; the marker is written last and
    atomically, so a killed training leaves no record and is redone, and a finished one is never repeated.
    """
    init_sha = cached_file_sha256(run.init_path) if run.init_path else None
    key = plan.run_key(run.named_weights(), run.settings, run.seed, init_sha)
    marker = marker_dir / f"{key}.json"

    def waiting(pid: str) -> None:
        sink.log.info(f"{run.name}: another attempt (pid {pid}) is training {key}; waiting for it")

    with exclusive_lock(marker.with_suffix(".lock"), on_wait=waiting):
        if marker.exists():
            return json.loads(marker.read_text()) | {"name": run.name, "reused": True}  # the same work, another name
        return _train(plan, run, key, init_sha, marker, sink) | {"reused": False}


def _train(plan: SearchPlan, run: TrainingRun, key: str, init_sha: str | None, marker: Path, sink: RunLog) -> dict:
    client = sink.client
    stale = client.search_runs(
        [sink.experiment], filter_string=f"tags.`climb.fingerprint` = '{key}' and attributes.status = 'RUNNING'"
    )
    for old in stale:
        client.set_terminated(old.info.run_id, status="FAILED")
    tags = sink.tags | {"climb.candidate": run.name, "climb.fingerprint": key}
    run_id = sink.tracking.open_run(client, sink.experiment, run.name, tags, parent_run_id=sink.parent)
    log_run(client, run_id, params={**run.named_weights(), **run.settings.params(), "seed": run.seed,
                                    "init_sha256": init_sha or "scratch"})  # fmt: skip
    tokenizer, corpus = search_inputs(plan)
    init_state = load_checkpoint(run.init_path)[0].state_dict() if run.init_path else None
    outcome, _ = run_proxy(
        corpus, tokenizer, run.weights, run.settings, plan.search.target(plan.home), seed=run.seed, init_state=init_state
    )
    log_run(client, run_id, metrics=outcome.metrics | {f"cluster_bpb_{g}": v for g, v in outcome.cluster_bpb.items()},
            curves={"train_loss_curve": outcome.loss_curve})  # fmt: skip
    client.set_terminated(run_id)
    record = {
        **asdict(outcome), "name": run.name, "fingerprint": key, "mlflow_run_id": run_id, "weights": run.named_weights(),
        "seed": run.seed, "settings": asdict(run.settings), "init_sha256": init_sha,
        "tokenizer_sha256": plan.tokenizer_sha, "target": plan.target_ingredients, **plan.corpus_ingredients,
    }  # fmt: skip
    write_json_atomic(record, marker)
    sink.log.info(f"{run.name}: objective {outcome.metrics['objective']:.4f} in {outcome.seconds:.1f}s ({key})")
    return record


def run_log(plan: SearchPlan, tracking: MlflowTracking, context, *, experiment_suffix: str = "",
            parent: str | None = None, tags: dict[str, str] | None = None) -> RunLog:  # fmt: skip
    """Where a stage's runs report: the search lineage's experiment (``-proof`` for proof runs), under an optional
    parent run opened once and reused by name and tags, tagged with the search and the Dagster run."""
    client = tracking.client(plan.home)
    experiment = tracking.experiment_id(client, plan.home, plan.lineage_key, experiment_suffix)
    tags = plan.mlflow_tags() | (tags or {})
    parent_id = tracking.open_run(client, experiment, parent, tags, reuse=True) if parent else None
    return RunLog(tracking, client, experiment, parent_id, tags | {"dagster.run_id": context.run_id}, context.log)


def step_key(name: str) -> str:
    """A dynamic mapping key from a run's display name (letters, digits and underscores only)."""
    return re.sub(r"\W", "_", name)


def _training_step(
    name: str,
    markers_of: Callable[[ClimbHome], Path],
    run_log_of: Callable[[SearchPlan, MlflowTracking, dg.OpExecutionContext], RunLog],
) -> dg.OpDefinition:
    """The op that trains or reuses one run on a leased device: in the ``gpu`` pool, tagged for GPU routing."""

    @dg.op(name=f"{name}_train", pool=GPU_POOL, tags=GPU_TAGS)
    def train(context: dg.OpExecutionContext, climb: ClimbHomeResource, search: SearchSettings,
              mlflow_tracking: MlflowTracking, run: TrainingRun) -> dict:  # fmt: skip
        plan = SearchPlan(climb.home(), search)
        with device_lease(plan.home, gpu_slots(context.instance)) as lease:
            threads = run.settings.num_threads or lease.threads  # a user's explicit thread count wins
            pinned = replace(run, settings=replace(run.settings, device=lease.device, num_threads=threads))
            record = train_or_reuse(plan, pinned, markers_of(plan.home), run_log_of(plan, mlflow_tracking, context))
        context.add_output_metadata(lease.metadata() | {
            "run": run.name, "fingerprint": record["fingerprint"], "reused": record["reused"],
            "objective": record["metrics"]["objective"], "host": socket.gethostname(),
        })  # fmt: skip
        return {k: record[k] for k in ("name", "fingerprint", "reused", "metrics", "seconds", "tokens_seen",
                                       "mlflow_run_id", "seed", "weights", "cluster_bpb")}  # fmt: skip

    return train


def training_fan_out(
    name: str,
    *,
    inputs: list[str],
    runs_of: Callable[[dg.OpExecutionContext, SearchPlan], list[TrainingRun]],
    markers_of: Callable[[ClimbHome], Path],
    run_log_of: Callable[[SearchPlan, MlflowTracking, dg.OpExecutionContext], RunLog],
    collect: Callable[[dg.OpExecutionContext, SearchPlan, list[dict]], dg.Output],
    resources: frozenset[str] = frozenset(),
) -> Callable[..., object]:
    """``{name}_runs`` (one dynamic output per run) → ``{name}_train`` mapped over them → ``{name}_collect``.

    ``inputs`` are the Nothing dependencies of the list op (the graph asset's upstream assets); the returned function
    wires the three ops inside a ``graph_asset`` body. ``runs_of`` and ``collect`` get the op's context, whose
    resources hold ``climb``, ``search`` and ``mlflow_tracking``, plus any other ``resources`` named.
    """
    required = {"climb", "search", "mlflow_tracking"} | set(resources)

    def plan_of(context: dg.OpExecutionContext) -> SearchPlan:
        return SearchPlan(context.resources.climb.home(), context.resources.search)

    @dg.op(name=f"{name}_runs", ins={k: dg.In(dg.Nothing) for k in inputs}, out=dg.DynamicOut(TrainingRun),
           required_resource_keys=required)  # fmt: skip
    def list_runs(context: dg.OpExecutionContext):
        plan = plan_of(context)
        run_log_of(plan, context.resources.mlflow_tracking, context)  # opens any parent run once, before the steps
        for run in runs_of(context, plan):
            yield dg.DynamicOutput(run, mapping_key=step_key(run.name))

    train = _training_step(name, markers_of, run_log_of)

    @dg.op(name=f"{name}_collect", required_resource_keys=required)
    def collect_records(context: dg.OpExecutionContext, records: list[dict]) -> dg.Output:
        return collect(context, plan_of(context), records)

    def wire(**upstream):
        return collect_records(list_runs(**upstream).map(train).collect())

    return wire
