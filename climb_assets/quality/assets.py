"""``quality_signals``: per-document quality signals and a combined score, per shard (the dbt_quality models are in
``quality/dbt.py``, the merge into super-clusters in ``quality/super_clusters.py``)."""

import time

import dagster as dg
import polars as pl

from climb_assets.ingest.assets import raw_shards, shard_partitions
from climb_assets.lake import quality_path, raw_shard_path
from climb_assets.metadata import markdown_table
from climb_assets.quality.scorers import QualityScorer, make_scorer, score_documents
from climb_assets.resources import ClimbHomeResource
from climb_assets.storage import write_parquet_atomic


class QualityScorerResource(dg.ConfigurableResource):
    """``heuristic`` (Gopher/C4-style rules on the paper's 1–5 scale) or ``fasttext`` with a user's classifier file."""

    scorer: str = "heuristic"
    fasttext_model_path: str = ""

    def build(self) -> QualityScorer:
        if self.scorer == "fasttext" and not self.fasttext_model_path:
            raise dg.Failure("scorer=fasttext needs fasttext_model_path (a trained fastText classifier file)")
        options = {"model_path": self.fasttext_model_path} if self.scorer == "fasttext" else {}
        return make_scorer(self.scorer, **options)


@dg.asset(partitions_def=shard_partitions, deps=[raw_shards], group_name="quality", kinds={"polars"})
def quality_signals(
    context: dg.AssetExecutionContext, climb: ClimbHomeResource, quality_scorer: QualityScorerResource
) -> dg.MaterializeResult:
    """Per-document quality signals and a combined score (1–5) for one shard."""
    home = climb.home()
    docs = pl.read_parquet(raw_shard_path(home, context.partition_key), columns=["doc_id", "text"])
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
