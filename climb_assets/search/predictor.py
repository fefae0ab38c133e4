"""The CLIMB predictor: LightGBM regression from mixture weights to the proxies' target.

Defaults are the paper's (max_depth 4, min_child_samples 5, L1 = L2 = 1.0, lr 0.01, up to 1000 rounds, early
stopping on a held-out split). With only 8–16 runs, min_child_samples 5 leaves almost no room to split and the
model can come out constant; the settings are configurable for that reason, and the cross-validated Spearman says
so explicitly instead of reporting a meaningless number.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from scipy.stats import spearmanr

from climb_assets.storage import atomic_path

MODEL_FILE = "model.txt"
META_FILE = "meta.json"
MIN_RUNS_TO_FIT = 3
MIN_RUNS_TO_SCORE = 4
LEAVE_ONE_OUT_BELOW = 10


KFOLD_ROUNDS_BELOW = 100
# Tens of runs, not millions of rows: let every distinct weight value be a bin edge.
_DATASET_PARAMS = {"verbose": -1, "min_data_in_bin": 1}


@dataclass(frozen=True)
class PredictorParams:
    max_depth: int = 4
    min_child_samples: int = 5
    reg_alpha: float = 1.0
    reg_lambda: float = 1.0
    learning_rate: float = 0.01
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    valid_fraction: float = 0.2
    num_threads: int = 1

    def lightgbm(self, seed: int) -> dict[str, Any]:
        """LightGBM's own parameter names; deterministic, single-threaded by default, silent."""
        return {
            "objective": "regression",
            "metric": "l2",
            "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_child_samples,
            "lambda_l1": self.reg_alpha,
            "lambda_l2": self.reg_lambda,
            "learning_rate": self.learning_rate,
            "num_threads": self.num_threads,
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "feature_pre_filter": False,
            "verbose": -1,
        }


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, K) and y (n,), got {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite (a failed proxy run must be excluded or fixed, not passed as NaN)")
    return X, y


@dataclass
class Predictor:
    """A fitted booster plus what is needed to reproduce and audit it."""

    booster: lgb.Booster
    num_rounds: int
    params: PredictorParams
    seed: int
    n_train: int
    feature_names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != len(self.feature_names):
            raise ValueError(f"expected {len(self.feature_names)} weights per row, got {X.shape[1]}")
        standardised = np.asarray(self.booster.predict(X, num_threads=self.params.num_threads), dtype=np.float64)
        return standardised * self.extra.get("y_std", 1.0) + self.extra.get("y_mean", 0.0)

    def feature_importance(self, importance_type: str = "gain") -> dict[str, float]:
        """Per-group importance ('gain' or 'split'): which super-clusters move the target."""
        values = self.booster.feature_importance(importance_type=importance_type)
        return {name: float(v) for name, v in zip(self.feature_names, values)}

    def save(self, path: Path | str) -> Path:
        """Write a directory with the LightGBM text model and JSON metadata, atomically."""
        final = Path(path)
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / MODEL_FILE).write_text(self.booster.model_to_string())
            meta = {
                "num_rounds": self.num_rounds,
                "params": asdict(self.params),
                "seed": self.seed,
                "n_train": self.n_train,
                "feature_names": self.feature_names,
                "extra": self.extra,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return final

    @classmethod
    def load(cls, path: Path | str) -> Predictor:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        return cls(
            booster=lgb.Booster(model_str=(path / MODEL_FILE).read_text()),
            num_rounds=meta["num_rounds"],
            params=PredictorParams(**meta["params"]),
            seed=meta["seed"],
            n_train=meta["n_train"],
            feature_names=list(meta["feature_names"]),
            extra=meta.get("extra", {}),
        )


def _train(X: np.ndarray, y: np.ndarray, params: PredictorParams, seed: int, rounds: int, names: list[str],
           valid: tuple[np.ndarray, np.ndarray] | None = None) -> lgb.Booster:  # fmt: skip
    train_set = lgb.Dataset(X, y, feature_name=names, params=_DATASET_PARAMS)
    if valid is None:
        return lgb.train(params.lightgbm(seed), train_set, num_boost_round=rounds)
    valid_set = lgb.Dataset(valid[0], valid[1], reference=train_set)
    return lgb.train(
        params.lightgbm(seed), train_set, num_boost_round=rounds, valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)],
    )  # fmt: skip


