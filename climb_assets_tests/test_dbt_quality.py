"""The dbt_quality project: `dbt build` over a tiny Parquet lake passes, decides keep/prune by its vars, and
fails on planted bad data. dbt runs against a temp CLIMB_HOME."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest
from dbt.cli.main import dbtRunner

from climb_assets.cluster.lake import current_version
from climb_assets.home import ClimbHome
from climb_assets.lake import cluster_decisions_path, dbt_database_path, dbt_environment
from climb_assets.quality.dbt import DBT_PROJECT_DIR
from climb_assets.quality.merge import load_cluster_decisions
from climb_assets.resources import ClimbHomeResource

# cluster 0: good docs; cluster 1: boilerplate; cluster 2: one good doc (too small); spread over two shards.
DOCS = pl.DataFrame(
    {
        "doc_id": [f"d{i}" for i in range(9)],
        "shard": ["s1"] * 5 + ["s2"] * 4,
        "cluster_id": [0, 0, 0, 0, 1, 1, 1, 2, 0],
        "quality_score": [4.0, 5.0, 3.5, 4.5, 1.0, 2.0, 1.5, 5.0, 3.0],
        "dup_line_fraction": [0.0, 0.0, 0.1, 0.0, 0.6, 0.5, 0.0, 0.0, 0.0],
        "dup_5gram_char_fraction": [0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0],
        "n_tokens": [120, 300, 80, 150, 20, 25, 30, 200, 90],
    }
)
VERSION = "v0001-test"  # the centroid version the lake's assignments are under


# Rows of the landed files that ingest did not accept: shard -> (quarantined row numbers, duplicate row numbers).
REJECTED_ROWS = {"s1": ([2], [5]), "s2": ([], [])}


def _write_lake(home: ClimbHome, docs: pl.DataFrame) -> None:
    """Each shard's three ingest outputs, whose row numbers cover the landed file once, and its quality scores."""
    for shard, part in docs.partition_by("shard", as_dict=True).items():
        name = shard[0]
        for folder in ("raw_shards", "quality", "quarantine", "duplicates"):
            (home.lake / folder).mkdir(parents=True, exist_ok=True)
        quarantined, duplicates = REJECTED_ROWS[name]
        accepted = [n for n in range(part.height + len(quarantined) + len(duplicates)) if n not in quarantined + duplicates]
        raw = part.select("doc_id", pl.lit("text").alias("text"), "shard", "n_tokens", source_kind=pl.lit("web"))
        raw.with_columns(row_number=pl.Series(accepted)).write_parquet(home.lake / "raw_shards" / f"{name}.parquet")
        pl.DataFrame({"shard": name, "row_number": quarantined, "reason": "blank_line"},
                     schema_overrides={"row_number": pl.Int64}).write_parquet(home.lake / "quarantine" / f"{name}.parquet")
        pl.DataFrame({"shard": name, "row_number": duplicates, "kind": "exact", "duplicate_of": "d0"},
                     schema_overrides={"row_number": pl.Int64, "duplicate_of": pl.String}).write_parquet(
            home.lake / "duplicates" / f"{name}.parquet"
        )
        part.select("doc_id", "dup_line_fraction", "dup_5gram_char_fraction", "quality_score").write_parquet(
            home.lake / "quality" / f"{name}.parquet"
        )
    _write_assignments(home, VERSION, docs)
    (home.lake / "clusters" / "CURRENT").write_text(VERSION)


def _write_assignments(home: ClimbHome, version: str, docs: pl.DataFrame) -> None:
    """One file per shard under ``version``, as cluster_assignments writes them."""
    assignments = home.lake / "clusters" / version / "assignments"
    assignments.mkdir(parents=True, exist_ok=True)
    for shard, part in docs.partition_by("shard", as_dict=True).items():
        part.select("doc_id", "shard", "cluster_id", pl.lit(0.5, dtype=pl.Float32).alias("distance")).write_parquet(
            assignments / f"{shard[0]}.parquet"
        )


def _write_centroids(home: ClimbHome, version: str, seed: int) -> None:
    directory = home.lake / "clusters" / version
    directory.mkdir(parents=True, exist_ok=True)
    centroids = np.random.default_rng(seed).standard_normal((3, 8)).astype(np.float32)
    np.save(directory / "centroids.npy", centroids / np.linalg.norm(centroids, axis=1, keepdims=True))
    pl.DataFrame({"cluster_id": [0, 1, 2]}).write_parquet(directory / "clusters.parquet")


@dataclass
class DbtRun:
    success: bool
    failed: list[str]  # names of the nodes that failed or errored
    warned: list[str]


@pytest.fixture()
def home(tmp_path: Path) -> ClimbHome:
    home = ClimbHome.at(tmp_path / "climb")
    _write_lake(home, DOCS)
    return home


