"""What a new crawl wave costs with a continued search, next to a search from scratch on the same data, and whether
the answer is as good (issue 18; prints numbers, not a test).

    python benchmarks/bench_continued_search.py                 # the demo corpus, default search settings
    python benchmarks/bench_continued_search.py --scale 0.5 --seeds 0,1,2,3,4

Wave 1 lands, is clustered and searched from scratch (the lineage's first search). Wave 2 lands and is assigned under
the same centroids. Then, on the same wave-2 super-clusters, up to four searches (``--variants``): ``continue`` (the
default: a refresh, the old runs as evidence, a quarter of the proxies, a base from scratch), ``trained-on`` (the same
with ``base_continue_fraction: 0.25``: wave 1's base trained on for a quarter of its tokens), ``partial`` (the
Olmix-style partial restart, forced by a ``continue_max_prior_shift`` of half the shift the wave moved the prior by:
the super-clusters that moved most are searched again, the rest held at wave 1's ratios) and ``fresh``
(``search_start: fresh``, a full search). Each search runs the search assets only (tokenizer, base, iterations), in one process, one after the
other. For each search: proxies trained, wall time, the continuation's decision and refresh numbers, the best proxy
and the final predictor's pick. Then every pick is trained from the full search's base with ``--seeds`` paired
seeds, exactly as a proxy is (``run_proxy``), and the paired difference (continued − fresh) with a 95% t-interval
says whether a continued search's answer is as good.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import polars as pl
from scipy import stats


def search_asset_keys(iterations: int):
    import dagster as dg

    keys = [dg.AssetKey(name) for name in ("proxy_tokenizer", "proxy_base_checkpoint")]
    return keys + [dg.AssetKey([f"iteration_{k}", name]) for k in range(1, iterations + 1)
                   for name in ("mixture_candidates", "proxy_results", "predictor")]  # fmt: skip


def token_files(home) -> dict[Path, int]:
    """Every token file in the lake and when it was written."""
    return {path: path.stat().st_mtime_ns for path in (home.lake / "tokens").rglob("*.bin")}


def tokens_written(before: dict[Path, int], after: dict[Path, int]) -> int:
    """Tokens in the token files written between two snapshots (the ``.idx`` ends at the shard's token count)."""
    written = [path for path, mtime in after.items() if before.get(path) != mtime]
    return sum(int(np.load(path.with_suffix(".idx"))[-1]) for path in written)


def run_search(defs, instance, home, settings: dict, iterations: int) -> dict:
    from climb_assets.cli import run_job
    from climb_assets.search import continuation
    from climb_assets.search.keys import SearchPlan

    files = token_files(home)
    started_at, started = time.time(), time.perf_counter()
    run_job(defs, instance, "search_job", {"resources": {"search": {"config": settings}}},
            asset_selection=search_asset_keys(iterations))  # fmt: skip
    seconds = time.perf_counter() - started
    search = defs.resources["search"]
    plan = SearchPlan(home, type(search)(**(search.model_dump() | settings)))
    own = pl.concat([pl.read_parquet(plan.results_path(k)) for k in range(1, iterations + 1)])
    trained = int((~own["reused"]).sum())
    base_trained = plan.base_path is not None and plan.base_path.stat().st_mtime >= started_at  # written by this search
    base_budget = (plan.search.base_continue_settings() if plan.parent_base else plan.search.base_settings()).token_budget
    base_tokens = base_budget if base_trained else 0
    return {"plan": plan, "seconds": round(seconds, 1), "trained": trained, "runs": own.height,
            "tokens_tokenized": tokens_written(files, token_files(home)),
            "proxy_tokens_trained": trained * plan.search.token_budget + base_tokens,
            "best_proxy": round(float(own["objective"].max()), 4), "state": continuation.load(plan)}  # fmt: skip


def pick(plan, iterations: int) -> tuple[np.ndarray, float]:
    from climb_assets.climbmix.assets import choose_climbmix
    from climb_assets.search.settings import ClimbMixConfig

    weights, predicted, _ = choose_climbmix(ClimbMixConfig(), plan, iterations)
    return weights, predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", choices=["demo", "packages"], default="demo", help="built-in corpus")
    parser.add_argument("--scale", type=float, default=1.0, help="corpus scale (1.0: the demo's)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="paired evaluation seeds of the two picks")
    parser.add_argument("--home", default="", help="CLIMB_HOME to use (default: a new temp dir)")
    parser.add_argument("--variants", default="continue,trained-on,partial,fresh",
                        help="wave-2 searches to run (continue and fresh always run)")
    args = parser.parse_args()
    root = Path(args.home or tempfile.mkdtemp(prefix="bench-continued-"))
    os.environ["CLIMB_HOME"] = str(root)

    from climb_assets.cli import bring_clusters_current, ingest_landed, open_platform
    from climb_assets.demo import RECIPES, build_demo_corpus
    from climb_assets.lm.proxy import run_proxy
    from climb_assets.lm.train import load_checkpoint
    from climb_assets.quality.merge import DEFAULT_TARGET_COUNT
    from climb_assets.search.settings import SEARCH_ITERATIONS
    from climb_assets.search.state import search_inputs

    merge = {"ops": {"quality_filtered_clusters": {"config": {"target_count": DEFAULT_TARGET_COUNT}}}}
    home, instance, defs = open_platform()
    print(f"CLIMB_HOME {home.root}; {args.corpus} corpus, scale {args.scale}; search settings: the defaults", flush=True)
    rows = []
    started = time.perf_counter()
    build_demo_corpus(home, wave=1, scale=args.scale, recipe=RECIPES[args.corpus])
    ingest_landed(defs, instance, home)
    bring_clusters_current(defs, instance, home, merge_config=merge)
    print(f"wave 1 ingested and clustered in {time.perf_counter() - started:.0f} s", flush=True)
    first = run_search(defs, instance, home, {}, SEARCH_ITERATIONS)
    rows.append({"search": "wave 1 (first)", **{k: v for k, v in first.items() if k != "plan"}})
    started = time.perf_counter()
    build_demo_corpus(home, wave=2, scale=args.scale, recipe=RECIPES[args.corpus])
    ingest_landed(defs, instance, home)
    bring_clusters_current(defs, instance, home, merge_config=merge)
    print(f"wave 2 ingested and assigned in {time.perf_counter() - started:.0f} s", flush=True)
    wanted = set(args.variants.split(",")) | {"continue", "fresh"}
    variants = {"continue": lambda: {"base_continue_fraction": 0.0},
                "trained-on": lambda: {"base_continue_fraction": 0.25},
                "partial": lambda: {"continue_max_prior_shift": round(searches["continue"]["state"]["prior_shift"] / 2, 4)},
                "fresh": lambda: {"search_start": "fresh"}}  # fmt: skip
    searches = {}
    for name, settings in variants.items():
        if name in wanted:
            searches[name] = run_search(defs, instance, home, settings(), SEARCH_ITERATIONS)
    for name, outcome in searches.items():
        rows.append({"search": f"wave 2 ({name})", **{k: v for k, v in outcome.items() if k != "plan"}})

    print("\n| search | proxies trained | runs | tokens tokenized | proxy tokens trained (base incl.) | seconds | "
          "best proxy | start | decision | searched again | refresh Spearman (p) | refresh RMSE (after shift) | "
          "prior shift | reasons |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        s = row["state"]
        print(f"| {row['search']} | {row['trained']} | {row['runs']} | {row['tokens_tokenized']:,} | "
              f"{row['proxy_tokens_trained']:,} | {row['seconds']} | {row['best_proxy']} | "
              f"{s['start']} | {s.get('decision', '')} | {s.get('searched_groups', '')} | "
              f"{s.get('refresh_spearman', '')} ({s.get('refresh_p_value', '')}) | "
              f"{s.get('refresh_rmse', '')} ({s.get('refresh_rmse_after_shift', '')}) | {s.get('prior_shift', '')} | "
              f"{'; '.join(s['reasons'] + s.get('refresh_reasons', []))} |")

    plans = {name: outcome["plan"] for name, outcome in searches.items()}
    picks = {name: pick(plan, SEARCH_ITERATIONS) for name, plan in plans.items()}
    plan = plans["fresh"]  # every pick is trained from the full search's base: a base from scratch on wave 2
    tokenizer, corpus = search_inputs(plan)
    target = plan.search.target(home)
    init = load_checkpoint(plan.base_path)[0].state_dict() if plan.base_path else None
    seeds = [int(s) for s in args.seeds.split(",")]
    objective = {name: [] for name in picks}
    for seed in seeds:
        for name, (weights, _) in picks.items():
            outcome, _ = run_proxy(corpus, tokenizer, weights, plan.search.proxy_settings(), target, seed=seed,
                                   init_state=init)  # fmt: skip
            objective[name].append(outcome.metrics["objective"])
    print("\n| pick | predicted | trained (mean over seeds) | sd |\n|---|---|---|---|")
    for name, (_, predicted) in picks.items():
        print(f"| {name} | {predicted:.4f} | {np.mean(objective[name]):.4f} | {np.std(objective[name], ddof=1):.4f} |")
    for name in picks:
        if name == "fresh":
            continue
        deltas = np.array(objective[name]) - np.array(objective["fresh"])
        half = stats.t.ppf(0.975, len(deltas) - 1) * deltas.std(ddof=1) / np.sqrt(len(deltas)) if len(deltas) > 1 else np.nan
        print(f"{name} − fresh over {len(seeds)} paired seeds: {deltas.mean():+.4f} [{deltas.mean() - half:+.4f}, "
              f"{deltas.mean() + half:+.4f}] (higher is better)")
    for name, outcome in searches.items():
        if name != "fresh":
            print(f"{name}: {outcome['trained']} of the full search's {searches['fresh']['trained']} proxies "
                  f"({outcome['trained'] / searches['fresh']['trained']:.0%}); search seconds / fresh: "
                  f"{outcome['seconds'] / searches['fresh']['seconds']:.2f}")
    print(json.dumps({"weights": {n: [round(float(w), 4) for w in p[0]] for n, p in picks.items()}}))


if __name__ == "__main__":
    main()
