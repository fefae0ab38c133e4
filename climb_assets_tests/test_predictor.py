from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from climb_assets.search.candidates import sample_dirichlet_candidates, token_prior
from climb_assets.search.predictor import (
    PREDICTOR_KINDS,
    Predictor,
    PredictorParams,
    cross_validate,
    fit_predictor,
    select_predictor,
)

PRIOR = token_prior([9e4, 4e4, 2.5e4, 1e4, 4e3, 1e3])


def target(W: np.ndarray) -> np.ndarray:
    """A known non-linear response: group 1 helps, group 0 has an optimum at 0.3, groups 2 and 3 interact."""
    return 2.0 * W[:, 1] - 3.0 * (W[:, 0] - 0.3) ** 2 + 4.0 * W[:, 2] * W[:, 3]


def runs(n: int, seed: int, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    X = sample_dirichlet_candidates(PRIOR, n, seed)
    return X, target(X) + np.random.default_rng(seed).normal(0.0, noise, n)


Fitted = tuple[Predictor, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    X, y = runs(200, 0)
    return fit_predictor(X, y, seed=0), X, y


def test_predictor_recovers_a_known_function_on_held_out_mixtures(fitted: Fitted) -> None:
    predictor, _, _ = fitted
    X_test, _ = runs(200, 1)
    assert spearmanr(predictor.predict(X_test), target(X_test)).statistic > 0.8
    assert 1 <= predictor.num_rounds <= 1000 and predictor.n_train == 200
    assert not predictor.extra["constant"]


def test_cross_validation_spearman_is_high_for_a_learnable_target(fitted: Fitted) -> None:
    _, X, y = fitted
    result = cross_validate(X, y, k=5, seed=0)
    assert result.folds == 5 and result.reason is None
    assert result.spearman > 0.8
    assert not np.isnan(result.predictions).any()


def test_feature_importance_points_at_the_groups_that_matter(fitted: Fitted) -> None:
    importance = fitted[0].feature_importance()
    assert set(importance) == {f"w{i}" for i in range(6)}
    assert importance["w1"] > importance["w5"] and importance["w0"] > importance["w5"]


def test_save_load_roundtrip_gives_identical_predictions(
    fitted: Fitted, tmp_path: Path
) -> None:
    predictor, X, _ = fitted
    path = predictor.save(tmp_path / "predictor")
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.txt"]
    predictor.save(path)  # overwriting an existing model is an atomic replace
    loaded = Predictor.load(path)
    assert np.array_equal(loaded.predict(X), predictor.predict(X))
    assert (loaded.num_rounds, loaded.params, loaded.feature_names) == (
        predictor.num_rounds,
        predictor.params,
        predictor.feature_names,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["predictor"], "no temp files left behind"


def test_fit_is_deterministic_for_a_seed() -> None:
    X, y = runs(60, 3)
    a, b = fit_predictor(X, y, seed=4), fit_predictor(X, y, seed=4)
    assert a.num_rounds == b.num_rounds
    assert np.array_equal(a.predict(X), b.predict(X))


def test_few_runs_use_leave_one_out_and_explain_a_constant_model() -> None:
    X, y = runs(8, 5, noise=0.0)
    paper = cross_validate(X, y, seed=0)
    assert paper.folds == 8
    assert math.isnan(paper.spearman) and "min_child_samples=5" in (paper.reason or "")
    assert fit_predictor(X, y).extra["constant"]
    loose_params = PredictorParams(min_child_samples=1, early_stopping_rounds=20)
    loose = cross_validate(X, y, seed=0, params=loose_params)
    assert not math.isnan(loose.spearman)
    too_few = cross_validate(X[:3], y[:3])
    assert math.isnan(too_few.spearman) and "need at least" in (too_few.reason or "")


def test_bad_input_is_rejected() -> None:
    X, y = runs(20, 6)
    with pytest.raises(ValueError, match="finite"):
        fit_predictor(X, np.where(np.arange(20) == 3, np.nan, y))
    with pytest.raises(ValueError, match="must be"):
        fit_predictor(X, y[:-1])
    with pytest.raises(ValueError, match="at least"):
        fit_predictor(X[:2], y[:2])
    with pytest.raises(ValueError, match="weights per row"):
        fit_predictor(X, y).predict(X[:, :3])


def test_targets_on_a_bits_per_byte_scale_are_learnable() -> None:
    """bpb objectives move by ~0.1: the paper's L1 = L2 = 1.0 must not flatten the model (it fits z-scores)."""
    rng = np.random.default_rng(1)
    X = rng.dirichlet(np.full(5, 0.5), size=40)
    y = -3.5 + 0.1 * X[:, 1] - 0.05 * X[:, 0] + rng.normal(0, 0.005, len(X))
    predictor = fit_predictor(X, y, seed=0)
    assert not predictor.extra["constant"]
    held_out = rng.dirichlet(np.full(5, 0.5), size=200)
    truth = -3.5 + 0.1 * held_out[:, 1] - 0.05 * held_out[:, 0]
    predicted = predictor.predict(held_out)
    assert spearmanr(predicted, truth).statistic > 0.7
    assert abs(predicted.mean() - truth.mean()) < 0.05  # predictions come back on the target's own scale


def mixing_law(W: np.ndarray) -> np.ndarray:
    """A data-mixing-law-shaped response: each domain helps with a diminishing return, one domain hurts."""
    return 0.3 * np.log(W[:, 0] + 1e-3) + 0.1 * np.log(W[:, 2] + 1e-3) - 0.5 * W[:, 4]


def test_with_few_runs_selection_prefers_the_model_that_ranks_held_out_runs_best(tmp_path: Path) -> None:
    X = sample_dirichlet_candidates(PRIOR, 16, 3)
    y = mixing_law(X) + np.random.default_rng(3).normal(0.0, 0.01, 16)
    loose = PredictorParams(min_child_samples=2)
    chosen, scores = select_predictor(X, y, seed=0, params=loose)
    assert set(scores) == set(PREDICTOR_KINDS) == {"lightgbm", "ridge", "ensemble", "gp"}
    assert scores["ridge"].spearman > scores["lightgbm"].spearman
    assert chosen.kind == max(scores, key=lambda kind: scores[kind].spearman)
    assert chosen.extra["spearman_by_kind"]["lightgbm"] == pytest.approx(scores["lightgbm"].spearman)
    # the chosen model ranks fresh mixtures well, and every kind survives a save/load round trip unchanged
    fresh = sample_dirichlet_candidates(PRIOR, 200, 9)
    assert spearmanr(chosen.predict(fresh), mixing_law(fresh)).statistic > 0.8
    for kind in PREDICTOR_KINDS:
        model = fit_predictor(X, y, seed=0, params=loose, kind=kind)
        loaded = Predictor.load(model.save(tmp_path / kind))
        assert loaded.kind == kind and np.allclose(loaded.predict(fresh), model.predict(fresh))


def test_selection_falls_back_to_lightgbm_when_nothing_can_be_scored() -> None:
    X = sample_dirichlet_candidates(PRIOR, 3, 1)
    chosen, scores = select_predictor(X, np.array([1.0, 2.0, 3.0]), seed=0)
    assert chosen.kind == "lightgbm" and all(math.isnan(cv.spearman) for cv in scores.values())


def test_gaussian_process_ranks_a_clustered_search_with_a_curved_optimum(tmp_path: Path) -> None:
    """Later iterations crowd around the predicted optimum, where the target curves: a GP ranks such runs well."""
    centre = sample_dirichlet_candidates(PRIOR, 1, 5)[0]

    def bowl(X: np.ndarray) -> np.ndarray:
        return -np.sum((X - centre) ** 2, axis=1)

    rng = np.random.default_rng(5)
    X = rng.dirichlet(200 * centre + 0.05, size=32)
    y = bowl(X) + rng.normal(0.0, 1e-4, 32)
    model = fit_predictor(X, y, seed=0, kind="gp")
    fresh = rng.dirichlet(200 * centre + 0.05, size=200)
    assert spearmanr(model.predict(fresh), bowl(fresh)).statistic > 0.8
    assert cross_validate(X, y, seed=0, kind="gp").spearman > 0.7
    assert set(model.feature_importance()) == set(model.feature_names)
    saved = model.save(tmp_path / "gp")
    assert sorted(p.name for p in saved.iterdir()) == ["gp.json", "meta.json"]
    assert np.array_equal(Predictor.load(saved).predict(fresh), model.predict(fresh))
