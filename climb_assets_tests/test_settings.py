"""Every setting is checked when the settings are built: a bad one stops the launch with its name and range."""

import dagster as dg
import pytest
from pydantic import ValidationError

from climb_assets.cli import run_job
from climb_assets.definitions import build_definitions
from climb_assets.lake import search_root
from climb_assets.search.settings import (
    PAPER_SCALE,
    SEARCH_ITERATIONS,
    ClimbMixConfig,
    ProofSettings,
    SearchSettings,
)
from climb_assets_tests.conftest import TINY_SEARCH


def test_defaults_the_tiny_settings_and_the_paper_scale_are_valid():
    assert SearchSettings().proxies_per_iteration == [16, 8, 8] and SEARCH_ITERATIONS == 3
    paper = SearchSettings(**PAPER_SCALE)
    assert sum(paper.proxies(k) for k in range(1, SEARCH_ITERATIONS + 1)) == 112  # the paper's 64 + 32 + 16
    SearchSettings(**TINY_SEARCH)
    ProofSettings()
    ClimbMixConfig()


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"token_budget": -5}, "token_budget must be >= 2048"),
        ({"proxies_per_iteration": [2]}, "proxies_per_iteration[0] must be >= 3"),
        ({"proxies_per_iteration": []}, "proxies_per_iteration must be one count"),
        ({"max_target_texts": 0}, "max_target_texts must be >= 1"),
        ({"base_token_budget": 100}, "base_token_budget must be >= 2048"),
        ({"tokenizer_vocab_size": 100}, "tokenizer_vocab_size must be >= 258"),
        ({"n_head": 3, "n_embd": 64}, "n_embd (64) must be a multiple of n_head (3)"),
        ({"pool_size": 50}, "pool_size must be >= 256"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"predictor_folds": 1}, "predictor_folds must be >= 2"),
        ({"cluster_loss_docs": -1}, "cluster_loss_docs must be >= 0"),
        ({"base_continue_fraction": 1.5}, "base_continue_fraction must be in [0, 1], got 1.5"),
        ({"target_kind": "blend", "target_blend_bpb": 0.0, "target_blend_mc": 0.0}, "must be > 0 for target_kind"),
    ],
)
def test_a_bad_search_setting_is_named_with_its_range(settings, named):
    with pytest.raises(ValidationError, match="invalid search settings") as error:
        SearchSettings(**settings)
    assert named in str(error.value)


def test_bad_proof_and_climbmix_settings_are_named():
    with pytest.raises(ValidationError, match=r"seeds must be distinct"):
        ProofSettings(seeds=[1, 1])
    with pytest.raises(ValidationError, match="pool_size must be >= 10"):
        ClimbMixConfig(top_k_average=10, pool_size=5)


def test_search_job_with_a_bad_setting_fails_before_any_step(home, climb_resource, instance):
    defs = build_definitions(climb=climb_resource)
    bad = {"resources": {"search": {"config": {"token_budget": -5}}}}
    result = defs.resolve_job_def("search_job").execute_in_process(instance=instance, run_config=bad, raise_on_error=False)
    assert not result.success
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START]
    assert not search_root(home).exists()  # nothing trained, nothing written
    with pytest.raises(SystemExit, match="token_budget must be >= 2048"):  # `climb run` / `climb crawl`: at once
        run_job(defs, instance, "search_job", bad)
    with pytest.raises(SystemExit, match="top_k_average must be >= 1"):
        run_job(defs, instance, "search_job", {"ops": {"climbmix": {"config": {"top_k_average": 0}}}})
    with pytest.raises(SystemExit, match="acquisition: Input should be 'paper' or 'exploit_first'"):  # a choice
        run_job(defs, instance, "search_job", {"resources": {"search": {"config": {"acquisition": "greedy"}}}})
    assert instance.get_runs_count() == 1  # the CLI refused both without launching a run
