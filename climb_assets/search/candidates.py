"""Candidate mixture weights for the CLIMB search: RegMix's Dirichlet sampler and CLIMB's predictor-guided refinement.

Iteration 1 samples weight vectors around a token prior (prior ∝ tokens^0.5). Following RegMix's
``mixture_config/synthesize_mixture.py``: a concentration ("strength") is drawn uniformly from 15 log-spaced values
in [0.1, 5], the sample is Dirichlet(strength * prior) (no extra factor K), any sample with a weight above
min(cap_multiplier * cap_reference_i, 1) is rejected (a group's data would be repeated too often; RegMix's cap
reference is the raw token share), weights below ``min_weight`` are zeroed, the rest renormalised, and near-identical
vectors de-duplicated. Iteration k > 1 scores a large fresh pool with the predictor, keeps the top max(n², 128) and
draws n of those at random: exploit the predictor, explore within its best region (optionally with the predictor's
own best mixture trained first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

# How the final picks (ClimbMix's and RegMix's) draw the candidates they score: the paper's pool around the token
# prior alone, or that pool plus the trained mixtures and fine draws around the best of them (``refine_around``)
FinalPick = Literal["pool", "refine"]
CAP_MULTIPLIER = 15.0  # RegMix's repetition cap: no group above 15x its prior share
DEFAULT_CONCENTRATIONS = np.logspace(np.log10(0.1), np.log10(5.0), 15)
# The final pick's refinement: draws around the best trained mixtures (best_predicted_mixture's ``refine_around``)
REFINE_CENTRES = 8
NEIGHBOURHOOD_CONCENTRATIONS = (30.0, 100.0, 300.0)
REFINE_DRAWS = 400  # per centre and concentration: 9,600 in all, a tenth of the default pool
_MAX_BATCH = 262_144


class SupportsPredict(Protocol):
    def predict(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SearchSpace:
    """The weights a search varies: every super-cluster (``frozen`` empty: reduce and expand change nothing), or,
    Olmix's mixture reuse, the ``free`` super-clusters one by one and the ``frozen`` ones as one block held at fixed
    ``ratios``. Candidates are drawn, scored and bounded in the reduced space (the free weights, then the block's) and
    expanded to every super-cluster to be trained, so a search over a few moved super-clusters needs few proxies."""

    size: int
    free: tuple[int, ...] = ()
    frozen: tuple[int, ...] = ()
    ratios: tuple[float, ...] = ()

    def reduce(self, weights: np.ndarray) -> np.ndarray:
        """Full weights (a vector or rows) in the reduced space."""
        if not self.frozen:
            return weights
        rows = np.atleast_2d(weights)
        reduced = np.hstack([rows[:, list(self.free)], rows[:, list(self.frozen)].sum(axis=1, keepdims=True)])
        return reduced if np.ndim(weights) == 2 else reduced[0]

    def expand(self, reduced: np.ndarray) -> np.ndarray:
        """Reduced weights (a vector or rows) over every super-cluster: the block shared by the frozen ratios."""
        if not self.frozen:
            return reduced
        rows = np.atleast_2d(reduced)
        full = np.zeros((len(rows), self.size))
        full[:, list(self.free)] = rows[:, :-1]
        full[:, list(self.frozen)] = rows[:, -1:] * np.asarray(self.ratios)[None, :]
        return full if np.ndim(reduced) == 2 else full[0]

    def scoring(self, predictor: SupportsPredict) -> SupportsPredict:
        """``predictor`` (fitted on full weights) scoring reduced ones."""
        return predictor if not self.frozen else _ExpandingPredictor(predictor, self)

    def best_mixture(self, predictor: SupportsPredict, prior: np.ndarray, trained: np.ndarray, observed: np.ndarray,
                     rng: np.random.Generator | int, *, pool_size: int, top_k: int = 1,
                     pick: FinalPick = "refine") -> tuple[np.ndarray, float]:  # fmt: skip
        """``best_predicted_mixture`` drawn in this space, within the weights the ``trained`` rows (full weights,
        ``observed`` objectives) gave each of its dimensions (``pick="refine"``: and around the best of them); over
        every super-cluster, with its prediction."""
        reduced_trained = self.reduce(trained)
        refine = {"refine_around": reduced_trained, "observed": observed} if pick == "refine" else {}
        reduced, predicted = best_predicted_mixture(self.scoring(predictor), self.reduce(prior), rng,
                                                    pool_size=pool_size, top_k=top_k,
                                                    upper_bounds=reduced_trained.max(axis=0), **refine)  # fmt: skip
        return self.expand(reduced), predicted


@dataclass(frozen=True)
class _ExpandingPredictor:
    predictor: SupportsPredict
    space: SearchSpace

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predictor.predict(self.space.expand(X))


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    return np.random.default_rng(rng)


def token_prior(tokens_per_group: Sequence[float] | np.ndarray | Mapping[Any, float], power: float = 0.5) -> np.ndarray:
    """The Dirichlet prior: token counts to the power 0.5, normalised (tempers big clusters, lifts small ones).

    A mapping is read in sorted key order, the order the mixture weights use everywhere.
    """
    if isinstance(tokens_per_group, Mapping):
        tokens = np.array([float(tokens_per_group[k]) for k in sorted(tokens_per_group)])
    else:
        tokens = np.asarray(tokens_per_group, dtype=np.float64)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"tokens_per_group must be a non-empty 1-D sequence, got shape {tokens.shape}")
    if not np.isfinite(tokens).all() or (tokens < 0).any():
        raise ValueError(f"token counts must be finite and non-negative, got {tokens.tolist()}")
    if tokens.sum() <= 0:
        raise ValueError("all groups have zero tokens")
    tempered = tokens**power
    return tempered / tempered.sum()


def _check_prior(prior: np.ndarray | Sequence[float], name: str = "prior") -> np.ndarray:
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"{name} must be a non-empty, non-negative 1-D vector with positive sum, got {p.tolist()}")
    return p / p.sum()


def _dirichlet(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of Dirichlet(alpha[i]) for an (m, K) alpha, computed in log space.

    With strength 0.1 and ~20 groups alpha is ~1e-3, where plain Gamma draws underflow to 0; Gamma(a) =
    Gamma(a + 1) * U^(1/a) keeps the logs finite. Zero alpha means a group that can never be drawn.
    """
    positive = alpha > 0
    safe = np.where(positive, alpha, 1.0)
    log_g = np.log(rng.standard_gamma(safe + 1.0)) + np.log1p(-rng.random(alpha.shape)) / safe
    log_g = np.where(positive, log_g, -np.inf)
    log_g -= log_g.max(axis=1, keepdims=True)
    w = np.exp(log_g)
    return w / w.sum(axis=1, keepdims=True)


def _row_keys(rows: np.ndarray, decimals: int) -> list[bytes]:
    return [r.tobytes() for r in np.round(rows, decimals) + 0.0]


def repetition_cap(prior: np.ndarray, cap_multiplier: float = CAP_MULTIPLIER,
                   cap_reference: np.ndarray | Sequence[float] | None = None) -> np.ndarray:  # fmt: skip
    """The most weight each group may get: ``cap_multiplier`` x its share in ``cap_reference`` (default: ``prior``),
    at most 1 (a group's data would be repeated too often past it)."""
    reference = prior if cap_reference is None else _check_prior(cap_reference, "cap_reference")
    if reference.shape != prior.shape:
        raise ValueError(f"cap_reference has {reference.size} groups, prior has {prior.size}")
    return np.minimum(cap_multiplier * reference, 1.0)


def _sample_unique(
    prior: np.ndarray,
    target: int,
    rng: np.random.Generator,
    *,
    concentrations: Sequence[float] | np.ndarray = DEFAULT_CONCENTRATIONS,
    cap_multiplier: float = CAP_MULTIPLIER,
    min_weight: float = 2e-4,
    oversample: int = 100,
    decimals: int = 4,
    cap_reference: np.ndarray | Sequence[float] | None = None,
    exclude: np.ndarray | None = None,
    max_rounds: int = 50,
) -> np.ndarray:
    """Accepted, de-duplicated candidates in order of first draw: at least ``target`` unless rounds run out."""
    conc = np.asarray(concentrations, dtype=np.float64)
    if conc.ndim != 1 or conc.size == 0 or (conc <= 0).any():
        raise ValueError(f"concentrations must be positive, got {conc.tolist()}")
    if not 0 <= min_weight < 1:
        raise ValueError(f"min_weight must be in [0, 1), got {min_weight}")
    cap = repetition_cap(prior, cap_multiplier, cap_reference)
    seen = set() if exclude is None else set(_row_keys(np.atleast_2d(np.asarray(exclude, dtype=np.float64)), decimals))
    kept: list[np.ndarray] = []
    batch = int(min(max(target * oversample, 1024), _MAX_BATCH))
    for _ in range(max_rounds):
        strengths = conc[rng.integers(0, conc.size, size=batch)]
        raw = _dirichlet(strengths[:, None] * prior[None, :], rng)
        w = np.where(raw < min_weight, 0.0, raw)
        w = w / w.sum(axis=1, keepdims=True)
        # The cap is checked after renormalising so every returned vector satisfies it.
        w = w[(w <= cap + 1e-12).all(axis=1)]
        for row, key in zip(w, _row_keys(w, decimals)):
            if key not in seen:
                seen.add(key)
                kept.append(row)
        if len(kept) >= target:
            break
    return np.array(kept).reshape(-1, prior.size)


def sample_dirichlet_candidates(
    prior: np.ndarray | Sequence[float],
    n: int,
    rng: np.random.Generator | int,
    *,
    concentrations: Sequence[float] | np.ndarray = DEFAULT_CONCENTRATIONS,
    cap_multiplier: float = CAP_MULTIPLIER,
    min_weight: float = 2e-4,
    oversample: int = 100,
    decimals: int = 4,
    cap_reference: np.ndarray | Sequence[float] | None = None,
    max_rounds: int = 50,
) -> np.ndarray:
    """``n`` distinct weight vectors (n x K, rows sum to 1) for iteration 1, RegMix style.

    ``n * oversample`` raw draws per round (RegMix draws 100x), then ``n`` picked at random from the accepted
    unique ones. ``cap_reference`` (default: ``prior``) is what the cap multiplies; pass the raw token shares to
    bound repetition exactly as RegMix does.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    gen = _as_rng(rng)
    p = _check_prior(prior)
    pool = _sample_unique(
        p, n, gen, concentrations=concentrations, cap_multiplier=cap_multiplier, min_weight=min_weight,
        oversample=oversample, decimals=decimals, cap_reference=cap_reference, max_rounds=max_rounds,
    )  # fmt: skip
    if len(pool) < n:
        raise ValueError(
            f"only {len(pool)} distinct candidates passed the cap after {max_rounds} rounds, {n} wanted"
            " (too few groups for the rounding precision, or a cap too tight for the prior)"
        )
    return pool[gen.choice(len(pool), size=n, replace=False)]


def _scored_pool(
    predictor: SupportsPredict,
    prior: np.ndarray | Sequence[float],
    rng: np.random.Generator,
    pool_size: int,
    evaluated: np.ndarray | None,
    maximize: bool,
    sampler_options: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """A fresh pool of up to ``pool_size`` candidates (none already evaluated) with objective scores, higher better."""
    if pool_size <= 0:
        raise ValueError(f"pool_size must be positive, got {pool_size}")
    options = {"oversample": 1, **sampler_options}
    pool = _sample_unique(_check_prior(prior), pool_size, rng, exclude=evaluated, **options)[:pool_size]
    if len(pool) == 0:
        raise ValueError("no fresh candidates could be drawn")
    return pool, _scores(predictor, pool, maximize)


def _scores(predictor: SupportsPredict, rows: np.ndarray, maximize: bool) -> np.ndarray:
    """The predictor's scores of ``rows``, higher better."""
    scores = np.asarray(predictor.predict(rows), dtype=np.float64)
    if scores.shape != (len(rows),):
        raise ValueError(f"predictor returned shape {scores.shape} for {len(rows)} candidates")
    return scores if maximize else -scores


def next_iteration_candidates(
    predictor: SupportsPredict,
    prior: np.ndarray | Sequence[float],
    n: int,
    rng: np.random.Generator | int,
    *,
    pool_size: int,
    top: int | None = None,
    evaluated: np.ndarray | None = None,
    maximize: bool = True,
    exploit_within: np.ndarray | None = None,
    **sampler_options: Any,
) -> np.ndarray:
    """``n`` candidates for iteration k > 1: top ``max(n**2, 128)`` of a fresh scored pool, then ``n`` at random.

    ``evaluated`` (m x K) are the vectors already trained, never proposed again. ``maximize=False`` when the
    predictor predicts a loss. ``exploit_within`` (per-group upper bounds) makes the first candidate the pool's best
    within those bounds (the pick the search would make now), the other ``n - 1`` drawn as above: without it, the
    iteration may never train the mixture its predictor believes best. ``sampler_options`` go to the Dirichlet
    sampler (cap_multiplier, min_weight, ...).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    gen = _as_rng(rng)
    pool, scores = _scored_pool(predictor, prior, gen, pool_size, evaluated, maximize, sampler_options)
    keep = min(max(n**2, 128) if top is None else top, len(pool))
    if keep < n:
        raise ValueError(f"only {keep} candidates in the top set, {n} wanted (raise pool_size or top)")
    order = np.argsort(-scores, kind="stable")
    first = []
    if exploit_within is not None:
        inside = (pool[order] <= np.asarray(exploit_within)[None, :] + 1e-12).all(axis=1)
        first = order[inside][:1].tolist()  # none inside the bounds: the paper's draw alone
    best = order[:keep] if not first else np.array([i for i in order[:keep] if i != first[0]])
    return pool[first + gen.choice(best, size=n - len(first), replace=False).tolist()]


def neighbourhood_draws(
    centres: np.ndarray, rng: np.random.Generator | int, per_centre: int,
    concentrations: Sequence[float] = NEIGHBOURHOOD_CONCENTRATIONS,
) -> np.ndarray:  # fmt: skip
    """Dirichlet(c * centre) draws around each centre row, ``per_centre`` per concentration c: mean the centre, spread
    shrinking as c grows (a weight w moves by about sqrt(w (1 - w) / c)); a super-cluster a centre leaves out stays
    out. The fine search near the best trained mixtures that a pool drawn around the prior rarely reaches."""
    gen = _as_rng(rng)
    centres = np.atleast_2d(np.asarray(centres, dtype=np.float64))
    return np.vstack([_dirichlet(np.repeat(c * centres, per_centre, axis=0), gen) for c in concentrations])


def best_predicted_mixture(
    predictor: SupportsPredict,
    prior: np.ndarray | Sequence[float],
    rng: np.random.Generator | int,
    *,
    pool_size: int,
    top_k: int = 1,
    maximize: bool = True,
    upper_bounds: np.ndarray | None = None,
    refine_around: np.ndarray | None = None,
    observed: np.ndarray | Sequence[float] | None = None,
    **sampler_options: Any,
) -> tuple[np.ndarray, float]:
    """The final mixture and its prediction: the best vector of a fresh pool under the final predictor, or
    (as RegMix does) the mean of the ``top_k`` best, which is less sensitive to the predictor's noise.

    ``upper_bounds`` keeps the pick where the predictor has seen data: no group may weigh more than the most any
    trained proxy gave it. A regressor fitted on tens of runs extrapolates wildly past them (a ridge on log-weights
    happily predicts its best objective at 50% of a group no proxy ever gave 20%).

    ``refine_around`` (the trained mixtures, with their ``observed`` objectives) adds them and ``neighbourhood_draws``
    around the ``REFINE_CENTRES`` the predictor scores best to the pool, within the same bounds and repetition cap,
    and wins ties (the best observed first): the pool is drawn around the prior, so in twenty dimensions it rarely
    comes near the trained runs the predictor knows best, and its argmax can sit where the predictor has only
    extrapolated (a tree ensemble gives a far draw the same score as the best trained run, free in the super-clusters
    no tree splits on). Without ``observed``, the rows' order is theirs.
    """
    gen = _as_rng(rng)
    pool, scores = _scored_pool(predictor, prior, gen, pool_size, None, maximize, sampler_options)
    if refine_around is not None:
        trained = np.atleast_2d(np.asarray(refine_around, dtype=np.float64))
        if observed is not None:  # best observed first, oriented as the scores are
            objectives = np.asarray(observed, dtype=np.float64)
            if objectives.shape != (len(trained),):
                raise ValueError(f"observed has shape {objectives.shape} for {len(trained)} trained mixtures")
            trained = trained[np.argsort(-objectives if maximize else objectives, kind="stable")]
        trained_scores = _scores(predictor, trained, maximize)
        centres = trained[np.argsort(-trained_scores, kind="stable")[:REFINE_CENTRES]]
        near = neighbourhood_draws(centres, gen, REFINE_DRAWS)
        cap_options = {k: v for k, v in sampler_options.items() if k in ("cap_multiplier", "cap_reference")}
        near = near[(near <= repetition_cap(_check_prior(prior), **cap_options) + 1e-12).all(axis=1)]
        # ties go to the earlier row: a tree ensemble scores whole regions alike, and among mixtures it cannot tell
        # apart the pick is the one trained (best observed first), then one near it, before a far pool draw
        pool = np.vstack([trained, near, pool])
        scores = np.concatenate([trained_scores, _scores(predictor, near, maximize), scores])
    if upper_bounds is not None:
        inside = (pool <= np.asarray(upper_bounds)[None, :] + 1e-12).all(axis=1)
        if not inside.any():
            raise ValueError("no pool candidate lies within the trained proxies' weight bounds")
        pool, scores = pool[inside], scores[inside]
    best = np.argsort(-scores, kind="stable")[: max(1, top_k)]
    weights = pool[best].mean(axis=0)
    weights /= weights.sum()
    return weights, float(np.asarray(predictor.predict(weights[None, :]), dtype=np.float64)[0])
