"""Simulated searches: the search's own rules run many times on a known objective, so a change to a rule is judged by
the answer it gives on average, not by one real search per arm (issue 19; prints numbers, not a test).

    python benchmarks/simulate_search.py --home ~/.climb --seed-sd 0.011 --searches 16 --rules paper,exploit_first

A real search on 2 cores costs ten minutes and its answer carries its proxies' seed luck, so two searches that differ in
one rule differ in luck as much as in the rule. Here the objective is known: a Gaussian process (the predictor's own
kind, ``--truth gp``) or the ridge on [w, log w] (``--truth ridge``) fitted to every run the home's finished searches
made (each iteration's proxies, the random-search baseline's and the proof's means). A proxy's objective is
``truth(w)`` plus seed noise of sd ``--seed-sd`` (``bench_proxy_noise.py``'s pooled seed sd), of which a share
``--shared`` is a luck per super-cluster that every proxy of one seed shares, ``w @ luck`` (a search's proxies share
its seed, so a super-cluster's windows are the same in all of them), the rest independent per run. Each simulated
search then runs exactly the search's functions with the home's schedule, pool size and predictor settings:
iteration 1's Dirichlet draws (``sample_dirichlet_candidates``), one ``select_predictor`` per iteration, the next
candidates (``next_iteration_candidates``, with ``exploit_within`` for ``exploit_first``), re-training the best
``confirm_top`` with a second seed (its own luck), and ClimbMix's pick (``best_predicted_mixture`` within the trained
weights, refined around them unless the rule's ``final_pick`` is ``pool``). The baselines are made as the product
makes them (``random_search_weights``; RegMix fits one predictor on the N random proxies and picks with the same
rule), from the same simulated runs.

Per rule, over ``--searches`` simulated searches (search seeds 0, 1, ...): the truth of ClimbMix, of RegMix and of the
best random proxy, ClimbMix minus RegMix with a 95% t-interval over searches, the share of searches whose ClimbMix is
better than RegMix, and the share whose best proxy (by its observed objective, as the search reports it) is truly
better at every iteration than at the one before; with more than one rule, each rule's ClimbMix minus the first
rule's, paired by search seed (every rule sees the same iteration-1 runs and the same baselines). What it leaves
out: a seed's luck is modelled as linear in the weights, and the truth is a smooth fit to a few dozen runs, not the
corpus itself, so a rule that wins only under one kind of truth has not shown that it wins.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from climb_assets import lake
from climb_assets.climbmix.assets import proof_mixtures
from climb_assets.climbmix.baselines import paired_comparison, random_search_weights
from climb_assets.home import ClimbHome
from climb_assets.search.candidates import (
    FinalPick,
    best_predicted_mixture,
    next_iteration_candidates,
    sample_dirichlet_candidates,
    token_prior,
)
from climb_assets.search.keys import SearchPlan
from climb_assets.search.predictor import fit_predictor, select_predictor
from climb_assets.search.settings import ProofSettings, SearchSettings
from climb_assets.search.state import read_results, search_inputs, weight_columns


@dataclass(frozen=True)
class Rule:
    acquisition: str = "paper"
    confirm_top: int = 0
    top_k_average: int = 1
    # the kinds the final picks (ClimbMix's and RegMix's) are made with; empty: the kept predictor's, as the product
    pick_kinds: tuple[str, ...] = ()
    final_pick: FinalPick = "refine"  # the search setting of the same name


RULES = {
    "paper": Rule(),
    "exploit_first": Rule(acquisition="exploit_first"),
    "confirm2": Rule(confirm_top=2),
    "top10": Rule(top_k_average=10),
    # a tree ensemble's argmax is free in the super-clusters its trees never split on: pick with a smooth kind only
    "smooth_pick": Rule(pick_kinds=("ensemble", "gp", "ridge")),
    # the final picks from the paper's pool alone (before stop 37): no trained mixtures, no draws around them
    "pool_pick": Rule(final_pick="pool"),
}


def finished_plan(home: ClimbHome, overrides: dict, search_key: str | None) -> SearchPlan:
    """The plan of a finished search: its settings, and its key when given (a search made by an earlier version of
    the code has the key that version computed, not the one this code would)."""
    plan = SearchPlan(home, SearchSettings(**overrides))
    if search_key:
        plan.__dict__["search_key"] = search_key  # SearchPlan.search_key is a cached property
    return plan


def home_runs(home: ClimbHome, settings: list[dict], keys: list[str | None]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Every distinct mixture the home's finished searches (one per entry of ``settings``) trained or proved, with
    its mean objective: the search's proxies, the random baseline's and each proof mixture's mean over seeds."""
    frames = []
    for overrides, key in zip(settings, keys):
        plan = finished_plan(home, overrides, key)
        _, corpus = search_inputs(plan)
        columns = weight_columns(corpus.groups)
        frames.append(read_results(plan, len(plan.search.proxies_per_iteration)).select(*columns, "objective"))
        frames.append(pl.read_parquet(plan.baseline_path().with_name("results.parquet")).select(*columns, "objective"))
        manifest = json.loads(lake.climbmix_manifest_path(home, plan.search_key).read_text())
        proof = pl.read_parquet(lake.climbmix_manifest_path(home, plan.search_key).with_name("proof_runs.parquet"))
        means = dict(proof.group_by("mixture").agg(pl.col("objective").mean()).iter_rows())
        mixtures = proof_mixtures(plan, corpus, manifest, ProofSettings())
        frames.append(pl.DataFrame([dict(zip(columns, w.tolist()), objective=means[name])
                                    for name, w in mixtures.items()]))  # fmt: skip
    # the random baseline's first runs are iteration 1's (their weights as stored differ by < 1e-5): one mixture each
    runs = (pl.concat(frames).with_columns(pl.col(columns).round(4))
            .group_by(columns, maintain_order=True).agg(pl.col("objective").mean()))  # fmt: skip
    return runs.select(columns).to_numpy(), runs["objective"].to_numpy(), corpus.groups


