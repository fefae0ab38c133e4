"""Document quality scoring, cluster pruning and merging into super-clusters (CLIMB step 3).

``signals``/``scorers`` score documents, the ``dbt_quality`` project (repository root) aggregates them per fine
cluster and decides keep/prune, ``merge`` turns the kept clusters into super-clusters.
"""

from __future__ import annotations

from pathlib import Path

from climb_assets.home import ClimbHome

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_quality"


def dbt_environment(home: ClimbHome) -> dict[str, str]:
    """Environment variables for a dbt run of ``dbt_quality`` over ``home``'s lake.

    Also creates ``lake/dbt/``: dbt-duckdb writes cluster_decisions.parquet with DuckDB's COPY, which does not
    create directories.
    """
    (home.lake / "dbt").mkdir(parents=True, exist_ok=True)
    return {"CLIMB_HOME": str(home.root), "DBT_DUCKDB_PATH": str(home.lake / "quality.duckdb")}


def cluster_decisions_path(home: ClimbHome) -> Path:
    """Where ``dbt build`` leaves the keep/prune decisions for Python (read with merge.load_cluster_decisions)."""
    return home.lake / "dbt" / "cluster_decisions.parquet"