def _choose_rounds(
    X: np.ndarray, y: np.ndarray, params: PredictorParams, seed: int, names: list[str]
) -> tuple[int, str]:
    """Early stopping on a held-out split (paper). With few runs a 20% split is two or three points and stops at
    round one, so below ``KFOLD_ROUNDS_BELOW`` runs the early-stopping curve is the k-fold mean instead."""
    n = len(y)
    if n >= KFOLD_ROUNDS_BELOW:
        order = np.random.default_rng(seed).permutation(n)
        n_valid = min(max(1, round(params.valid_fraction * n)), n - 2)
        valid, train = order[:n_valid], order[n_valid:]
        probe = _train(X[train], y[train], params, seed, params.max_rounds, names, valid=(X[valid], y[valid]))
        return max(1, probe.best_iteration or params.max_rounds), f"held-out split of {n_valid}"
    folds = min(5, n)
    curves = lgb.cv(
        params.lightgbm(seed), lgb.Dataset(X, y, feature_name=names, params=_DATASET_PARAMS),
        num_boost_round=params.max_rounds, nfold=folds, stratified=False, shuffle=True, seed=seed,
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)],
    )  # fmt: skip
    return len(next(iter(curves.values()))), f"{folds}-fold early stopping"


def fit_predictor(
    X: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    *,
    params: PredictorParams | None = None,
    feature_names: list[str] | None = None,
) -> Predictor:
    """Fit on all runs so far: pick the round count by early stopping on a held-out split, then refit on everything.

    Refitting on all data matters when runs are scarce: the held-out split only decides how long to train.
    """
    X, y = _check_xy(X, y)
    params = params or PredictorParams()
    n, k = X.shape
    if n < MIN_RUNS_TO_FIT:
        raise ValueError(f"need at least {MIN_RUNS_TO_FIT} runs to fit a predictor, got {n}")
    names = feature_names or [f"w{i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} feature names for {k} columns")
    # The paper's L1 = L2 = 1.0 are in units of the target: on a bits-per-byte target that moves by ~0.1, they
    # zero every leaf and the model never splits. Fitting the z-scored target makes them scale-free.
    y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
    z = (y - y_mean) / y_std
    rounds, how = _choose_rounds(X, z, params, seed, names)
    booster = _train(X, z, params, seed, rounds, names)
    # A constant model (too few runs to split) ranks every candidate equally; callers should say so.
    constant = bool(np.ptp(booster.predict(X, num_threads=params.num_threads)) == 0)
    extra = {"rounds_chosen_by": how, "constant": constant, "y_mean": y_mean, "y_std": y_std}
    return Predictor(booster, rounds, params, seed, n, names, extra=extra)


@dataclass(frozen=True)
class CrossValidation:
    """Held-out rank correlation of the predictor; ``reason`` says why ``spearman`` is NaN when it is."""

    spearman: float
    n: int
    folds: int
    predictions: np.ndarray
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"spearman": self.spearman, "n": self.n, "folds": self.folds, "reason": self.reason}


def cross_validate(
    X: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0, *, params: PredictorParams | None = None
) -> CrossValidation:
    """k-fold out-of-fold predictions and their pooled Spearman with y (leave-one-out below 10 runs)."""
    X, y = _check_xy(X, y)
    n = len(y)
    empty = np.full(n, np.nan)
    if n < MIN_RUNS_TO_SCORE:
        return CrossValidation(math.nan, n, 0, empty, f"only {n} runs; need at least {MIN_RUNS_TO_SCORE}")
    if np.ptp(y) == 0:
        return CrossValidation(math.nan, n, 0, empty, "all targets are equal; rank correlation is undefined")
    folds = n if n < LEAVE_ONE_OUT_BELOW else min(max(2, k), n)
    predictions = np.empty(n)
    constant_folds = 0
    for held_out in np.array_split(np.random.default_rng(seed).permutation(n), folds):
        train = np.setdiff1d(np.arange(n), held_out)
        model = fit_predictor(X[train], y[train], seed, params=params)
        predictions[held_out] = model.predict(X[held_out])
        constant_folds += model.extra["constant"]
    if constant_folds:
        # A model that cannot split predicts its training mean; held out, that mean is anti-correlated with the
        # left-out target (Spearman -1 under leave-one-out), so any such fold makes the score meaningless.
        min_child = (params or PredictorParams()).min_child_samples
        return CrossValidation(
            math.nan, n, folds, predictions,
            f"{constant_folds}/{folds} folds fit a constant model: {n} runs are too few to split with"
            f" min_child_samples={min_child}",
        )  # fmt: skip
    if np.ptp(predictions) == 0:
        return CrossValidation(math.nan, n, folds, predictions, "held-out predictions are all equal")
    return CrossValidation(float(spearmanr(predictions, y).statistic), n, folds, predictions)


def cross_validated_spearman(
    X: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0, *, params: PredictorParams | None = None
) -> float:
    """Held-out Spearman of the predictor (NaN when undefined; ``cross_validate`` gives the reason)."""
    return cross_validate(X, y, k, seed, params=params).spearman