class Truth:
    """The known objective and the simulated proxies. A proxy's seed noise has two parts: a luck per super-cluster that
    every proxy of one seed shares (the real proxies share their seed, so a super-cluster's windows are the same in
    all of them: ``w @ luck``) and an independent rest. ``shared`` is the first part's share of the variance at a
    typical iteration-1 mixture; a confirmation run has its own seed, so its own luck."""

    def __init__(self, model, seed_sd: float, shared: float, mean_square_weight: float, search_seed: int, part: int):
        self.model, self.search_seed = model, search_seed
        self.rest_sd = seed_sd * np.sqrt(1.0 - shared)
        self.luck_sd = seed_sd * np.sqrt(shared / mean_square_weight)
        self.noise = np.random.default_rng([search_seed, part])

    def __call__(self, W: np.ndarray) -> np.ndarray:
        return self.model.predict(np.atleast_2d(W))

    def train(self, W: np.ndarray, seed: int = 0) -> np.ndarray:
        """Proxies of ``W`` with proxy seed ``seed`` (0: the search's; 1: the confirmation's)."""
        W = np.atleast_2d(W)
        luck = np.random.default_rng([self.search_seed, 0, seed]).normal(0.0, self.luck_sd, W.shape[1])
        return self(W) + W @ luck + self.noise.normal(0.0, self.rest_sd, len(W))


def predictor_for(search: SearchSettings, X: np.ndarray, y: np.ndarray, kinds: tuple[str, ...] = ()):
    return select_predictor(X, y, search.seed, k=search.predictor_folds, params=search.predictor_params(),
                            kinds=kinds or search.predictor_kinds())[0]  # fmt: skip


def confirm(truth: Truth, W: np.ndarray, y: np.ndarray, top: int) -> np.ndarray:
    """The ``top`` best by their first run, trained again: their objective becomes the mean of both."""
    if not top:
        return y
    y = y.copy()
    best = np.argsort(-y, kind="stable")[:top]
    y[best] = (y[best] + truth.train(W[best], seed=1)) / 2
    return y


