"""Quality: per-document signals (per shard), the dbt_quality models and tests, and pruning + merging into
super-clusters (CLIMB step 3)."""

import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets

from climb_assets.home import ClimbHome
from climb_assets.ingest.assets import raw_shards, shard_documents_path, shard_partitions
from climb_assets.metadata import markdown_table
from climb_assets.quality import DBT_PROJECT_DIR, dbt_environment
from climb_assets.quality.scorers import QualityScorer, make_scorer, score_documents
from climb_assets.resources import ClimbHomeResource
from climb_assets.storage import lake_file, write_parquet_atomic
from climb_assets.tags import LAKE_WRITER_POOL

# dbt lives next to this interpreter; the virtualenv's bin/ need not be on PATH.
DBT_EXECUTABLE = shutil.which("dbt") or str(Path(sys.executable).parent / "dbt")

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def dbt_resource() -> DbtCliResource:
    return DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE)


# What DbtProject.prepare_if_dev does, with our dbt executable: re-parse under `dagster dev`/`dg`, and parse once
# when no manifest exists yet (a bare pytest run before `make dbt-parse`), so the asset graph always loads.
if os.environ.get("DAGSTER_IS_DEV_CLI") or not dbt_project.manifest_path.exists():
    dbt_resource().cli(["parse", "--quiet"], target_path=dbt_project.target_path).wait()


class QualityScorerResource(dg.ConfigurableResource):
    """``heuristic`` (Gopher/C4-style rules on the paper's 1–5 scale) or ``fasttext`` with a user's classifier file."""

    scorer: str = "heuristic"
    fasttext_model_path: str = ""

    def build(self) -> QualityScorer:
        if self.scorer == "fasttext" and not self.fasttext_model_path:
            raise dg.Failure("scorer=fasttext needs fasttext_model_path (a trained fastText classifier file)")
        options = {"model_path": self.fasttext_model_path} if self.scorer == "fasttext" else {}
        return make_scorer(self.scorer, **options)


def quality_path(home: ClimbHome, shard: str) -> Path:
    return lake_file(home.lake_dir("quality"), shard, ".parquet")


@dg.asset(partitions_def=shard_partitions, deps=[raw_shards], group_name="quality", kinds={"polars"})
def quality_signals(
    context: dg.AssetExecutionContext, climb: ClimbHomeResource, quality_scorer: QualityScorerResource
) -> dg.MaterializeResult:
    """Per-document quality signals and a combined score (1–5) for one shard."""
    home = climb.home()
    docs = pl.read_parquet(shard_documents_path(home, context.partition_key), columns=["doc_id", "text"])
    scorer = quality_scorer.build()
    started = time.perf_counter()
    frame = score_documents(scorer, docs)
    seconds = time.perf_counter() - started
    write_parquet_atomic(frame, quality_path(home, context.partition_key))
    histogram = frame.group_by(pl.col("quality_score").round(0).alias("score")).len().sort("score")
    return dg.MaterializeResult(
        metadata={
            "docs": frame.height,
            "scorer": scorer.name,
            "mean_score": float(frame["quality_score"].mean() or 0.0),
            "docs_per_second": round(frame.height / max(seconds, 1e-9)),
            "score_histogram": markdown_table(histogram),
        }
    )


@dbt_assets(manifest=dbt_project.manifest_path, project=dbt_project, pool=LAKE_WRITER_POOL)
def dbt_quality_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, climb: ClimbHomeResource):
    """dbt_quality: per-document and per-cluster quality and the keep/prune decision; dbt tests become asset checks."""
    os.environ.update(dbt_environment(climb.home()))  # the dbt profile and sources read CLIMB_HOME
    yield from dbt.cli(["build"], context=context).stream()
