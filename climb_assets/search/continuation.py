"""Continuing a search when the crawl grows, instead of restarting it.

A new wave changes who is in which super-cluster, so it is a new search (its key holds the corpus). When the
lineage (same settings, tokenizer and target) has a finished search, the new one continues it:

1. **Carry the old runs over.** Super-clusters are re-cut at every merge (one fine cluster pruned or kept
   differently moves the Ward tree), but the fine clusters stay (same centroids, or ids kept by Hungarian matching
   across refits). So an old run's mixture is carried into the new super-clusters through them: the weight of old
   super-cluster i goes to new super-cluster j in proportion to the tokens of i's fine clusters that are now in j
   (a fine cluster pruned since loses its share; the rest is renormalised). The old token prior carried the same
   way must be within ``continue_max_prior_shift`` (total variation) of the new one to continue at all.
   Beyond it, Olmix-style mixture reuse (``partial``): the fewest super-clusters whose removal brings the rest within
   the bound (largest moves first; one that appeared always) are searched again, each on its own, while the rest
   keep the ratios of the previous search's pick (carried) as one block; the search varies only those
   dimensions, with proxies in proportion. More than ``continue_max_changed_share`` of the super-clusters moved:
   ``restart`` (a full search), with what appeared, vanished and moved named. Only a vanished share moved (the rest,
   renormalised, within the bound): ``refresh``.
2. **Refresh.** Iteration 1 trains ``continued_proxy_fraction`` of its proxies, at least ``MIN_REFRESH_RUNS``:
   half the top candidates of a predictor fitted on the carried runs, half fresh Dirichlet draws (the range a
   ranking is judged on). That predictor's Spearman on them decides: at ``continue_min_spearman`` or above, and
   unlikely by chance (exact permutation p-value at most ``continue_max_p_value``), ``reuse``; else ``restart``
   (the later iterations search at full size).
3. **Reuse.** The carried runs join every predictor's training set as evidence, shifted by the refresh's median
   residual (the new base and data move every objective's level; the ranking is what carries over), and the later
   iterations share what is left of ``continued_proxy_fraction`` of the search's proxies (at least one each). Only
   the parent's own runs are carried, never its inherited ones, so evidence stays bounded and one shift away from a
   measurement.

The base checkpoint of a continued search is the parent's base trained on for ``base_continue_fraction`` of its
tokens on the new natural mixture (``SearchPlan.parent_base``), whatever the decision. Every decision and its numbers
are in ``continuation.json`` beside the search, on the assets and in MLflow.
"""

from __future__ import annotations

import json
import math

import dagster as dg
import numpy as np
import polars as pl
from scipy import stats

from climb_assets import lake
from climb_assets.search.candidates import SearchSpace, next_iteration_candidates, sample_dirichlet_candidates
from climb_assets.search.keys import SearchPlan
from climb_assets.search.predictor import Predictor, select_predictor
from climb_assets.search.settings import ClimbMixConfig, SearchSettings
from climb_assets.search.state import read_results, weight_columns
from climb_assets.storage import write_json_atomic, write_parquet_atomic

# A refresh big enough for a ranking to pass a 5% chance test without being perfect: on 6 runs, three neighbouring
# pairs swapped (Spearman 0.83) still has p = 0.03, while on 4 runs one swap (0.8) has p = 0.17 and only 1.0 passes.
MIN_REFRESH_RUNS = 6
PERMUTATIONS = 9_999  # exact up to 7 runs (7! = 5,040 orderings); sampled, seeded, above
MIN_CARRIED_MASS = 0.5  # an old run whose mixture lost more than half its weight to pruned clusters is not carried


def write_groups(plan: SearchPlan, groups: list[int], prior: np.ndarray) -> pl.DataFrame:
    """Keep the search's groups with the search: per kept fine cluster, its super-cluster, its tokens and that
    super-cluster's token prior (read under the search's own super-cluster version)."""
    members = pl.scan_parquet(lake.super_cluster_documents_path(plan.home)).drop_nulls("super_cluster_id")
    tokens = pl.scan_parquet(lake.raw_shards_glob(plan.home)).select("doc_id", "n_tokens")
    fine = (
        members.select("doc_id", "cluster_id", "super_cluster_id").join(tokens, on="doc_id", how="left")
        .group_by("super_cluster_id", "cluster_id").agg(n_tokens=pl.col("n_tokens").sum()).collect(engine="streaming")
    )  # fmt: skip
    now = pl.read_parquet(lake.super_cluster_table_path(plan.home), columns=["version"])["version"].unique().to_list()
    if now != [plan.cluster_version]:
        raise dg.Failure(f"the super-clusters moved to {now} while search {plan.search_key} ({plan.cluster_version}) "
                         "started: run it again")  # fmt: skip
    priors = pl.DataFrame({"super_cluster_id": groups, "prior": prior.tolist()})
    table = fine.join(priors, on="super_cluster_id").sort("super_cluster_id", "cluster_id")
    write_parquet_atomic(table, lake.search_groups_path(plan.home, plan.search_key))
    return table