def simulate(search: SearchSettings, rule: Rule, truth: Truth, prior: np.ndarray, first: tuple) -> dict:
    """One search under ``rule`` from iteration 1's runs ``first`` (weights, observed objectives)."""
    X, y = first
    y = confirm(truth, X, y, rule.confirm_top)
    best_true = [float(truth(X[np.argmax(y)])[0])]
    last = len(search.proxies_per_iteration)
    predictor = predictor_for(search, X, y, rule.pick_kinds if last == 1 else ())
    for iteration, n in enumerate(search.proxies_per_iteration[1:], start=2):
        rng = np.random.default_rng([search.seed, iteration])
        exploit = X.max(axis=0) if rule.acquisition == "exploit_first" else None
        W = next_iteration_candidates(predictor, prior, n, rng, pool_size=search.pool_size, evaluated=X,
                                      exploit_within=exploit)  # fmt: skip
        observed = confirm(truth, W, truth.train(W), rule.confirm_top)
        best_true.append(float(truth(W[np.argmax(observed)])[0]))
        X, y = np.vstack([X, W]), np.concatenate([y, observed])
        predictor = predictor_for(search, X, y, rule.pick_kinds if iteration == last else ())  # the last: the pick's
    climbmix = final_pick(rule, predictor, prior, X, y, 0, search.pool_size)
    return {"climbmix": float(truth(climbmix)[0]), "best_by_iteration": best_true, "runs": len(y)}


def final_pick(rule: Rule, predictor, prior: np.ndarray, X: np.ndarray, y: np.ndarray, seed: int,
               pool_size: int) -> np.ndarray:  # fmt: skip
    """ClimbMix's or RegMix's pick from the runs ``X`` (observed ``y``), as ``SearchSpace.best_mixture`` makes it."""
    refine = {"refine_around": X, "observed": y} if rule.final_pick == "refine" else {}
    return best_predicted_mixture(predictor, prior, seed, pool_size=pool_size, top_k=rule.top_k_average,
                                  upper_bounds=X.max(axis=0), **refine)[0]  # fmt: skip


def baselines(search: SearchSettings, rule: Rule, truth: Truth, prior: np.ndarray, first: tuple) -> dict:
    """RegMix and the best random proxy at the search's proxy count, iteration 1's runs first (as the product reuses
    them)."""
    X1, y1 = first
    total = sum(search.proxies_per_iteration)
    X = random_search_weights(X1, prior, total, search.seed)
    y = np.concatenate([y1, truth.train(X[len(X1):])])
    predictor = predictor_for(search, X, y, rule.pick_kinds)
    regmix = final_pick(rule, predictor, prior, X, y, search.seed, search.pool_size)
    return {"regmix": float(truth(regmix)[0]), "best_random": float(truth(X[np.argmax(y)])[0])}


