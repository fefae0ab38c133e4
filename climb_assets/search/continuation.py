"""Continuing a search when the crawl grows, instead of restarting it.

A new wave changes who is in which super-cluster, so it is a new search (its key holds the corpus). When the
lineage (same settings, tokenizer and target) has a finished search, the new one continues it:

1. **Structure.** The groups must be the same super-clusters (the same kept fine clusters in each) and the token
   prior must have moved by at most ``continue_max_prior_shift`` (total variation). Otherwise: ``restart`` (a full
   search), with the groups that appeared, vanished or changed named.
2. **Refresh.** Iteration 1 trains ``continued_proxy_fraction`` of its proxies: half the old final predictor's top
   candidates under the new prior (where the answer is), half fresh Dirichlet draws (the range a ranking is judged
   on). The old predictor's Spearman and error on them decide: at ``continue_min_spearman`` or above, ``reuse``;
   below, ``restart`` (the later iterations search at full size).
3. **Reuse.** The old search's own runs join every predictor's training set as evidence, shifted by the refresh's
   median residual (the new base and data move every objective's level; the ranking is what carries over), and
   every later iteration trains ``continued_proxy_fraction`` of its proxies. Only the parent's own runs are kept,
   never its inherited ones, so evidence stays bounded and one shift away from a measurement.

Every decision and its numbers are in ``continuation.json`` beside the search, on the assets and in MLflow.
"""

from __future__ import annotations

import json
import math

import dagster as dg
import numpy as np
import polars as pl
from scipy import stats

from climb_assets import lake
from climb_assets.search.candidates import next_iteration_candidates, sample_dirichlet_candidates
from climb_assets.search.keys import SearchPlan
from climb_assets.search.predictor import MIN_RUNS_TO_SCORE, Predictor
from climb_assets.search.state import read_results, weight_columns
from climb_assets.storage import write_json_atomic, write_parquet_atomic


def write_groups(plan: SearchPlan, groups: list[int], prior: np.ndarray) -> pl.DataFrame:
    """Keep the search's groups (kept fine clusters per super-cluster, and the token prior) with the search, read
    under the search's own super-cluster version."""
    mapping = pl.read_parquet(lake.super_cluster_mapping_path(plan.home)).drop_nulls("super_cluster_id")
    now = pl.read_parquet(lake.super_cluster_table_path(plan.home), columns=["version"])["version"].unique().to_list()
    if now != [plan.cluster_version]:
        raise dg.Failure(f"the super-clusters moved to {now} while search {plan.search_key} ({plan.cluster_version}) "
                         "started: run it again")  # fmt: skip
    table = (
        mapping.group_by("super_cluster_id").agg(pl.col("cluster_id").sort().alias("fine_clusters"))
        .join(pl.DataFrame({"super_cluster_id": groups, "prior": prior.tolist()}), on="super_cluster_id", how="right")
        .select("super_cluster_id", "fine_clusters", "prior").sort("super_cluster_id")
    )  # fmt: skip
    write_parquet_atomic(table, lake.search_groups_path(plan.home, plan.search_key))
    return table


def compare_groups(old: pl.DataFrame, new: pl.DataFrame) -> tuple[list[str], float]:
    """What keeps a search from continuing another (empty: nothing), and the token prior's total variation."""
    old_sets = {r["super_cluster_id"]: tuple(r["fine_clusters"] or ()) for r in old.iter_rows(named=True)}
    new_sets = {r["super_cluster_id"]: tuple(r["fine_clusters"] or ()) for r in new.iter_rows(named=True)}
    problems = []
    if appeared := sorted(set(new_sets) - set(old_sets)):
        problems.append(f"super-clusters appeared: {appeared}")
    if vanished := sorted(set(old_sets) - set(new_sets)):
        problems.append(f"super-clusters vanished: {vanished}")
    if changed := sorted(g for g in set(old_sets) & set(new_sets) if old_sets[g] != new_sets[g]):
        problems.append(f"super-clusters changed their fine clusters: {changed}")
    if problems:
        return problems, float("nan")
    prior = dict(zip(old["super_cluster_id"], old["prior"]))
    shift = 0.5 * sum(abs(p - prior[g]) for g, p in zip(new["super_cluster_id"], new["prior"]))
    return problems, float(shift)