def carry_matrix(old: pl.DataFrame, new: pl.DataFrame) -> tuple[np.ndarray, list[int], list[int]]:
    """T (old super-clusters x new): T[i, j] = the share of old super-cluster i's tokens in fine clusters that are now
    in new super-cluster j. A row sums to less than 1 when some of i's fine clusters are pruned now."""
    old_groups = sorted(old["super_cluster_id"].unique().to_list())
    new_groups = sorted(new["super_cluster_id"].unique().to_list())
    joined = old.select("cluster_id", "n_tokens", old_group="super_cluster_id").join(
        new.select("cluster_id", new_group="super_cluster_id"), on="cluster_id", how="left")  # fmt: skip
    T = np.zeros((len(old_groups), len(new_groups)))
    totals = np.zeros(len(old_groups))
    row, column = {g: i for i, g in enumerate(old_groups)}, {g: j for j, g in enumerate(new_groups)}
    for old_group, new_group, n in joined.select("old_group", "new_group", "n_tokens").iter_rows():
        totals[row[old_group]] += n
        if new_group is not None:
            T[row[old_group], column[new_group]] += n
    return T / np.maximum(totals, 1)[:, None], old_groups, new_groups


def carry(weights: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Old mixtures (rows over the old super-clusters) in the new ones, renormalised; and the share each kept."""
    carried = np.atleast_2d(weights) @ T
    kept = carried.sum(axis=1)
    return carried / np.maximum(kept, 1e-12)[:, None], kept


def prior_of(table: pl.DataFrame) -> tuple[list[int], np.ndarray]:
    per_group = table.group_by("super_cluster_id").agg(pl.col("prior").first()).sort("super_cluster_id")
    return per_group["super_cluster_id"].to_list(), per_group["prior"].to_numpy()


def structure_change(old: pl.DataFrame, new: pl.DataFrame, carry_T: tuple | None = None) -> dict:
    """How far the super-clusters moved between two searches: the total variation between the old token prior
    carried into the new super-clusters and the new prior, the old mass lost to pruned clusters counted as moved;
    the old mass kept; and the super-clusters no old one feeds (appeared) or that feed no new one (vanished)."""
    T, old_groups, new_groups = carry_T or carry_matrix(old, new)
    _, old_prior = prior_of(old)
    _, new_prior = prior_of(new)
    carried = old_prior @ T
    return {
        "prior_shift": float(0.5 * (np.abs(carried - new_prior).sum() + (1 - carried.sum()))),
        "old_prior_kept": float(carried.sum()),
        "appeared": [g for j, g in enumerate(new_groups) if T[:, j].sum() == 0],
        "vanished": [g for i, g in enumerate(old_groups) if T[i].sum() == 0],
        "super_clusters_recut": old_groups != new_groups or not np.allclose(T, np.eye(len(old_groups))),
    }


def start_search(plan: SearchPlan, groups: list[int], prior: np.ndarray) -> dict:
    """Iteration 1 decides how the search starts: ``first`` (no finished search in the lineage), ``fresh`` (asked
    for), ``restart`` (the super-clusters moved too far), ``partial`` (search again only those that moved) or
    ``refresh`` (continue if the refresh's runs say so)."""
    search = plan.search
    new = write_groups(plan, groups, prior)
    parent = plan.parent_search_key
    state = {"parent": parent, "lineage": plan.lineage_key, "reasons": [],
             "base_continues": plan.parent_base[0] if plan.parent_base else None}  # fmt: skip
    if parent is None:
        return save(plan, state | {"start": "fresh" if search.search_start == "fresh" else "first"})
    finished = lake.lineage_dir(plan.home, plan.lineage_key) / "finished" / f"{parent}.json"
    old_groups = lake.search_groups_path(plan.home, parent)
    if not (finished.exists() and old_groups.exists()):
        return save(plan, state | {"start": "restart", "reasons": [f"search {parent} left no groups or finish record"]})
    state["parent_iterations"] = json.loads(finished.read_text())["iterations"]
    old = pl.read_parquet(old_groups)
    carry_T = carry_matrix(old, new)
    change = structure_change(old, new, carry_T)
    state |= {k: round(v, 4) if isinstance(v, float) else v for k, v in change.items()}
    T, _, new_groups = carry_T
    new_prior = prior_of(new)[1]
    start, moved, state["reasons"] = structure_decision(change, prior_of(old)[1] @ T, new_prior, new_groups, search)
    if start == "partial":
        return save(plan, state | {"start": start, **frozen_block(plan, state, old, carry_T, moved, new_prior)})
    if start == "refresh":
        write_evidence(plan, state, carry_T)
    return save(plan, state | {"start": start})


def structure_decision(change: dict, carried: np.ndarray, prior: np.ndarray, groups: list[int],
                       search: SearchSettings) -> tuple[str, list[int], list[str]]:  # fmt: skip
    """``refresh`` (the priors moved within the bound, or only by a vanished share), ``partial`` (the moved
    super-clusters, at most ``continue_max_changed_share`` of them, are searched again) or ``restart``; the moved
    super-clusters' indices and the reasons."""
    bound = search.continue_max_prior_shift
    if change["prior_shift"] <= bound:
        return "refresh", [], []
    moved = moved_groups(carried, prior, bound)
    named = [f"{name}: {change[name]}" for name in ("appeared", "vanished") if change[name]]
    named += [f"moved: {[groups[j] for j in moved]}"] if moved else []
    reasons = [f"the super-clusters moved by {change['prior_shift']:.3f} (total variation of the old prior carried "
               f"through the fine clusters) > continue_max_prior_shift {bound:g}"
               + (f" ({'; '.join(named)})" if named else "")]  # fmt: skip
    if not moved:
        return "refresh", [], reasons + ["only a vanished share moved: the rest, renormalised, is within the bound"]
    if len(moved) > search.continue_max_changed_share * len(groups) or len(moved) == len(groups):
        return "restart", moved, reasons + [f"{len(moved)} of {len(groups)} super-clusters moved > "
                                            f"continue_max_changed_share {search.continue_max_changed_share:g}"]  # fmt: skip
    return "partial", moved, reasons


def moved_groups(carried: np.ndarray, prior: np.ndarray, bound: float) -> list[int]:
    """The fewest new super-clusters (indices) whose removal leaves the rest's carried and new priors, each
    renormalised, within ``bound`` (total variation): largest moves first; one nothing carries into (appeared)
    always. None when only mass lost to vanished or pruned clusters moved the priors apart."""
    share = carried / max(carried.sum(), 1e-12)
    moved = [j for j in range(len(prior)) if carried[j] == 0]

    def rest_shift() -> float:
        rest = np.setdiff1d(np.arange(len(prior)), moved)
        c, p = share[rest], prior[rest]
        return 0.5 * float(np.abs(c / max(c.sum(), 1e-12) - p / max(p.sum(), 1e-12)).sum()) if rest.size else 0.0

    for j in np.argsort(-np.abs(share - prior), kind="stable"):
        if rest_shift() <= bound:
            break
        if j not in moved:
            moved.append(int(j))
    return sorted(moved)


def parent_pick(plan: SearchPlan, state: dict, old: pl.DataFrame) -> np.ndarray:
    """The parent's answer over its super-clusters, picked as ClimbMix picks by default: its final predictor's best
    mixture of a fresh pool, within the weights its own runs gave each super-cluster, in its own search space."""
    groups, prior = prior_of(old)
    recorded = lake.search_continuation_path(plan.home, state["parent"])  # absent: a search older than continuations
    space = search_space(json.loads(recorded.read_text()) if recorded.exists() else {"start": "first"}, groups)
    final = lake.search_iteration_dir(plan.home, state["parent"], state["parent_iterations"]) / "predictor"
    runs = parent_runs(plan, state)
    config = ClimbMixConfig()
    return space.best_mixture(Predictor.load(final), prior, runs.select(weight_columns(groups)).to_numpy(),
                              runs["objective"].to_numpy(), config.seed, pool_size=config.pool_size,
                              top_k=config.top_k_average)[0]


def frozen_block(plan: SearchPlan, state: dict, old: pl.DataFrame, carry_T: tuple, moved: list[int],
                 prior: np.ndarray) -> dict:  # fmt: skip
    """A partial restart's search space: the moved super-clusters searched again, the others held at the ratios of
    the parent's pick carried into these super-clusters (as Olmix freezes the previous mixture); the new prior's
    ratios where that pick gave the block nothing."""
    T, _, new_groups = carry_T
    pick = parent_pick(plan, state, old)
    answer = carry(pick, T)[0][0]
    frozen = [j for j in range(len(new_groups)) if j not in moved]
    block = answer[frozen]
    if block.sum() <= 0:
        block = prior[frozen]
    return {"searched_groups": [new_groups[j] for j in moved], "frozen_groups": [new_groups[j] for j in frozen],
            "frozen_ratios": (block / block.sum()).tolist(), "parent_pick": pick.round(6).tolist()}  # fmt: skip


def search_space(state: dict, groups: list[int]) -> SearchSpace:
    """What the search varies: every super-cluster, or after a partial restart the moved ones and one block."""
    if state["start"] != "partial":
        return SearchSpace(len(groups))
    index = {g: j for j, g in enumerate(groups)}
    return SearchSpace(len(groups), free=tuple(index[g] for g in state["searched_groups"]),
                       frozen=tuple(index[g] for g in state["frozen_groups"]), ratios=tuple(state["frozen_ratios"]))  # fmt: skip


def write_evidence(plan: SearchPlan, state: dict, carry_T: tuple) -> None:
    """The parent's own runs carried into this search's super-clusters (those that kept at least MIN_CARRIED_MASS
    of their weight), and a predictor fitted on them: it picks half the refresh and is judged by it."""
    T, old_groups, new_groups = carry_T
    runs = parent_runs(plan, state)
    carried, kept = carry(runs.select(weight_columns(old_groups)).to_numpy(), T)
    columns = weight_columns(new_groups)
    evidence = pl.DataFrame(carried, schema=columns, orient="row").with_columns(
        objective=runs["objective"], fingerprint=runs["fingerprint"], carried_mass=pl.Series(kept),
    ).filter(pl.col("carried_mass") >= MIN_CARRIED_MASS)  # fmt: skip
    write_parquet_atomic(evidence, lake.search_evidence_dir(plan.home, plan.search_key) / "runs.parquet")
    state["evidence_runs"], state["evidence_dropped"] = evidence.height, runs.height - evidence.height
    search = plan.search
    predictor, _ = select_predictor(evidence.select(columns).to_numpy(), evidence["objective"].to_numpy(), search.seed,
                                    k=search.predictor_folds, params=search.predictor_params(), feature_names=columns,
                                    kinds=search.predictor_kinds())  # fmt: skip
    predictor.save(lake.search_evidence_dir(plan.home, plan.search_key) / "predictor")


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


def reasons(state: dict) -> str:
    """Why the search restarted (the structure), or dropped the carried runs (the refresh)."""
    return "; ".join(state["reasons"] + state.get("refresh_reasons", []))


def continued_schedule(schedule: list[int], fraction: float) -> list[int]:
    """Proxies per iteration of a continued search: ``fraction`` of the whole schedule's, the refresh first (at least
    ``MIN_REFRESH_RUNS``, to judge a ranking), the rest shared by the later iterations in proportion to their
    schedule (at least one each). The paper's 64/32/16 at 0.25 gives 16/8/4; the demo's 16/8/8 gives 6/1/1."""
    refresh = min(schedule[0], max(MIN_REFRESH_RUNS, math.ceil(schedule[0] * fraction)))
    later = np.asarray(schedule[1:])
    if not later.size:
        return [refresh]
    left = max(len(later), math.ceil(sum(schedule) * fraction) - refresh)
    bounds = np.rint(left * np.cumsum(later) / later.sum()).astype(int)
    shares = np.diff(bounds, prepend=0)
    return [refresh] + [int(n) for n in np.clip(shares, 1, later)]


def partial_schedule(schedule: list[int], searched: int, groups: int) -> list[int]:
    """Proxies per iteration of a partial restart: the schedule scaled by the dimensions it varies (the searched
    super-clusters and the block) over all of them, as Olmix sizes a swarm by the domains it varies; iteration 1 at
    least MIN_REFRESH_RUNS (a first predictor to fit), the later ones at least one each."""
    share = (searched + 1) / groups
    first = min(schedule[0], max(MIN_REFRESH_RUNS, math.ceil(schedule[0] * share)))
    return [first] + [min(n, max(1, math.ceil(n * share))) for n in schedule[1:]]


def proxy_count(state: dict, schedule: list[int], iteration: int, fraction: float) -> int:
    """How many proxies an iteration trains: the schedule's, its share of the dimensions after a partial restart, or
    the continued share while continuing."""
    if state["start"] == "partial":
        searched = len(state["searched_groups"])
        return partial_schedule(schedule, searched, searched + len(state["frozen_groups"]))[iteration - 1]
    continuing = state["start"] == "refresh" and (iteration == 1 or reusing(state))
    return continued_schedule(schedule, fraction)[iteration - 1] if continuing else schedule[iteration - 1]


def proxies(plan: SearchPlan, iteration: int) -> int:
    iterations = max(iteration, len(plan.search.proxies_per_iteration))  # the last count repeats past the list
    schedule = [plan.search.proxies(k) for k in range(1, iterations + 1)]
    return proxy_count(load(plan), schedule, iteration, plan.search.continued_proxy_fraction)


def parent_runs(plan: SearchPlan, state: dict) -> pl.DataFrame:
    """The parent's own proxy runs (never those it inherited): every iteration's results.parquet."""
    paths = [lake.search_iteration_dir(plan.home, state["parent"], k) / "results.parquet"
             for k in range(1, state["parent_iterations"] + 1)]  # fmt: skip
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


def evidence_runs(plan: SearchPlan) -> pl.DataFrame:
    return pl.read_parquet(lake.search_evidence_dir(plan.home, plan.search_key) / "runs.parquet")


def evidence_predictor(plan: SearchPlan) -> Predictor:
    return Predictor.load(lake.search_evidence_dir(plan.home, plan.search_key) / "predictor")


def first_candidates(plan: SearchPlan, prior: np.ndarray, rng: np.random.Generator,
                     groups: list[int]) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Iteration 1's weights: Dirichlet draws (in the search's space); when refreshing, half of them are the carried
    runs' predictor's top candidates under the new prior instead (where the answer is), after the draws (the range a
    ranking is judged on, and the random baseline's first runs)."""
    state = load(plan)
    n = proxies(plan, 1)
    drawn = n - n // 2 if state["start"] == "refresh" else n
    save(plan, state | {"random_candidates": drawn})
    space = search_space(state, groups)
    weights = space.expand(sample_dirichlet_candidates(space.reduce(prior), drawn, rng))
    if state["start"] == "refresh":
        runs, predictor = evidence_runs(plan), evidence_predictor(plan)
        evaluated = runs.select([c for c in runs.columns if c.startswith("w_")]).to_numpy()
        top = next_iteration_candidates(predictor, prior, n // 2, rng, pool_size=plan.search.pool_size, evaluated=evaluated)
        weights = np.vstack([weights, top])
    return weights, {"random_candidates": drawn}


def chance_of_ranking(predicted: np.ndarray, y: np.ndarray) -> float:
    """One-sided p-value of the Spearman correlation: the share of orderings of the runs that rank at least as well
    (all of them when there are at most 7 runs)."""
    result = stats.permutation_test((predicted,), lambda x: stats.spearmanr(x, y).statistic, vectorized=False,
                                    permutation_type="pairings", alternative="greater", n_resamples=PERMUTATIONS,
                                    random_state=0)  # fmt: skip
    return float(result.pvalue)


def refresh_verdict(predicted: np.ndarray, y: np.ndarray, min_spearman: float, max_p_value: float) -> dict:
    """Do the carried runs still rank new ones? Their predictor's Spearman on the refresh runs and its chance, its
    error before and after the level shift (the median residual), and the decision."""
    residual = y - predicted
    offset = float(np.median(residual))
    ranked = np.ptp(predicted) > 0 and np.ptp(y) > 0
    rho = float(stats.spearmanr(predicted, y).statistic) if ranked else float("nan")
    p_value = chance_of_ranking(predicted, y) if ranked else 1.0
    dropped_because = []
    if not rho >= min_spearman:  # nan: no ranking, never kept
        dropped_because.append(f"the carried runs' predictor ranks the {len(y)} refresh runs with Spearman {rho:.3f} "
                               f"< continue_min_spearman {min_spearman:g}")  # fmt: skip
    if p_value > max_p_value:
        dropped_because.append(f"a ranking as good as Spearman {rho:.3f} on {len(y)} runs happens by chance with "
                               f"p = {p_value:.3f} > continue_max_p_value {max_p_value:g}")  # fmt: skip
    return {
        "decision": "restart" if dropped_because else "reuse", "refresh_reasons": dropped_because,
        "refresh_runs": len(y), "refresh_spearman": None if math.isnan(rho) else round(rho, 4),
        "refresh_p_value": round(p_value, 4),
        "refresh_rmse": round(float(np.sqrt(np.mean(residual**2))), 5),
        "refresh_rmse_after_shift": round(float(np.sqrt(np.mean((residual - offset) ** 2))), 5),
        "offset": offset,
    }  # fmt: skip


def judge_refresh(plan: SearchPlan, groups: list[int]) -> dict:
    """After iteration 1's runs, the refresh's verdict (recomputed from the runs, so a rerun decides the same)."""
    state = load(plan)
    if state["start"] != "refresh":
        return state
    results = read_results(plan, 1)
    predicted = evidence_predictor(plan).predict(results.select(weight_columns(groups)).to_numpy())
    verdict = refresh_verdict(predicted, results["objective"].to_numpy(), plan.search.continue_min_spearman,
                              plan.search.continue_max_p_value)  # fmt: skip
    return save(plan, state | verdict)


def training_set(plan: SearchPlan, iteration: int) -> pl.DataFrame:
    """Every run a predictor of ``iteration`` learns from: this search's own, and, when reusing, the parent's own
    runs carried into this search's super-clusters and shifted by the refresh's offset (``iteration`` 0,
    ``evidence_from`` the parent's key)."""
    own = read_results(plan, iteration)
    state = load(plan)
    if not reusing(state):
        return own
    old = evidence_runs(plan).with_columns(
        objective=pl.col("objective") + state["offset"], iteration=pl.lit(0, pl.Int32),
        evidence_from=pl.lit(state["parent"]), reused=pl.lit(True),
    )  # fmt: skip
    columns = [c for c in own.columns if c.startswith("w_")] + ["objective", "iteration", "fingerprint", "reused"]
    return pl.concat([own, old.select([*columns, "evidence_from"])], how="diagonal_relaxed")


def metadata(state: dict, refresh: bool) -> dict:
    """The decision for an asset's metadata (the refresh's numbers with ``refresh``); no empty values."""
    keys = ("parent", "start", "decision", "prior_shift", "old_prior_kept", "evidence_runs", "evidence_dropped",
            "searched_groups", "frozen_groups") + (
        ("refresh_runs", "refresh_spearman", "refresh_p_value", "refresh_rmse", "refresh_rmse_after_shift", "offset")
        if refresh else ())
    shown = {f"continuation_{k}": state[k] for k in keys if state.get(k) is not None}
    return shown | {"continuation_reasons": reasons(state)}


def describe(state: dict) -> str:
    """One sentence for reports: how the search started and what it kept."""
    if state["start"] in ("first", "fresh"):
        return "The search started from scratch (" + ("the first of its lineage" if state["start"] == "first"
                                                         else "search_start: fresh") + ")."  # fmt: skip
    head = f"The search continued search `{state['parent']}`" + (
        f" (its base trained on from base `{state['base_continues']}`)" if state.get("base_continues") else "")
    if state["start"] == "restart":
        return f"{head} by restarting it: {reasons(state)}."
    if state["start"] == "partial":
        return (f"{head} by searching again only super-clusters {state['searched_groups']}: {reasons(state)}; the "
                f"other {len(state['frozen_groups'])} were held as one block at the ratios of its pick.")
    verdict = (f"they are kept as evidence, shifted by the median residual {state['offset']:+.4f}" if reusing(state)
               else f"they were dropped: {reasons(state)}")  # fmt: skip
    return (f"{head}: {state['evidence_runs']} of its runs carried into these super-clusters (prior moved by "
            f"{state['prior_shift']}); their predictor ranked {state['refresh_runs']} refresh runs with Spearman "
            f"{state['refresh_spearman']} (p = {state['refresh_p_value']} by chance; RMSE {state['refresh_rmse']}, "
            f"{state['refresh_rmse_after_shift']} after the level shift); {verdict}.")
