"""Shared fixtures: every test gets a fresh CLIMB_HOME and, where needed, a real Dagster instance in a temp dir."""

import os
import warnings

import dagster as dg
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.resources import ClimbHomeResource  # noqa: E402


@pytest.fixture
def home(tmp_path) -> ClimbHome:
    return ClimbHome(tmp_path / "climb").ensure()


@pytest.fixture
def climb_resource(home) -> ClimbHomeResource:
    return ClimbHomeResource(root=str(home.root))


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as test_instance:
        yield test_instance


TINY_SEARCH = dict(
    proxies_per_iteration=[4, 3, 3],
    token_budget=6_000,
    base_token_budget=6_000,
    block_size=64,
    batch_size=8,
    tokenizer_vocab_size=400,
    tokenizer_sample_docs=300,
    n_layer=1,
    n_head=2,
    n_embd=64,
    pool_size=2_000,
    max_target_texts=5,
    predictor_folds=3,
)
TINY_SEARCH_RUN_CONFIG = {
    "ops": {
        "climbmix": {"config": {"token_budget": 30_000, "docs_per_shard": 50, "pool_size": 2_000}},
    },
    "resources": {"proof": {"config": {"seeds": [0, 1], "token_budget": 6_000}}},
}


@pytest.fixture(scope="session")
def tiny_platform(tmp_path_factory):
    """The real jobs, end to end, on a tiny demo corpus: two waves through the landing sensor, clustering,
    dbt_quality, super-clusters, a three-iteration search with a local MLflow store, ClimbMix and its proof."""
    from types import SimpleNamespace

    from climb_assets.cli import bring_clusters_current, ingest_landed, run_job
    from climb_assets.definitions import build_definitions
    from climb_assets.demo.corpus import build_demo_corpus
    from climb_assets.embed.assets import EmbeddingModelResource
    from climb_assets.search.settings import SearchSettings

    root = tmp_path_factory.mktemp("platform")
    home = ClimbHome(root / "climb").ensure()
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as platform_instance:
        defs = build_definitions(
            climb=ClimbHomeResource(root=str(home.root)),
            embedder=EmbeddingModelResource(model="minilm", max_seq_length=64),
            search=SearchSettings(**TINY_SEARCH),
        )
        build_demo_corpus(home, 1, scale=0.02)
        wave1 = ingest_landed(defs, platform_instance, home)
        bring_clusters_current(defs, platform_instance, home)
        first_clusters = (home.lake_dir("clusters") / "CURRENT").read_text()
        build_demo_corpus(home, 2, scale=0.02)
        wave2 = ingest_landed(defs, platform_instance, home)
        yield SimpleNamespace(
            home=home, instance=platform_instance, defs=defs, wave1=wave1, wave2=wave2,
            first_clusters=first_clusters, run_job=run_job, bring_clusters_current=bring_clusters_current,
        )  # fmt: skip


def retry_until_given_up(evaluate, cursor, work: str, launch, failed: list[str]):
    """A sensor whose ``work`` keeps failing: attempts 2..MAX_ATTEMPTS each get a run key Dagster has not seen
    (``launch`` runs the request; the run must fail), then the sensor gives up and says so, once, in the catalog.
    Returns that last evaluation; ``failed`` gains the failed runs' ids."""
    from climb_assets.attempts import MAX_ATTEMPTS

    for attempt in range(2, MAX_ATTEMPTS + 1):
        result = evaluate(cursor)
        (request,) = result.run_requests
        assert request.run_key == f"{work}:attempt-{attempt}"  # a key Dagster has not seen: it launches
        run = launch(request)
        assert not run.success
        failed.append(run.run_id)
        cursor = result.cursor
    gave_up = evaluate(cursor)
    assert gave_up.run_requests == []
    assert f"gave up on {work} after {MAX_ATTEMPTS} failed runs" in gave_up.skip_reason.skip_message
    (observation,) = gave_up.asset_events  # in the asset catalog, once
    assert sorted(observation.metadata["failed_runs"].value) == sorted(failed)
    return gave_up