def start_search(plan: SearchPlan, groups: list[int], prior: np.ndarray) -> dict:
    """Iteration 1 decides how the search starts: ``first`` (no finished search in the lineage), ``fresh`` (asked
    for), ``restart`` (the structure moved) or ``refresh`` (continue if the refresh's runs say so)."""
    search = plan.search
    new = write_groups(plan, groups, prior)
    parent = plan.parent_search_key
    state = {"parent": parent, "lineage": plan.lineage_key, "reasons": []}
    if parent is None:
        return save(plan, state | {"start": "fresh" if search.search_start == "fresh" else "first"})
    finished = lake.lineage_dir(plan.home, plan.lineage_key) / "finished" / f"{parent}.json"
    old_groups = lake.search_groups_path(plan.home, parent)
    if not (finished.exists() and old_groups.exists()):
        return save(plan, state | {"start": "restart", "reasons": [f"search {parent} left no groups or finish record"]})
    state["parent_iterations"] = json.loads(finished.read_text())["iterations"]
    problems, shift = compare_groups(pl.read_parquet(old_groups), new)
    state["prior_shift"] = None if math.isnan(shift) else round(shift, 4)
    if not problems and shift > search.continue_max_prior_shift:
        problems.append(f"the token prior moved by {shift:.3f} (total variation) > continue_max_prior_shift "
                        f"{search.continue_max_prior_shift:g}")  # fmt: skip
    return save(plan, state | {"start": "restart" if problems else "refresh", "reasons": problems})


def save(plan: SearchPlan, state: dict) -> dict:
    write_json_atomic(state, lake.search_continuation_path(plan.home, plan.search_key))
    return state


def load(plan: SearchPlan) -> dict:
    path = lake.search_continuation_path(plan.home, plan.search_key)
    if not path.exists():
        raise dg.Failure(f"search {plan.search_key} has not started: materialize iteration_1/mixture_candidates first")
    return json.loads(path.read_text())


def reusing(state: dict) -> bool:
    return state["start"] == "refresh" and state.get("decision") == "reuse"


def continued_share(plan: SearchPlan, n: int, floor: int = 1) -> int:
    return min(n, max(floor, math.ceil(n * plan.search.continued_proxy_fraction)))


def proxies(plan: SearchPlan, iteration: int) -> int:
    """How many proxies the iteration trains: the schedule's, or its continued share while continuing."""
    n = plan.search.proxies(iteration)
    state = load(plan)
    if iteration == 1:
        return continued_share(plan, n, MIN_RUNS_TO_SCORE) if state["start"] == "refresh" else n
    return continued_share(plan, n) if reusing(state) else n


def parent_predictor(plan: SearchPlan, state: dict) -> Predictor:
    return Predictor.load(lake.search_iteration_dir(plan.home, state["parent"], state["parent_iterations"]) / "predictor")


def parent_runs(plan: SearchPlan, state: dict) -> pl.DataFrame:
    """The parent's own proxy runs (never those it inherited): every iteration's results.parquet."""
    paths = [lake.search_iteration_dir(plan.home, state["parent"], k) / "results.parquet"
             for k in range(1, state["parent_iterations"] + 1)]  # fmt: skip
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