@pytest.fixture()
def dbt(home: ClimbHome, monkeypatch: pytest.MonkeyPatch) -> Callable[..., DbtRun]:
    """Run dbt in-process (dbtRunner: dbt is imported once for the module) against ``home``."""
    for key, value in dbt_environment(home, current_version(home)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DBT_TARGET_PATH", str(home.root / "dbt_target"))
    monkeypatch.setenv("DBT_LOG_PATH", str(home.root / "dbt_logs"))
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")

    def run(*args: str) -> DbtRun:
        res = dbtRunner().invoke(
            [*args, "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR), "--quiet"]
        )
        if res.exception is not None:
            raise res.exception
        failed = [r.node.name for r in res.result.results if r.status in ("fail", "error")]
        return DbtRun(success=res.success, failed=failed, warned=[r.node.name for r in res.result.results if r.status == "warn"])

    return run


def test_build_passes_and_decisions_follow_the_data(home: ClimbHome, dbt: Callable[..., DbtRun]) -> None:
    result = dbt("build")
    assert result.success, result.failed
    decisions = load_cluster_decisions(cluster_decisions_path(home)).sort("cluster_id")
    assert decisions.select("cluster_id", "decision", "reason").rows() == [
        (0, "keep", "kept"),
        (1, "prune", "low_quality"),
        (2, "prune", "too_few_docs"),
    ]
    expected = (
        DOCS.group_by("cluster_id")
        .agg(
            n_docs=pl.len(),
            n_tokens=pl.col("n_tokens").sum(),
            mean_quality=pl.col("quality_score").mean(),
            p50_quality=pl.col("quality_score").quantile(0.5, interpolation="linear"),
            duplicate_rate=((pl.col("dup_line_fraction") > 0.3) | (pl.col("dup_5gram_char_fraction") > 0.15)).mean(),
        )
        .sort("cluster_id")
    )
    got = decisions.select(expected.columns)
    for column in expected.columns:
        assert got[column].cast(pl.Float64).to_list() == pytest.approx(expected[column].cast(pl.Float64).to_list())
    # The final models are also tables in the DuckDB file.
    with duckdb.connect(str(dbt_database_path(home))) as con:
        assert con.execute("select count(*) from doc_quality").fetchone() == (DOCS.height,)
        assert con.execute("select count(*) from cluster_quality").fetchone() == (3,)
    # dagster-dbt maps the sources onto the Python assets that write them.
    dagster_dbt = pytest.importorskip("dagster_dbt")
    manifest = json.loads((home.root / "dbt_target" / "manifest.json").read_text())
    translator = dagster_dbt.DagsterDbtTranslator()
    keys = {
        manifest["sources"][uid]["name"]: translator.get_asset_spec(manifest, uid, None).key.path
        for uid in manifest["sources"]
    }
    assert keys == {
        "quality_signals": ["quality_signals"],
        "cluster_assignments": ["cluster_assignments"],
        "raw_docs": ["raw_shards"],
        "quarantine": ["raw_shards"],  # the three outputs of one ingest step: one asset
        "ingest_duplicates": ["raw_shards"],
    }


def test_thresholds_are_dbt_vars(home: ClimbHome, dbt: Callable[..., DbtRun]) -> None:
    result = dbt("run", "--vars", '{"min_mean_quality": 1.0, "min_cluster_docs": 1}')
    assert result.success, result.failed
    lenient = load_cluster_decisions(cluster_decisions_path(home))
    assert lenient["decision"].to_list() == ["keep"] * 3
    result = dbt("run", "--select", "cluster_decisions", "--vars", '{"min_mean_quality": 4.5, "min_cluster_docs": 2}')
    assert result.success, result.failed
    strict = load_cluster_decisions(cluster_decisions_path(home)).sort("cluster_id")
    # cluster 0 mean = 4.0 < 4.5; cluster 2 is both too small and (5.0 >= 4.5) good enough.
    assert strict["reason"].to_list() == ["low_quality", "low_quality", "too_few_docs"]


def test_build_fails_on_a_planted_out_of_range_score(home: ClimbHome, dbt: Callable[..., DbtRun]) -> None:
    bad = DOCS.with_columns(
        quality_score=pl.when(pl.col("doc_id") == "d3").then(7.0).otherwise(pl.col("quality_score"))
    )
    _write_lake(home, bad)
    result = dbt("build")
    assert not result.success
    assert result.failed == ["source_accepted_range_lake_quality_signals_quality_score__5__1"]
    assert not cluster_decisions_path(home).exists(), "models downstream of a failing source test are skipped"


@pytest.mark.parametrize("damage", ["lost", "twice"])
def test_build_fails_when_a_landed_row_is_lost_or_written_twice(home: ClimbHome, dbt: Callable[..., DbtRun], damage) -> None:
    path = home.lake / "duplicates" / "s1.parquet"
    rows = pl.read_parquet(path)
    (rows.clear() if damage == "lost" else pl.concat([rows, rows])).write_parquet(path)  # row 5 gone, or in twice
    result = dbt("build")
    assert not result.success
    assert result.failed == ["landed_rows_accounted_for"]


def test_a_duplicate_whose_kept_copy_is_gone_warns_without_stopping_the_build(home: ClimbHome, dbt: Callable[..., DbtRun]) -> None:
    assert dbt("build").warned == []
    path = home.lake / "duplicates" / "s1.parquet"
    pl.read_parquet(path).with_columns(duplicate_of=pl.lit("d-reingested-away")).write_parquet(path)
    result = dbt("build")
    assert result.success and result.failed == []
    assert [name.split("_lake_")[0] for name in result.warned] == ["source_relationships"]


def test_build_fails_when_a_document_was_never_scored(home: ClimbHome, dbt: Callable[..., DbtRun]) -> None:
    (home.lake / "quality" / "s2.parquet").unlink()  # shard s2 scored by nobody
    result = dbt("build", "--select", "doc_quality")
    assert not result.success
    assert result.failed == ["not_null_doc_quality_quality_score"]


def test_every_cluster_accounted_for_catches_a_stale_decision_file(home: ClimbHome, dbt: Callable[..., DbtRun]) -> None:
    assert dbt("run").success
    # A new shard's assignment brings cluster 3 but the decisions were not rebuilt: the generic test must notice.
    extra = pl.DataFrame(
        {"doc_id": ["d9"], "shard": ["s9"], "cluster_id": [3], "distance": [0.1]},
        schema_overrides={"distance": pl.Float32},
    )
    extra.write_parquet(home.lake / "clusters" / VERSION / "assignments" / "s9.parquet")
    result = dbt("test", "--select", "cluster_decisions")
    assert not result.success
    assert [name.split("_cluster_decisions")[0] for name in result.failed] == ["every_cluster_accounted_for"]


def test_the_conservation_test_is_an_asset_check_of_the_model_it_guards():
    """A singular test over sources only has no model of its own: dagster-dbt would log it as an observation."""
    from climb_assets.quality.dbt import build_dbt_quality_assets

    checks = build_dbt_quality_assets().check_keys
    assert dg.AssetCheckKey(dg.AssetKey("doc_quality"), "landed_rows_accounted_for") in checks


def test_dbt_models_sit_in_the_quality_group_beside_the_python_quality_assets():
    from climb_assets.quality.dbt import build_dbt_quality_assets

    groups = build_dbt_quality_assets().group_names_by_key
    assert dg.AssetKey("cluster_decisions") in groups and set(groups.values()) == {"quality"}


def test_a_merge_reads_one_centroid_version_even_when_a_refit_lands_after_dbt(
    home: ClimbHome, dbt: Callable[..., DbtRun]
) -> None:
    from climb_assets.cluster.lake import current_version
    from climb_assets.quality.super_clusters import MergeConfig, build_super_clusters, super_clusters_partition_check

    _write_centroids(home, VERSION, seed=0)
    assert dbt("build").success
    assert load_cluster_decisions(cluster_decisions_path(home))["centroid_version"].unique().to_list() == [VERSION]
    refit = "v0002-refit"  # lands between dbt and the merge: new centroids, every shard reassigned under them
    _write_centroids(home, refit, seed=1)
    _write_assignments(home, refit, DOCS.with_columns(cluster_id=pl.lit(2)))
    (home.lake / "clusters" / "CURRENT").write_text(refit)

    with pytest.raises(ValueError, match=rf"computed under \['{VERSION}'\], not {refit}"):
        build_super_clusters(home, MergeConfig(target_count=1), current_version(home))
    _, _, docs, table, version, _ = build_super_clusters(home, MergeConfig(target_count=1), VERSION)
    assert version.startswith(f"{VERSION}-s") and set(table["version"]) == {version}
    check = super_clusters_partition_check(ClimbHomeResource(root=str(home.root)))  # CURRENT is the refit's now
    assert check.passed, check.description  # the check reads the version the merge read
    expected = DOCS.select("doc_id", "cluster_id").sort("doc_id")
    assert docs.select("doc_id", "cluster_id").sort("doc_id").equals(expected)  # VERSION's assignments, not refit's


def test_recluster_job_without_centroids_fails_before_dbt_runs(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    from climb_assets.definitions import build_definitions

    home = ClimbHome(tmp_path / "empty").ensure()
    defs = build_definitions(climb=ClimbHomeResource(root=str(home.root)))
    result = defs.resolve_job_def("recluster_job").execute_in_process(instance=instance, raise_on_error=False)
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_key == "dbt_quality_models"
    message = failure.step_failure_data.error.to_string()
    assert "no cluster centroids yet: run cluster_fit_job (or climb crawl) first" in message
