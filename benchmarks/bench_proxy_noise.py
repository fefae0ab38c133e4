"""How much of a proxy's objective is seed noise, next to the differences between mixtures it must decide (issue 19's
first measurement; prints numbers, not a test).

    python benchmarks/bench_proxy_noise.py --home ~/.climb                       # after `make demo` / `climb crawl`
    python benchmarks/bench_proxy_noise.py --home ~/.climb --mixtures 6 --seeds 4 --variants default,lr_div4

The mixtures are the first ``--mixtures`` candidates of the search's iteration 1 (Dirichlet draws around the token
prior: the spread the first predictor learns from), proposed by the search's own function. Each is trained from the
search's base checkpoint with ``--seeds`` seeds, exactly as a proxy is (``run_proxy``), under each variant of the
proxy settings; the tokenizer and base are the search's own, trained here by its functions if the home lacks them
(so any home after a crawl will do). ``--spread near`` replaces the mixtures with small perturbations of the first
(Dirichlet(``NEAR_CONCENTRATION`` x w)): as close as a late iteration's candidates, where decisions are hard.
``--spread proof`` trains the home's proof mixtures (ClimbMix and its baselines) with ``--seeds`` seeds: the seed sd
issue 19's first goal names. ``--spread incumbents`` re-trains each iteration's best proxy of the home's finished search with ``--seeds`` seeds
(the first is the search's own, so it reproduces the search's number) and prints, per iteration, the search's
single-seed objective next to the mean over seeds: whether "the best proxy improves at every iteration" holds once
the winner's luck is taken out. Per variant:

- seed sd: the pooled within-mixture standard deviation of the objective over seeds;
- mixture sd: the standard deviation of the mixtures' mean objectives;
- SNR: mixture sd / seed sd (how many seed-noise units apart two typical mixtures are);
- rank agreement: the mean Spearman correlation of the mixtures' ranking between every pair of seeds (1: every
  seed orders the mixtures the same way, which is what the search's one common seed assumes);
- seconds per run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy.stats import spearmanr

from climb_assets import lake
from climb_assets.climbmix.assets import proof_mixtures
from climb_assets.home import ClimbHome
from climb_assets.lm.proxy import run_proxy
from climb_assets.lm.train import load_checkpoint
from climb_assets.search.assets import ensure_base_checkpoint, ensure_proxy_tokenizer, propose_candidates
from climb_assets.search.keys import SearchPlan
from climb_assets.search.settings import ProofSettings, SearchSettings
from climb_assets.search.state import read_results, search_inputs, weight_columns

# Variants of the continued proxies (the base checkpoint and the data stay the search's).
VARIANTS = {
    "default": {},
    "lr_div4": {"lr_scale": 0.25},  # small-LR continuation from the base (arXiv 2512.24503's finding)
    "lr_div10": {"lr_scale": 0.1},
    "lr_x2": {"lr_scale": 2.0},
    "batch_x2": {"batch_scale": 2},  # the same tokens in half the steps
    "tokens_x2": {"token_scale": 2.0},
    "eval_x3": {"eval_scale": 3},  # three times the held-out target texts
    "base_x2": {"base_scale": 2.0},  # a base checkpoint trained on twice the tokens
    "documents": {"token_stream": "documents"},  # whole documents packed in epochs (the default until stop 35)
    "random_windows": {"token_stream": "random_windows"},  # windows at independent random positions (stop 35's)
}


NEAR_CONCENTRATION = 100.0


def near_mixtures(center: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([center] + [rng.dirichlet(NEAR_CONCENTRATION * center + 1e-3) for _ in range(n - 1)])


def variant_search(search: SearchSettings, variant: dict) -> SearchSettings:
    """The home's search settings with the variant's token stream and base budget (its base is trained for it)."""
    return search.model_copy(update={"token_stream": variant.get("token_stream", search.token_stream),
                                     "base_token_budget": int(search.base_token_budget * variant.get("base_scale", 1.0))})  # fmt: skip


def variant_inputs(search: SearchSettings, home: ClimbHome, variant: dict):
    proxy = search.proxy_settings()
    lr = proxy.lr * variant.get("lr_scale", 1.0)
    proxy = replace(proxy, lr=lr, min_lr=lr / 10, token_budget=int(proxy.token_budget * variant.get("token_scale", 1.0)),
                    batch_size=proxy.batch_size * variant.get("batch_scale", 1))
    target = search.model_copy(update={"max_target_texts": search.max_target_texts * variant.get("eval_scale", 1)})
    return proxy, target.target(home)


def base_state(plan: SearchPlan):
    if plan.base_path is None:
        return None
    ensure_base_checkpoint(plan, slots=1)
    return load_checkpoint(plan.base_path)[0].state_dict()


def measure(plan: SearchPlan, name: str, mixtures: np.ndarray, seeds: list[int]) -> dict:
    tokenizer, corpus = search_inputs(plan)
    variant = VARIANTS[name]
    search = variant_search(plan.search, variant)
    init_state = base_state(SearchPlan(plan.home, search))
    proxy, target = variant_inputs(search, plan.home, variant)
    objectives = np.empty((len(mixtures), len(seeds)))
    started = time.perf_counter()
    for (i, weights), (j, seed) in itertools.product(enumerate(mixtures), enumerate(seeds)):
        outcome, _ = run_proxy(corpus, tokenizer, weights, proxy, target, seed=seed, init_state=init_state)
        objectives[i, j] = outcome.metrics["objective"]
    seconds = (time.perf_counter() - started) / objectives.size
    seed_sd = float(np.sqrt(objectives.var(axis=1, ddof=1).mean()))
    mixture_sd = float(objectives.mean(axis=1).std(ddof=1))
    agreement = [spearmanr(objectives[:, a], objectives[:, b]).statistic for a, b in itertools.combinations(range(len(seeds)), 2)]
    return {
        "variant": name, "seed_sd": seed_sd, "mixture_sd": mixture_sd, "snr": mixture_sd / seed_sd,
        "rank_agreement": float(statistics.fmean(agreement)), "best_mean": float(objectives.mean(axis=1).max()),
        "seconds_per_run": seconds, "means": objectives.mean(axis=1).tolist(), "sds": objectives.std(axis=1, ddof=1).tolist(),
    }  # fmt: skip


def incumbents(plan: SearchPlan, seeds: list[int]) -> None:
    """Each iteration's best proxy re-trained with ``seeds``: its single-seed objective against its mean."""
    tokenizer, corpus = search_inputs(plan)
    proxy, target = variant_inputs(plan.search, plan.home, VARIANTS["default"])
    init_state = base_state(plan)
    results = read_results(plan, len(plan.search.proxies_per_iteration))
    print(f"home {plan.home.root}, search {plan.search_key}: each iteration's best proxy x {len(seeds)} seeds {seeds}")
    print("| iteration | best proxy | its objective (search's seed) | mean over seeds | sd | min | max |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for iteration, rows in sorted(results.group_by("iteration"), key=lambda group: group[0]):
        best = rows.sort("objective", descending=True).row(0, named=True)
        weights = np.array([best[column] for column in weight_columns(corpus.groups)])
        objectives = np.array([
            run_proxy(corpus, tokenizer, weights, proxy, target, seed=seed, init_state=init_state)[0].metrics["objective"]
            for seed in seeds
        ])  # fmt: skip
        print(f"| {iteration[0]} | {best['candidate_id']} | {best['objective']:.4f} | {objectives.mean():.4f} | "
              f"{objectives.std(ddof=1):.4f} | {objectives.min():.4f} | {objectives.max():.4f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True, help="a CLIMB_HOME with super-clusters (after a crawl)")
    parser.add_argument("--mixtures", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--spread", choices=["prior", "near", "proof", "incumbents"], default="prior",
                        help="prior: iteration 1's candidates; near: perturbations of the first one; proof: the home's "
                             "proof mixtures; incumbents: each iteration's best proxy of the finished search")  # fmt: skip
    parser.add_argument("--home-settings", default="{}",
                        help='search settings of the home\'s finished search, as JSON, where they are not the defaults '
                             '(a home searched before stop 35: {"token_stream": "documents"})')  # fmt: skip
    args = parser.parse_args()
    plan = SearchPlan(ClimbHome(args.home), SearchSettings(**json.loads(args.home_settings)))
    ensure_proxy_tokenizer(plan)
    if args.spread == "incumbents":
        incumbents(plan, [plan.search.proxy_seed() + k for k in range(args.seeds)])
        return
    _, corpus = search_inputs(plan)
    seeds = [plan.search.proxy_seed() + k for k in range(args.seeds)]
    if args.spread == "proof":
        manifest = json.loads(lake.climbmix_manifest_path(plan.home, plan.search_key).read_text())
        named = proof_mixtures(plan, corpus, manifest, ProofSettings())
        names, mixtures, seeds = list(named), np.vstack(list(named.values())), ProofSettings().seeds[: args.seeds]
    else:
        candidates, _ = propose_candidates(plan, 1)
        mixtures = candidates.select(weight_columns(corpus.groups)).to_numpy()[: args.mixtures]
        if args.spread == "near":
            mixtures = near_mixtures(mixtures[0], args.mixtures, plan.search.seed)
        names = [f"mixture {i + 1}" for i in range(len(mixtures))]
    print(f"home {args.home}, search {plan.search_key}: {len(mixtures)} mixtures ({args.spread}) x {len(seeds)} seeds per variant, "
          f"{len(plan.search.target(plan.home).texts)} target texts by default")
    print("| variant | seed sd | mixture sd | SNR | rank agreement | best mean objective | s per run |"
          + "".join(f" {name} mean ± sd |" for name in names))
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(names))
    for name in args.variants.split(","):
        row = measure(plan, name, mixtures, seeds)
        print(f"| {row['variant']} | {row['seed_sd']:.4f} | {row['mixture_sd']:.4f} | {row['snr']:.1f} | "
              f"{row['rank_agreement']:.2f} | {row['best_mean']:.4f} | {row['seconds_per_run']:.1f} |"
              + "".join(f" {m:.4f} ± {sd:.4f} |" for m, sd in zip(row["means"], row["sds"])), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