def first_candidates(plan: SearchPlan, prior: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Iteration 1's weights: Dirichlet draws; when refreshing, half of them are the old final predictor's top
    candidates under the new prior instead (where the answer is), after the draws (the range a ranking is judged on,
    and the random baseline's first runs)."""
    state = load(plan)
    n = proxies(plan, 1)
    if state["start"] != "refresh":
        save(plan, state | {"random_candidates": n})
        return sample_dirichlet_candidates(prior, n, rng), {"random_candidates": n}
    runs = parent_runs(plan, state)
    evaluated = runs.select([c for c in runs.columns if c.startswith("w_")]).to_numpy()
    top = next_iteration_candidates(parent_predictor(plan, state), prior, n // 2, rng, pool_size=plan.search.pool_size,
                                    evaluated=evaluated)  # fmt: skip
    save(plan, state | {"random_candidates": n - n // 2})
    return np.vstack([sample_dirichlet_candidates(prior, n - n // 2, rng), top]), {"random_candidates": n - n // 2}


def judge_refresh(plan: SearchPlan, groups: list[int]) -> dict:
    """After iteration 1's runs: does the old final predictor still rank new runs? Its Spearman on them, its error
    before and after the level shift (the median residual), and the decision."""
    state = load(plan)
    if state["start"] != "refresh":
        return state
    results = read_results(plan, 1)
    y = results["objective"].to_numpy()
    predicted = parent_predictor(plan, state).predict(results.select(weight_columns(groups)).to_numpy())
    residual = y - predicted
    offset = float(np.median(residual))
    rho = float(stats.spearmanr(predicted, y).statistic) if np.ptp(predicted) > 0 and np.ptp(y) > 0 else float("nan")
    keep = bool(rho >= plan.search.continue_min_spearman)  # nan: no ranking, never kept
    reasons = [] if keep else [f"the old predictor's Spearman on {len(y)} refresh runs is {rho:.3f} < "
                               f"continue_min_spearman {plan.search.continue_min_spearman:g}"]  # fmt: skip
    return save(plan, state | {
        "decision": "reuse" if keep else "restart", "reasons": state["reasons"] + reasons,
        "refresh_runs": len(y), "refresh_spearman": None if math.isnan(rho) else round(rho, 4),
        "refresh_rmse": round(float(np.sqrt(np.mean(residual**2))), 5),
        "refresh_rmse_after_shift": round(float(np.sqrt(np.mean((residual - offset) ** 2))), 5),
        "offset": offset,
    })  # fmt: skip


def training_set(plan: SearchPlan, iteration: int) -> pl.DataFrame:
    """Every run a predictor of ``iteration`` learns from: this search's own, and, when reusing, the parent's own
    runs shifted by the refresh's offset (``iteration`` 0, ``evidence_from`` the parent's key)."""
    own = read_results(plan, iteration)
    state = load(plan)
    if not reusing(state):
        return own
    old = parent_runs(plan, state).with_columns(
        objective=pl.col("objective") + state["offset"], iteration=pl.lit(0), evidence_from=pl.lit(state["parent"]),
        reused=pl.lit(True),
    )  # fmt: skip
    columns = [c for c in own.columns if c.startswith("w_")] + ["objective", "iteration", "fingerprint", "reused"]
    return pl.concat([own, old.select([*columns, "evidence_from"])], how="diagonal_relaxed")


def metadata(state: dict, refresh: bool) -> dict:
    """The decision for an asset's metadata (the refresh's numbers with ``refresh``); no empty values."""
    keys = ("parent", "start", "decision", "prior_shift") + (
        ("refresh_runs", "refresh_spearman", "refresh_rmse", "refresh_rmse_after_shift", "offset") if refresh else ())
    shown = {f"continuation_{k}": state[k] for k in keys if state.get(k) is not None}
    return shown | {"continuation_reasons": "; ".join(state["reasons"])}


def describe(state: dict) -> str:
    """One sentence for reports: how the search started and what it kept."""
    if state["start"] in ("first", "fresh"):
        return "The search started from scratch (" + ("the first of its lineage" if state["start"] == "first"
                                                         else "search_start: fresh") + ")."  # fmt: skip
    head = f"The search continued search `{state['parent']}`"
    if state["start"] == "restart":
        return f"{head} by restarting it: " + "; ".join(state["reasons"]) + "."
    verdict = ("its runs are kept as evidence, shifted by the median residual "
               f"{state['offset']:+.4f}" if reusing(state) else "its runs were dropped: " + "; ".join(state["reasons"]))  # fmt: skip
    return (f"{head}: the old predictor ranked {state['refresh_runs']} refresh runs with Spearman "
            f"{state['refresh_spearman']} (RMSE {state['refresh_rmse']}, {state['refresh_rmse_after_shift']} after the "
            f"level shift); {verdict}.")
