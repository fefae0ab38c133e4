"""Two searches in one home (two targets) each keep their own ClimbMix and proof: nothing global is overwritten."""

import json

import polars as pl

from climb_assets.definitions import build_definitions
from climb_assets.lake import climbmix_dir, climbmix_manifest_path, proof_runs_path
from climb_assets.resources import ClimbHomeResource
from climb_assets.search.keys import SearchPlan
from climb_assets.search.settings import SearchSettings
from climb_assets_tests.conftest import TINY_SEARCH, TINY_SEARCH_RUN_CONFIG


def test_two_targets_in_one_home_keep_their_own_climbmix_and_proof(tiny_platform, tmp_path):
    home = tiny_platform.home
    tiny_platform.bring_clusters_current(tiny_platform.defs, tiny_platform.instance, home)  # wave 2 is in too
    lines = (home.targets / "target.jsonl").read_text().splitlines(keepends=True)
    other = tmp_path / "other_target.jsonl"
    other.write_text("".join(reversed(lines)))  # a different file: a different target, a different search
    keys, manifests = [], []
    for target in ({}, {"target_texts_path": str(other)}):
        settings = {**TINY_SEARCH, "proxies_per_iteration": [4], **target}
        defs = build_definitions(search_iterations=1, climb=ClimbHomeResource(root=str(home.root)),
                                 search=SearchSettings(**settings))  # fmt: skip
        tiny_platform.run_job(defs, tiny_platform.instance, "search_job", TINY_SEARCH_RUN_CONFIG)
        keys.append(SearchPlan(home, SearchSettings(**settings)).search_key)
        manifests.append(climbmix_manifest_path(home, keys[-1]).read_bytes())

    first, second = (json.loads(m) for m in manifests)
    assert keys[0] != keys[1] and first["search_key"] == keys[0] and second["search_key"] == keys[1]
    assert first["target"]["texts_sha256"] != second["target"]["texts_sha256"]
    assert climbmix_manifest_path(home, keys[0]).read_bytes() == manifests[0]  # the second search left it alone
    for key, manifest in zip(keys, (first, second)):
        shards = pl.concat([pl.read_parquet(climbmix_dir(home, key) / name) for name in manifest["shards"]])
        assert shards.height == manifest["documents"]
        runs = pl.read_parquet(proof_runs_path(home, key))
        assert sorted(runs["mixture"].unique()) == [
            "best_random_proxy", "climbmix", "loss_guided", "natural", "regmix", "uniform"]
