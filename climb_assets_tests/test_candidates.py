from __future__ import annotations

import numpy as np
import pytest

from climb_assets.search.candidates import (
    _scored_pool,
    best_predicted_mixture,
    next_iteration_candidates,
    sample_dirichlet_candidates,
    token_prior,
)

TOKENS = np.array([4e6, 1e6, 4e5, 1e5, 2.5e4, 4e3, 1e3, 1e3])
PRIOR = token_prior(TOKENS)


class LinearObjective:
    """A known objective of the weights (higher is better), standing in for a fitted predictor."""

    def __init__(self, coefficients: np.ndarray) -> None:
        self.coefficients = coefficients

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coefficients


def test_token_prior_is_square_root_of_tokens() -> None:
    prior = token_prior([400, 100, 0])
    assert prior == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert token_prior({5: 100, 1: 400}) == pytest.approx([2 / 3, 1 / 3])  # sorted key order
    for bad in ([0, 0], [1, -1], [], [[1, 2]]):
        with pytest.raises(ValueError):
            token_prior(bad)


def test_candidates_are_valid_mixtures() -> None:
    cands = sample_dirichlet_candidates(PRIOR, 64, 0)
    assert cands.shape == (64, len(PRIOR))
    assert cands.sum(axis=1) == pytest.approx(np.ones(64))
    assert ((cands == 0) | (cands >= 2e-4)).all(), "weights below min_weight must be zeroed"
    assert (cands <= np.minimum(15 * PRIOR, 1.0) + 1e-9).all(), "per-weight cap"
    assert len(np.unique(np.round(cands, 4), axis=0)) == 64, "de-duplicated"


def test_cap_rejects_heavy_samples_and_can_use_raw_token_shares() -> None:
    uniform = np.full(4, 0.25)
    cands = sample_dirichlet_candidates(uniform, 200, 1, cap_multiplier=2.0)
    assert cands.max() <= 0.5 + 1e-12
    shares = TOKENS / TOKENS.sum()
    capped = sample_dirichlet_candidates(PRIOR, 100, 2, cap_reference=shares)
    assert (capped <= np.minimum(15 * shares, 1.0) + 1e-12).all()
    assert capped[:, -1].max() < 15 * shares[-1] < 15 * PRIOR[-1]


def test_concentration_controls_sparsity() -> None:
    sparse = sample_dirichlet_candidates(PRIOR, 100, 3, concentrations=[0.1])
    dense = sample_dirichlet_candidates(PRIOR, 100, 3, concentrations=[5.0])
    assert (sparse > 0).sum(axis=1).mean() < (dense > 0).sum(axis=1).mean()


def test_groups_with_zero_prior_are_never_drawn() -> None:
    cands = sample_dirichlet_candidates([0.5, 0.0, 0.5], 50, 4)
    assert (cands[:, 1] == 0).all()


def test_sampling_is_deterministic_for_a_seed() -> None:
    a = sample_dirichlet_candidates(PRIOR, 32, 11)
    assert np.array_equal(a, sample_dirichlet_candidates(PRIOR, 32, np.random.default_rng(11)))
    assert not np.array_equal(a, sample_dirichlet_candidates(PRIOR, 32, 12))


def test_asking_for_more_distinct_candidates_than_exist_is_an_error() -> None:
    with pytest.raises(ValueError, match="distinct candidates"):
        sample_dirichlet_candidates([0.5, 0.5], 50, 0, decimals=1, max_rounds=3)


def test_next_iteration_prefers_high_predicted_regions() -> None:
    objective = LinearObjective(np.linspace(-1.0, 1.0, len(PRIOR)))
    first = sample_dirichlet_candidates(PRIOR, 32, 0)
    second = next_iteration_candidates(objective, PRIOR, 16, 0, pool_size=5_000, evaluated=first)
    assert second.shape == (16, len(PRIOR))
    assert objective.predict(second).min() > np.quantile(objective.predict(first), 0.9)
    evaluated_keys = {tuple(r) for r in np.round(first, 4)}
    assert not evaluated_keys & {tuple(r) for r in np.round(second, 4)}
    assert (second <= np.minimum(15 * PRIOR, 1.0) + 1e-9).all()


def test_next_iteration_draws_from_the_top_set_and_is_deterministic() -> None:
    objective = LinearObjective(np.eye(len(PRIOR))[2])
    a = next_iteration_candidates(objective, PRIOR, 8, 5, pool_size=4_000)
    assert np.array_equal(a, next_iteration_candidates(objective, PRIOR, 8, 5, pool_size=4_000))
    exploit = next_iteration_candidates(objective, PRIOR, 8, 5, pool_size=4_000, top=8)
    # top == n is pure exploitation: the 8 best in the pool; the default top (128) explores below them.
    assert objective.predict(exploit).min() >= objective.predict(a).min()
    low = next_iteration_candidates(objective, PRIOR, 8, 5, pool_size=4_000, top=8, maximize=False)
    assert objective.predict(low).max() < objective.predict(exploit).min()


