"""The CLIMB predictor: regression from mixture weights to the proxies' target.

``lightgbm`` is the paper's (max_depth 4, min_child_samples 5, L1 = L2 = 1.0, lr 0.01, up to 1000 rounds, early
stopping on a held-out split). With only 8–16 runs, min_child_samples 5 leaves almost no room to split and the
model can come out constant; the settings are configurable for that reason, and the cross-validated Spearman says
so explicitly instead of reporting a meaningless number.

Trees need many runs; a mixing-law-shaped linear model (``ridge``: ridge regression on the weights and their logs,
i.e. a per-domain diminishing return) needs few, and ``ensemble`` averages both. ``gp`` is a Gaussian process
(Matérn 5/2 kernel plus noise, hyperparameters by marginal likelihood): smooth, nonlinear, and made for tens of
noisy evaluations, it ranks a search's later, clustered runs best. ``select_predictor`` cross-validates each and
keeps the best, always reporting LightGBM's score for parity with the paper.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
from scipy.stats import spearmanr

from climb_assets.storage import atomic_path

MODEL_FILE = "model.txt"
LINEAR_FILE = "linear.json"
GP_FILE = "gp.json"
META_FILE = "meta.json"
PredictorKind = Literal["lightgbm", "ridge", "ensemble", "gp"]
PREDICTOR_KINDS: tuple[PredictorKind, ...] = ("lightgbm", "ridge", "ensemble", "gp")
RIDGE_ALPHAS = np.logspace(-3, 3, 25)
LOG_FLOOR = 1e-3  # log(w + floor): a zero weight is a large but finite penalty, not -inf
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


@dataclass(frozen=True)
class LinearMixtureModel:
    """Ridge regression on [w, log(w + floor)], standardised: a mixing law with a diminishing return per domain."""

    coef: list[float]
    intercept: float
    mean: list[float]
    scale: list[float]
    alpha: float

    @staticmethod
    def features(X: np.ndarray) -> np.ndarray:
        return np.hstack([X, np.log(X + LOG_FLOOR)])

    @classmethod
    def fit(cls, X: np.ndarray, z: np.ndarray) -> LinearMixtureModel:
        from sklearn.linear_model import RidgeCV

        F = cls.features(X)
        mean, scale = F.mean(axis=0), F.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        model = RidgeCV(alphas=RIDGE_ALPHAS).fit((F - mean) / scale, z)
        return cls(model.coef_.tolist(), float(model.intercept_), mean.tolist(), scale.tolist(), float(model.alpha_))

    def predict(self, X: np.ndarray) -> np.ndarray:
        F = (self.features(X) - np.asarray(self.mean)) / np.asarray(self.scale)
        return F @ np.asarray(self.coef) + self.intercept

    def importance(self) -> np.ndarray:
        coef = np.abs(np.asarray(self.coef))
        k = len(coef) // 2
        return coef[:k] + coef[k:]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearMixtureModel:
        return cls(**data)


def _gp_kernel():
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    return ConstantKernel(1.0, (1e-3, 1e3)) * Matern(1.0, (1e-2, 1e2), nu=2.5) + WhiteKernel(0.1, (1e-5, 1e1))


@dataclass
class GaussianProcessMixtureModel:
    """A Gaussian process on the weights. Saved as its training points and fitted kernel hyperparameters, so
    loading refits exactly the same posterior (no pickles)."""

    X: list[list[float]]
    z: list[float]
    theta: list[float]  # the fitted kernel's log-hyperparameters
    _fitted: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, X: np.ndarray, z: np.ndarray, seed: int) -> GaussianProcessMixtureModel:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor

        with warnings.catch_warnings():  # a length scale at its bound is a fit, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp = GaussianProcessRegressor(_gp_kernel(), n_restarts_optimizer=2, random_state=seed).fit(X, z)
        model = cls(X.tolist(), z.tolist(), gp.kernel_.theta.tolist())
        model._fitted = gp
        return model

    def _posterior(self):
        if self._fitted is None:
            from sklearn.gaussian_process import GaussianProcessRegressor

            kernel = _gp_kernel().clone_with_theta(np.asarray(self.theta))
            self._fitted = GaussianProcessRegressor(kernel, optimizer=None).fit(np.asarray(self.X), np.asarray(self.z))
        return self._fitted

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._posterior().predict(X)

    def importance(self) -> np.ndarray:
        """|Spearman| of each weight with the fitted posterior mean over the training runs (the kernel is isotropic,
        so it has no per-group length scale to report)."""
        X = np.asarray(self.X)
        fitted = self.predict(X)
        return np.array([abs(np.nan_to_num(spearmanr(X[:, i], fitted).statistic)) for i in range(X.shape[1])])

    def to_dict(self) -> dict[str, Any]:
        return {"X": self.X, "z": self.z, "theta": self.theta}


@dataclass
class Predictor:
    """A fitted booster plus what is needed to reproduce and audit it."""

    booster: lgb.Booster | None
    num_rounds: int
    params: PredictorParams
    seed: int
    n_train: int
    feature_names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    kind: PredictorKind = "lightgbm"
    linear: LinearMixtureModel | None = None
    gp: GaussianProcessMixtureModel | None = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != len(self.feature_names):
            raise ValueError(f"expected {len(self.feature_names)} weights per row, got {X.shape[1]}")
        parts = []
        if self.booster is not None:
            parts.append(np.asarray(self.booster.predict(X, num_threads=self.params.num_threads), dtype=np.float64))
        if self.linear is not None:
            parts.append(self.linear.predict(X))
        if self.gp is not None:
            parts.append(self.gp.predict(X))
        standardised = np.mean(parts, axis=0)
        return standardised * self.extra.get("y_std", 1.0) + self.extra.get("y_mean", 0.0)

    def feature_importance(self, importance_type: str = "gain") -> dict[str, float]:
        """Per-group importance: LightGBM's 'gain' or 'split', else the linear model's summed |coefficients|."""
        if self.booster is not None:
            values = self.booster.feature_importance(importance_type=importance_type)
        elif self.linear is not None:
            values = self.linear.importance()
        else:
            values = self.gp.importance()
        return {name: float(v) for name, v in zip(self.feature_names, values)}

    def save(self, path: Path | str) -> Path:
        """Write a directory with the LightGBM text model and JSON metadata, atomically."""
        final = Path(path)
        with atomic_path(final) as tmp:
            tmp.mkdir()
            if self.booster is not None:
                (tmp / MODEL_FILE).write_text(self.booster.model_to_string())
            if self.linear is not None:
                (tmp / LINEAR_FILE).write_text(json.dumps(self.linear.to_dict()))
            if self.gp is not None:
                (tmp / GP_FILE).write_text(json.dumps(self.gp.to_dict()))
            meta = {
                "kind": self.kind,
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
            booster=lgb.Booster(model_str=(path / MODEL_FILE).read_text()) if (path / MODEL_FILE).exists() else None,
            kind=meta.get("kind", "lightgbm"),
            linear=LinearMixtureModel.from_dict(json.loads((path / LINEAR_FILE).read_text()))
            if (path / LINEAR_FILE).exists() else None,
            gp=GaussianProcessMixtureModel(**json.loads((path / GP_FILE).read_text())) if (path / GP_FILE).exists() else None,
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
    kind: PredictorKind = "lightgbm",
) -> Predictor:
    """Fit on all runs so far. LightGBM picks its round count by early stopping on a held-out split, then refits on
    everything (when runs are scarce the split only decides how long to train); ridge picks its penalty by
    leave-one-out (RidgeCV); an ensemble fits both and averages them."""
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
    booster, rounds, how = None, 0, "no trees"
    if kind in ("lightgbm", "ensemble"):
        rounds, how = _choose_rounds(X, z, params, seed, names)
        booster = _train(X, z, params, seed, rounds, names)
    linear = LinearMixtureModel.fit(X, z) if kind in ("ridge", "ensemble") else None
    gp = GaussianProcessMixtureModel.fit(X, z, seed) if kind == "gp" else None
    extra = {"rounds_chosen_by": how, "y_mean": y_mean, "y_std": y_std}
    predictor = Predictor(booster, rounds, params, seed, n, names, extra=extra, kind=kind, linear=linear, gp=gp)
    # A constant model (too few runs to split) ranks every candidate equally; callers should say so.
    predictor.extra["constant"] = bool(np.ptp(predictor.predict(X)) == 0)
    return predictor


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
    X: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0, *, params: PredictorParams | None = None,
    kind: PredictorKind = "lightgbm",
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
        model = fit_predictor(X[train], y[train], seed, params=params, kind=kind)
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


def select_predictor(
    X: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    *,
    k: int = 5,
    params: PredictorParams | None = None,
    feature_names: list[str] | None = None,
    kinds: tuple[PredictorKind, ...] = PREDICTOR_KINDS,
) -> tuple[Predictor, dict[str, CrossValidation]]:
    """Cross-validate every kind on the same folds, fit the one with the best held-out Spearman on all runs.

    Ties and undefined scores go to the earlier kind (LightGBM first, the paper's choice). The chosen kind's score is
    the best of a few, so it is slightly optimistic; every kind's score is returned so reports can show all of them.
    """
    scores = {kind: cross_validate(X, y, k, seed, params=params, kind=kind) for kind in kinds}
    ranked = sorted(kinds, key=lambda kind: -scores[kind].spearman if np.isfinite(scores[kind].spearman) else math.inf)
    chosen = ranked[0]
    predictor = fit_predictor(X, y, seed, params=params, feature_names=feature_names, kind=chosen)
    predictor.extra["spearman_by_kind"] = {kind: _finite_or_none(cv.spearman) for kind, cv in scores.items()}
    return predictor, scores


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
