"""Document quality scoring, cluster pruning and merging into super-clusters (CLIMB step 3).

``signals``/``scorers`` score documents, the ``dbt_quality`` project (repository root) aggregates them per fine
cluster and decides keep/prune, ``merge`` turns the kept clusters into super-clusters.
"""

from __future__ import annotations

from pathlib import Path

from climb_assets.cluster.lake import require_current_version
from climb_assets.home import ClimbHome

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_quality"


def dbt_environment(home: ClimbHome) -> dict[str, str]:
    """Environment variables for a dbt run of ``dbt_quality`` over ``home``'s lake, under the current centroid
    version (read once; fails clearly before dbt starts when there are no centroids yet).

    Also creates ``lake/dbt/``: dbt-duckdb writes cluster_decisions.parquet with DuckDB's COPY, which does not
    create directories.
    """
    version = require_current_version(home)
    (home.lake / "dbt").mkdir(parents=True, exist_ok=True)
    return {"CLIMB_HOME": str(home.root), "DBT_DUCKDB_PATH": str(home.lake / "quality.duckdb"),
            "CLIMB_CLUSTER_VERSION": version}  # fmt: skip


def cluster_decisions_path(home: ClimbHome) -> Path:
    """Where ``dbt build`` leaves the keep/prune decisions for Python (read with merge.load_cluster_decisions)."""
    return home.lake / "dbt" / "cluster_decisions.parquet"
