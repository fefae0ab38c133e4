"""Two finished searches of one home side by side: per iteration, the best proxy and the kept predictor's held-out
Spearman; each search's proof; and ClimbMix's paired difference between them (prints numbers, not a test).

    climb run search_job --config confirm2.yaml      # e.g. confirm_top: 2, after `make demo` ran the default search
    python benchmarks/compare_searches.py --home .climb paper='{}' confirm='{"confirm_top": 2}'

Each search is ``label=SETTINGS`` (JSON on top of the default search settings; ``{}`` is the default search) or
``label=SEARCH_KEY`` (a search made by other code). Both proofs use the same seeds (paired: the same data order and
initialisation), so the difference of their ClimbMix runs, seed by seed, with a 95% t-interval says whether the second
search's answer is better, worse or a tie.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from climb_assets import lake  # noqa: E402
from climb_assets.climbmix.baselines import paired_comparison  # noqa: E402
from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.search.keys import SearchPlan  # noqa: E402
from climb_assets.search.predictor import Predictor  # noqa: E402
from climb_assets.search.settings import SEARCH_ITERATIONS, SearchSettings  # noqa: E402


def search_key(home: ClimbHome, spec: str) -> str:
    return SearchPlan(home, SearchSettings(**json.loads(spec))).search_key if spec.startswith("{") else spec


def describe(home: ClimbHome, label: str, key: str) -> pl.DataFrame:
    """Print one search's iterations and proof; return its proof runs."""
    print(f"\n## {label}: search {key}\n\n| iteration | best proxy | its first seed | confirmed | Spearman (kind) |")
    print("|---|---:|---:|---:|---|")
    for k in range(1, SEARCH_ITERATIONS + 1):
        results = pl.read_parquet(lake.search_iteration_dir(home, key, k) / "results.parquet")
        predictor = Predictor.load(lake.search_iteration_dir(home, key, k) / "predictor")
        best = results.sort("objective", descending=True).row(0, named=True)
        confirmed = int((results["seeds"] > 1).sum()) if "seeds" in results.columns else 0
        print(f"| {k} | {best['objective']:.4f} | {best.get('objective_first_seed', best['objective']):.4f} | "
              f"{confirmed} | {predictor.extra['spearman']:.3f} ({predictor.kind}) |")  # fmt: skip
    runs = pl.read_parquet(lake.proof_runs_path(home, key))
    table = runs.group_by("mixture").agg(bpb=pl.col("bpb").mean(), sd=pl.col("bpb").std()).sort("bpb")
    print("\n| mixture | bpb (mean ± sd) |\n|---|---|")
    for mixture, bpb, sd in table.iter_rows():
        print(f"| {mixture} | {bpb:.4f} ± {sd:.4f} |")
    print("\n| ClimbMix minus | mean | 95% interval | verdict |\n|---|---:|---|---|")
    for row in paired_comparison(runs).iter_rows(named=True):
        print(f"| {row['baseline']} | {row['mean_delta']:+.4f} | [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] | {row['verdict']} |")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True, help="a CLIMB_HOME with both searches finished")
    parser.add_argument("searches", nargs=2, help="label=SETTINGS_JSON or label=SEARCH_KEY")
    args = parser.parse_args()
    home = ClimbHome(args.home)
    labels, keys = zip(*(spec.split("=", 1) for spec in args.searches), strict=True)
    first, second = (describe(home, label, search_key(home, spec)) for label, spec in zip(labels, keys, strict=True))
    climbmix = pl.concat([runs.filter(pl.col("mixture") == "climbmix").select("seed", "objective",
                                                                               mixture=pl.lit(label))  # fmt: skip
                          for label, runs in zip(labels, (first, second), strict=True)])
    row = paired_comparison(climbmix, reference=labels[1]).row(0, named=True)  # the proof's own paired statistics
    verdict = {"beats": "better", "loses": "worse"}.get(row["verdict"], "tie")
    print(f"\n{labels[1]} − {labels[0]}, ClimbMix objective paired by seed ({row['seeds']} seeds): "
          f"{row['mean_delta']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]: {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