def test_exploit_first_trains_the_predicted_best_within_the_bounds_then_draws_the_rest() -> None:
    objective = LinearObjective(np.eye(len(PRIOR))[1])  # more of group 1 always predicts better
    bounds = np.full(len(PRIOR), 0.3)
    paper = next_iteration_candidates(objective, PRIOR, 8, 5, pool_size=4_000)
    chosen = next_iteration_candidates(objective, PRIOR, 8, 5, pool_size=4_000, exploit_within=bounds)
    # the same pool the paper's rule scores: its best member within the bounds comes first
    pool, scores = _scored_pool(objective, PRIOR, np.random.default_rng(5), 4_000, None, True, {})
    inside = (pool <= bounds + 1e-12).all(axis=1)
    assert chosen[0] == pytest.approx(pool[inside][scores[inside].argmax()])
    assert chosen[0].max() <= 0.3 + 1e-12 and paper[:, 1].max() > 0.3  # the paper's draw goes past the bounds
    # the other seven come from the paper's top set (every one of them above the pool's 128th best), none twice
    threshold = np.sort(scores)[::-1][127]
    assert (objective.predict(chosen[1:]) >= threshold - 1e-12).all()
    assert len({tuple(r) for r in np.round(chosen, 6)}) == 8
    # bounds nothing fits: the paper's draw alone, exactly
    none_inside = next_iteration_candidates(objective, PRIOR, 8, 5, pool_size=4_000, exploit_within=np.full(len(PRIOR), 1e-3))
    assert np.array_equal(none_inside, paper)


def test_best_predicted_mixture_maximises_the_predictor() -> None:
    objective = LinearObjective(np.eye(len(PRIOR))[1])
    weights, score = best_predicted_mixture(objective, PRIOR, 0, pool_size=4_000)
    assert score == pytest.approx(weights[1])
    assert score >= objective.predict(sample_dirichlet_candidates(PRIOR, 500, 1)).max() - 0.05


def test_best_predicted_mixture_stays_within_the_trained_weights() -> None:
    objective = LinearObjective(np.eye(len(PRIOR))[1])  # more of group 1 always predicts better
    bounds = np.full(len(PRIOR), 0.3)
    weights, score = best_predicted_mixture(objective, PRIOR, 0, pool_size=4_000, upper_bounds=bounds)
    assert weights.max() <= 0.3 + 1e-9
    assert 0.2 < weights[1] <= 0.3  # as far as the bound allows, not past it
    unbounded, _ = best_predicted_mixture(objective, PRIOR, 0, pool_size=4_000)
    assert unbounded[1] > 0.3
    with pytest.raises(ValueError, match="bounds"):
        best_predicted_mixture(objective, PRIOR, 0, pool_size=200, upper_bounds=np.full(len(PRIOR), 0.01))


class PeakedObjective:
    """A known objective peaked at one mixture (higher is better): minus the squared distance to it."""

    def __init__(self, peak: np.ndarray) -> None:
        self.peak = peak

    def predict(self, X: np.ndarray) -> np.ndarray:
        return -((np.atleast_2d(X) - self.peak) ** 2).sum(axis=1)


def test_the_refined_pick_searches_around_the_best_trained_mixtures() -> None:
    # a peak far from the prior (most weight on small groups), one trained run near it, the rest prior draws
    peak = np.array([0.05, 0.05, 0.1, 0.3, 0.3, 0.2, 0.0, 0.0])
    objective = PeakedObjective(peak)
    near = np.array([0.1, 0.1, 0.1, 0.25, 0.25, 0.2, 0.0, 0.0])
    trained = np.vstack([sample_dirichlet_candidates(PRIOR, 15, 3), near])
    bounds = trained.max(axis=0)
    pooled, pooled_score = best_predicted_mixture(objective, PRIOR, 0, pool_size=4_000, upper_bounds=bounds)
    refined, refined_score = best_predicted_mixture(objective, PRIOR, 0, pool_size=4_000, upper_bounds=bounds,
                                                    refine_around=trained)  # fmt: skip
    # the pool around the prior never comes near the peak; the refinement beats even the trained run nearest it
    assert pooled_score < objective.predict(near)[0] < refined_score
    assert np.abs(refined - peak).sum() < np.abs(near - peak).sum() < np.abs(pooled - peak).sum()
    # within the trained runs' bounds and the repetition cap, a mixture as every pick is
    assert (refined <= bounds + 1e-9).all() and (refined <= np.minimum(15 * PRIOR, 1) + 1e-9).all()
    assert refined.sum() == pytest.approx(1.0)
    # the same pool first: without a better neighbour, the refinement keeps the pool's pick
    flat = LinearObjective(np.eye(len(PRIOR))[0])
    assert np.array_equal(best_predicted_mixture(flat, PRIOR, 0, pool_size=4_000)[0],
                          best_predicted_mixture(flat, PRIOR, 0, pool_size=4_000, refine_around=PRIOR[None, :])[0])  # fmt: skip


class StepObjective:
    """A tree-like predictor: one score for a whole region (more than a fifth on group 2), another elsewhere."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(X)[:, 2] > 0.2).astype(np.float64)


def test_the_refined_pick_breaks_ties_toward_the_best_trained_mixture() -> None:
    trained = sample_dirichlet_candidates(PRIOR, 16, 4)
    inside = trained[trained[:, 2] > 0.2]
    assert len(inside) >= 2  # the region holds more than one trained run
    # the best observed trained run of the top region is the pick, not a pool draw scored alike: which run that is
    # follows the observed objectives, not the rows' order
    observed = np.random.default_rng(5).normal(size=len(trained))
    for objectives in (observed, -observed):
        best_inside = inside[np.argmax(objectives[trained[:, 2] > 0.2])]
        pick, score = best_predicted_mixture(StepObjective(), PRIOR, 0, pool_size=4_000, refine_around=trained,
                                             observed=objectives)  # fmt: skip
        assert score == 1.0 and np.allclose(pick, best_inside)
    with pytest.raises(ValueError, match="observed has shape"):
        best_predicted_mixture(StepObjective(), PRIOR, 0, pool_size=100, refine_around=trained, observed=observed[1:])
    pooled, _ = best_predicted_mixture(StepObjective(), PRIOR, 0, pool_size=4_000)
    assert not any(np.allclose(pooled, row) for row in trained)  # the paper's pool: some draw of the region
