"""MLflow tracking with plain ``mlflow``: one experiment per lineage of searches (the weekly searches with the same
settings, tokenizer and target, across crawl waves and re-clusterings), a parent run per iteration of each search
(tagged ``climb.search_key`` and ``climb.cluster_version``), a run per proxy.

dagster-mlflow's resource opens one run per Dagster run (and is legacy); users compare proxies, so each proxy is
its own run, and every iteration logs the same metric names so the MLflow UI compares them side by side.
"""

import os
import tempfile
from collections.abc import Mapping
from typing import Any

import dagster as dg
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from climb_assets.home import ClimbHome
from climb_assets.storage import exclusive_lock

PARENT_TAG = "mlflow.parentRunId"
# MLflow 3 opens an experiment without this tag in its GenAI view; ours are model-training runs, shown as a table.
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def local_tracking_uri(home: ClimbHome) -> str:
    return f"sqlite:///{home.mlflow / 'mlflow.db'}"


class MlflowTracking(dg.ConfigurableResource):
    """Empty ``tracking_uri`` means ``$MLFLOW_TRACKING_URI`` when set, else a local sqlite store in CLIMB_HOME/mlflow."""

    tracking_uri: str = ""
    experiment_prefix: str = "climb-search"

    def uri(self, home: ClimbHome) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(home)

    def client(self, home: ClimbHome) -> MlflowClient:
        # No mlflow.set_tracking_uri: it writes $MLFLOW_TRACKING_URI, which would point every later client in the
        # process (another CLIMB_HOME, a test) at this store.
        uri = self.uri(home)
        if not uri.startswith("sqlite:"):
            return MlflowClient(tracking_uri=uri)
        # A new client of a sqlite store creates or migrates its tables: two steps doing it at once (the first two
        # parallel steps of a run) collide in the migrations, so one process at a time.
        with exclusive_lock(home.mlflow / "store.lock"):
            return MlflowClient(tracking_uri=uri)

    def experiment_name(self, lineage_key: str, suffix: str = "") -> str:
        """``climb-search/lineage-<key[:12]>`` (``-proof`` suffixed for proof runs)."""
        return f"{self.experiment_prefix}/lineage-{lineage_key[:12]}{suffix}"

    def experiment_id(self, client: MlflowClient, home: ClimbHome, lineage_key: str, suffix: str = "") -> str:
        """The experiment of one lineage: its searches, wave after wave, side by side."""
        name = self.experiment_name(lineage_key, suffix)
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            if existing.tags.get("mlflow.experimentKind") is None:  # created by an older climb
                for key, value in EXPERIMENT_KIND_TAGS.items():
                    client.set_experiment_tag(existing.experiment_id, key, value)
            return existing.experiment_id
        artifacts = (home.mlflow / "artifacts").as_uri() if self.uri(home).startswith("sqlite:") else None
        tags = {"climb.lineage": lineage_key, **EXPERIMENT_KIND_TAGS}
        return client.create_experiment(name, artifact_location=artifacts, tags=tags)

    def open_run(
        self,
        client: MlflowClient,
        experiment_id: str,
        name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
        reuse: bool = False,
    ) -> str:
        """Start a run; with ``reuse``, return the existing run carrying the same name and tags instead."""
        if reuse:
            query = " and ".join([f"tags.`mlflow.runName` = '{name}'"] + [f"tags.`{k}` = '{v}'" for k, v in tags.items()])
            found = client.search_runs([experiment_id], filter_string=query, max_results=1)
            if found:
                return found[0].info.run_id
        all_tags = dict(tags) | ({PARENT_TAG: parent_run_id} if parent_run_id else {})
        return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id


def log_run(
    client: MlflowClient,
    run_id: str,
    *,
    params: Mapping[str, Any] = (),
    metrics: Mapping[str, float] = (),
    curves: Mapping[str, list[tuple[int, float]]] = (),
) -> None:
    """Params, final metrics and step-indexed curves in a few batched calls."""
    params = [Param(k, str(v)[:6000]) for k, v in dict(params).items()]
    points = [Metric(k, float(v), 0, 0) for k, v in dict(metrics).items()]
    for name, curve in dict(curves).items():
        points += [Metric(name, float(value), 0, int(step)) for step, value in curve]
    for start in range(0, max(len(params), 1), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[start : start + 1000])


def log_lightgbm_model(client: MlflowClient, run_id: str, booster, name: str) -> None:
    """Save the booster in MLflow's lightgbm flavour and attach it to ``run_id`` through the client (the fluent
    ``log_model`` would need the process-global tracking URI)."""
    import mlflow.lightgbm

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.lightgbm.save_model(booster, f"{tmp}/{name}")
        client.log_artifacts(run_id, f"{tmp}/{name}", artifact_path=name)


def weight_params(groups, weights) -> dict[str, float]:
    """Mixture weights as MLflow params with the same keys in every run (``w_03``), so runs line up in the UI."""
    return {f"w_{int(g):02d}": round(float(w), 5) for g, w in zip(groups, weights)}


def label_params(labels: Mapping[int, str]) -> dict[str, str]:
    """What each ``w_NN`` means, logged once on the iteration's parent run."""
    return {f"label_{int(g):02d}": label for g, label in labels.items()}


def tag_run(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """A link for asset metadata: the run in the MLflow UI (``climb mlflow-ui`` serves the local store)."""
    base = uri if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
