"""What ClimbMix must beat at the same proxy budget, and the paired statistics that say whether it did.

The obvious alternatives to CLIMB's iterative search are (a) the best of N random Dirichlet mixtures, each trained as
a proxy, and (b) RegMix's one-shot search: the same N random proxies, one predictor fitted on them, and its best
predicted mixture. N is every proxy the search trained, so both spend exactly the search's proxy budget. The N random
candidates start with iteration 1's (themselves random Dirichlet draws, trained with the same seed and settings), so
those proxies are reused by fingerprint and only the remaining N - n1 are trained.

Proof runs are paired by seed (same data order and initialisation for every mixture), so each comparison is a
per-seed difference with a t-interval: a tie is reported as a tie.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from climb_assets.search.candidates import sample_dirichlet_candidates


def random_search_weights(first_iteration: np.ndarray, prior: np.ndarray, total: int, seed: int) -> np.ndarray:
    """``total`` random Dirichlet mixtures: iteration 1's, then fresh draws from the same sampler."""
    extra = total - len(first_iteration)
    if extra <= 0:
        return first_iteration[:total]
    fresh = sample_dirichlet_candidates(prior, extra, np.random.default_rng([seed, 1, 0xBA5E]))
    return np.vstack([first_iteration, fresh])


def paired_comparison(runs: pl.DataFrame, reference: str = "climbmix", metric: str = "objective",
                      confidence: float = 0.95) -> pl.DataFrame:  # fmt: skip
    """Per other mixture: the mean of (reference − other) over the seeds both ran, its sd and t-interval, and a
    verdict: ``beats`` / ``loses`` when the interval excludes 0, else ``tie`` (higher metric is better)."""
    mine = runs.filter(pl.col("mixture") == reference).select("seed", pl.col(metric).alias("reference"))
    rows = []
    for other in sorted(set(runs["mixture"]) - {reference}):
        paired = mine.join(runs.filter(pl.col("mixture") == other).select("seed", metric), on="seed")
        deltas = (paired["reference"] - paired[metric]).to_numpy()
        n = len(deltas)
        mean = float(deltas.mean()) if n else float("nan")
        sd = float(deltas.std(ddof=1)) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
        low, high = mean - half, mean + half
        verdict = "beats" if low > 0 else "loses" if high < 0 else "tie"
        rows.append({"baseline": other, "seeds": n, "mean_delta": mean, "sd_delta": sd,
                     "ci_low": low, "ci_high": high, "verdict": verdict})  # fmt: skip
    return pl.DataFrame(rows, schema={"baseline": pl.String, "seeds": pl.Int64, "mean_delta": pl.Float64,
                                      "sd_delta": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
                                      "verdict": pl.String})  # fmt: skip