def paired(rows: list[dict], reference: str, other: str, others: list[dict] | None = None) -> str:
    """``reference`` minus ``other`` over the simulated searches, paired by search seed (the proof's statistics)."""
    frame = pl.DataFrame([{"mixture": "reference", "seed": seed, "objective": row[reference]} for seed, row in enumerate(rows)]
                         + [{"mixture": "other", "seed": seed, "objective": row[other]}
                            for seed, row in enumerate(others or rows)])  # fmt: skip
    gap = paired_comparison(frame, reference="reference").row(0, named=True)
    return f"{gap['mean_delta']:+.4f} [{gap['ci_low']:+.4f}, {gap['ci_high']:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True, help="a CLIMB_HOME with finished searches and proofs")
    parser.add_argument("--home-settings", default="[{}]",
                        help="a JSON list: the search settings of each finished search whose runs fit the truth "
                             '(one token stream; e.g. [{}, {"seed": 1}])')  # fmt: skip
    parser.add_argument("--search-keys", default="",
                        help="comma-separated, one per --home-settings entry: the finished searches' keys, for a home "
                             "searched by an earlier version of the code (default: the keys this code computes)")  # fmt: skip
    parser.add_argument("--truth", choices=["gp", "ridge"], default="gp")
    parser.add_argument("--seed-sd", type=float, required=True, help="a proxy's seed noise (bench_proxy_noise.py)")
    parser.add_argument("--shared", type=float, default=0.0,
                        help="the share of the seed variance that is one luck per super-cluster shared by every proxy "
                             "of a seed (0: independent noise)")  # fmt: skip
    parser.add_argument("--searches", type=int, default=16)
    parser.add_argument("--rules", default="paper,exploit_first,confirm2")
    parser.add_argument("--schedule", default="", help="proxies per iteration, e.g. 32,16,16 (default: the home's)")
    args = parser.parse_args()
    settings = json.loads(args.home_settings)
    home = ClimbHome(args.home)
    keys = args.search_keys.split(",") if args.search_keys else [None] * len(settings)
    X, y, groups = home_runs(home, settings, keys)
    model = fit_predictor(X, y, 0, kind=args.truth)
    plan = finished_plan(home, settings[0], keys[0])
    if args.schedule:
        plan = SearchPlan(home, plan.search.model_copy(update={"proxies_per_iteration": [int(n) for n in args.schedule.split(",")]}))
    _, corpus = search_inputs(plan)
    prior = token_prior(corpus.tokens_per_group())
    fitted = model.predict(X)
    print(f"home {home.root}: truth = {args.truth} fitted to {len(y)} mixtures (objective {y.min():.4f} .. "
          f"{y.max():.4f}; fit Spearman {spearmanr(fitted, y).statistic:.3f}); seed sd {args.seed_sd} "
          f"({args.shared:.0%} of its variance one luck per super-cluster, shared by a seed's proxies); "
          f"{args.searches} simulated searches per rule, schedule {plan.search.proxies_per_iteration}, "
          f"pool {plan.search.pool_size:,}", flush=True)  # fmt: skip
    rules = args.rules.split(",")
    print(f"| rule | ClimbMix (truth) | RegMix | best random | ClimbMix - RegMix, 95% interval | ClimbMix better | "
          f"ClimbMix minus {rules[0]}'s, paired | best proxy truly climbs | s per search |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    mean_square_weight = float((sample_dirichlet_candidates(prior, 512, np.random.default_rng(0)) ** 2).sum(axis=1).mean())
    made = {}  # the baselines of a (search seed, final pick rule): the same for every rule that picks alike
    first_rule = []
    for name in rules:
        rule, rows, started = RULES[name], [], time.perf_counter()
        for seed in range(args.searches):
            # the search and its random baseline share the proxies' seed (one luck per search seed); the rest of
            # the noise has one stream per part, so every rule sees the same iteration-1 runs and the same baselines
            search = plan.search.model_copy(update={"seed": seed})

            def truth(part: int) -> Truth:
                return Truth(model, args.seed_sd, args.shared, mean_square_weight, seed, part)

            X1 = sample_dirichlet_candidates(prior, search.proxies_per_iteration[0], np.random.default_rng([seed, 1]))
            first = (X1, truth(1).train(X1))
            pick = (seed, rule.top_k_average, rule.pick_kinds, rule.final_pick)
            if pick not in made:
                made[pick] = baselines(search, rule, truth(2), prior, first)
            rows.append(simulate(search, rule, truth(3), prior, first) | made[pick])
        climbs = statistics.fmean(all(b > a for a, b in zip(r["best_by_iteration"], r["best_by_iteration"][1:]))
                                  for r in rows)  # fmt: skip
        first_rule = first_rule or rows
        print(f"| {name} | {statistics.fmean(r['climbmix'] for r in rows):.4f} | "
              f"{statistics.fmean(r['regmix'] for r in rows):.4f} | {statistics.fmean(r['best_random'] for r in rows):.4f} | "
              f"{paired(rows, 'climbmix', 'regmix')} | {statistics.fmean(r['climbmix'] > r['regmix'] for r in rows):.0%} | "
              f"{'' if rows is first_rule else paired(rows, 'climbmix', 'climbmix', first_rule)} | {climbs:.0%} | "
              f"{(time.perf_counter() - started) / args.searches:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
