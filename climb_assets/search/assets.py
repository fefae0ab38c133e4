"""The CLIMB search as assets: a tokenizer, token files and a base checkpoint, then per iteration k
``iteration_k/mixture_candidates → iteration_k/proxy_results → iteration_k/predictor``.

Each iteration is its own set of assets, so the graph shows the loop unrolled and any iteration can be re-run or
extended alone. Every cached unit of work is keyed by a fingerprint of what determined it (``search/keys.py``):
the tokenizer, the base checkpoint and every proxy run live in content-addressed files, and a search's candidates,
results and predictors live under the search's own key (cluster version + every setting + input hashes), so a
re-cluster or a settings change starts a new search instead of reading the old one's results.
"""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from climb_assets import lake
from climb_assets.devices import device_lease, gpu_slots
from climb_assets.ingest.assets import shard_partitions
from climb_assets.lm.proxy import run_proxy
from climb_assets.lm.token_files import (
    ensure_shard_tokens,
    token_dir,
    tokenize_shard,
    tokenizer_sha256,
    untokenized_shards,
)
from climb_assets.lm.tokenizer import load_tokenizer, train_bpe_tokenizer
from climb_assets.lm.train import load_checkpoint, save_checkpoint
from climb_assets.metadata import markdown_table
from climb_assets.resources import ClimbHomeResource
from climb_assets.search import continuation
from climb_assets.search.candidates import next_iteration_candidates, token_prior
from climb_assets.search.fanout import RunLog, TrainingRun, run_log, training_fan_out
from climb_assets.search.keys import ALGORITHM_VERSIONS, SearchPlan, fingerprint
from climb_assets.search.predictor import Predictor, select_predictor
from climb_assets.search.reports import base_cluster_losses, cluster_loss_report, cluster_loss_table, search_plot
from climb_assets.search.settings import SearchSettings, result_settings_of
from climb_assets.search.state import search_inputs, weight_columns
from climb_assets.search.tracking import (
    MlflowTracking,
    label_params,
    log_lightgbm_model,
    log_run,
    run_url,
    tag_run,
)
from climb_assets.storage import atomic_path, exclusive_lock, write_json_atomic, write_parquet_atomic
from climb_assets.tags import GPU_POOL, GPU_TAGS


def train_proxy_tokenizer(plan: SearchPlan):
    """Train on a bounded sample of the kept documents; returns the tokenizer and what it was trained on."""
    search = plan.search
    members = pl.read_parquet(lake.super_cluster_documents_path(plan.home), columns=["doc_id", "super_cluster_id"]).drop_nulls()
    sample = members.sample(min(search.tokenizer_sample_docs, members.height), seed=search.seed)
    texts = (
        pl.scan_parquet(lake.raw_shards_glob(plan.home)).select("doc_id", "text")
        .join(sample.lazy(), on="doc_id").sort("doc_id").collect()["text"].to_list()
    )  # fmt: skip
    tokenizer = train_bpe_tokenizer(texts, vocab_size=search.tokenizer_vocab_size)
    encoded = tokenizer.encode_batch(texts[:500])
    bytes_per_token = sum(len(t.encode()) for t in texts[:500]) / max(1, sum(len(e) for e in encoded))
    return tokenizer, {
        "trained_on_docs": len(texts),
        "sample_doc_ids_sha256": hashlib.sha256("\n".join(sorted(sample["doc_id"])).encode()).hexdigest(),
        "cluster_version": plan.cluster_version,
        "bytes_per_token": round(bytes_per_token, 3),
    }


def waiting_in(context) -> Callable[[str], None]:
    """An ``on_wait`` that tells the step's log who holds the work it waits for."""
    return lambda pid: context.log.info(f"another process (pid {pid}) is making this; waiting for it to finish")


def ensure_proxy_tokenizer(plan: SearchPlan, on_wait: Callable[[str], None] | None = None):
    """The tokenizer of ``plan``, its record and whether it was reused: trained now only if missing, by one process
    at a time (two searches sharing it, or a retry while the first attempt lives, wait and reuse the first's)."""
    path = plan.tokenizer_path
    record_path = lake.tokenizer_record_path(plan.home, plan.tokenizer_fingerprint)
    with exclusive_lock(path.with_suffix(".lock"), on_wait=on_wait):
        reused = path.exists() and record_path.exists()
        if reused:
            return load_tokenizer(path), json.loads(record_path.read_text()), True
        tokenizer, record = train_proxy_tokenizer(plan)
        with atomic_path(path) as tmp:
            tokenizer.save(tmp)
        write_json_atomic(record, record_path)
        return tokenizer, record, False


def token_files_metadata(directory: Path, tokenizer_sha: str, meta: dict, tokenized: bool, seconds: float) -> dict:
    """One shard's ``proxy_token_files`` partition as the UI shows it."""
    return {
        "tokenized": tokenized,
        "rows": meta["rows"],
        "tokens": meta["tokens"],
        "dtype": meta["dtype"],
        "tokenizer_sha256": tokenizer_sha,
        "raw_sha256": meta["raw_sha256"],
        "seconds": round(seconds, 2),
        "path": dg.MetadataValue.path(str(directory)),
    }


def token_files_version(tokenizer_sha: str, meta: dict) -> str:
    """A shard's token files are determined by the tokenizer and the raw shard's bytes, nothing else."""
    return f"{tokenizer_sha[:16]}-{meta['raw_sha256'][:16]}"


def tokenize_missing_shards(context, plan: SearchPlan, tokenizer) -> list[str]:
    """Tokenize every raw shard the per-shard runs have not (the first search, or a shard that landed since) and
    record each as its ``proxy_token_files`` partition; one step does it before any proxy reads them, so no two proxy
    processes tokenize the same shard."""
    sha, directory = tokenizer_sha256(tokenizer), token_dir(plan.home, tokenizer)
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for shard in untokenized_shards(plan.home, directory):
        started = time.perf_counter()
        meta = tokenize_shard(lake.raw_shards_dir(plan.home) / f"{shard}.parquet", tokenizer, directory)
        made.append(shard)
        context.log_event(dg.AssetMaterialization(
            asset_key="proxy_token_files", partition=shard,
            metadata=token_files_metadata(directory, sha, meta, True, time.perf_counter() - started),
            tags={DATA_VERSION_TAG: token_files_version(sha, meta)},
        ))  # fmt: skip
    return made


@dg.asset(group_name="search", deps=["quality_filtered_clusters"], kinds={"tokenizers"},
          code_version=ALGORITHM_VERSIONS["tokenizer"])  # fmt: skip
def proxy_tokenizer(context: dg.AssetExecutionContext, climb: ClimbHomeResource,
                    search: SearchSettings) -> dg.MaterializeResult:  # fmt: skip
    """A byte-level BPE trained offline on a sample of the kept documents, shared by every proxy. Trained once per
    tokenizer settings and kept across crawl waves and re-clusterings, so a new wave tokenizes only its new shards;
    ``tokenizer_generation`` asks for a new one. Before the search goes on, every shard without token files for it
    is tokenized here (recorded as its ``proxy_token_files`` partition)."""
    plan = SearchPlan(climb.home(), search)
    started = time.perf_counter()
    tokenizer, record, reused = ensure_proxy_tokenizer(plan, waiting_in(context))
    tokenized = tokenize_missing_shards(context, plan, tokenizer)
    path = plan.tokenizer_path
    return dg.MaterializeResult(
        metadata={
            "reused": reused,
            "fingerprint": plan.tokenizer_fingerprint,
            "vocab_size": tokenizer.vocab_size,
            "trained_on_docs": record["trained_on_docs"],
            "trained_under_cluster_version": record["cluster_version"],
            "bytes_per_token": record["bytes_per_token"],
            "shards_tokenized_here": len(tokenized),
            "seconds": round(time.perf_counter() - started, 2),
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(plan.tokenizer_sha),
    )


@dg.asset(group_name="search", partitions_def=shard_partitions, deps=["proxy_tokenizer", "raw_shards"],
          kinds={"numpy"}, code_version=ALGORITHM_VERSIONS["token_files"])  # fmt: skip
def proxy_token_files(context: dg.AssetExecutionContext, climb: ClimbHomeResource,
                      search: SearchSettings) -> dg.MaterializeResult:  # fmt: skip
    """One raw shard's memory-mapped token files under the kept proxy tokenizer
    (``lake/tokens/<tokenizer sha256[:16]>/<shard>.bin|.idx``), one partition per shard, so a new crawl wave
    tokenizes its new shards only (``climb crawl`` runs ``tokenize_shard_job`` for each). Every row is tokenized:
    membership changes with every re-clustering, a shard's text does not."""
    plan = SearchPlan(climb.home(), search)
    if not plan.tokenizer_path.exists():
        raise dg.Failure(f"no proxy tokenizer {plan.tokenizer_fingerprint} for these settings yet: materialize "
                         "proxy_tokenizer first (search_job does, and tokenizes every shard with it)")  # fmt: skip
    tokenizer = load_tokenizer(plan.tokenizer_path)
    sha, directory = tokenizer_sha256(tokenizer), token_dir(plan.home, tokenizer)
    started = time.perf_counter()
    meta, tokenized = ensure_shard_tokens(plan.home, tokenizer, context.partition_key, directory)
    return dg.MaterializeResult(
        metadata=token_files_metadata(directory, sha, meta, tokenized, time.perf_counter() - started),
        data_version=dg.DataVersion(token_files_version(sha, meta)),
    )


def ensure_base_checkpoint(plan: SearchPlan, slots: int, on_wait: Callable[[str], None] | None = None):
    """The base checkpoint's record, whether it was reused, and the device lease it trained on ({} if reused).

    Trained by one process at a time per key: two searches that share a base (or a retry while the first attempt
    lives) wait and reuse it, so the file is written once and every proxy that keys on its hash reads those bytes.
    """
    path = plan.base_path
    record_path = path.with_suffix(".json")  # how it was made; kept out of the checkpoint so its bytes (and hash)
    with exclusive_lock(path.with_suffix(".lock"), on_wait=on_wait):  # depend on the weights alone
        if path.exists() and record_path.exists():
            return json.loads(record_path.read_text()), True, {}
        tokenizer, corpus = search_inputs(plan)
        parent = plan.parent_base  # a continued search trains the previous base on, on the new natural mixture
        settings = plan.search.base_continue_settings() if parent else plan.search.base_settings()
        init_state = load_checkpoint(parent[1])[0].state_dict() if parent else None
        with device_lease(plan.home, slots) as lease:  # the device and threads are speed-only: the key stays the same
            pinned = replace(settings, device=lease.device, num_threads=settings.num_threads or lease.threads)
            outcome, model = run_proxy(corpus, tokenizer, corpus.natural_weights(), pinned,
                                       plan.search.target(plan.home), seed=plan.search.seed,
                                       init_state=init_state)  # fmt: skip
        save_checkpoint(path, model, extra={"settings": result_settings_of(settings), "fingerprint": plan.base_key})
        record = {"metrics": outcome.metrics, "tokens_seen": outcome.tokens_seen, "seconds": outcome.seconds,
                  "fingerprint": plan.base_key, "cluster_bpb": outcome.cluster_bpb,
                  "tokenizer": plan.tokenizer_fingerprint, "continues": parent[0] if parent else None}  # fmt: skip
        write_json_atomic(record, record_path)
        if outcome.cluster_bpb:
            write_parquet_atomic(cluster_loss_table(plan, {"base": outcome.cluster_bpb}), plan.base_cluster_loss_path)
        return record, False, lease.metadata()


@dg.asset(group_name="search", deps=[proxy_tokenizer, proxy_token_files], pool=GPU_POOL, op_tags=GPU_TAGS,
          kinds={"pytorch"}, code_version=ALGORITHM_VERSIONS["proxy"])  # fmt: skip
def proxy_base_checkpoint(context: dg.AssetExecutionContext, climb: ClimbHomeResource,
                          search: SearchSettings) -> dg.MaterializeResult:  # fmt: skip
    """One proxy trained on the natural mixture; every proxy continues from it, as the paper's proxies do
    (cuts the cost and the variance of each proxy run). Reused when its fingerprint is unchanged."""
    plan = SearchPlan(climb.home(), search)
    if plan.base_path is None:
        return dg.MaterializeResult(metadata={"enabled": False}, data_version=dg.DataVersion("disabled"))
    path = plan.base_path
    extra, reused, lease_metadata = ensure_base_checkpoint(plan, gpu_slots(context.instance), waiting_in(context))
    return dg.MaterializeResult(
        metadata={
            "enabled": True,
            "reused": reused,
            "fingerprint": plan.base_key,
            "continues_base": extra.get("continues") or "",  # empty: trained from scratch
            "tokens": extra.get("tokens_seen", 0),
            "seconds": round(extra.get("seconds", 0.0), 1),
            "path": dg.MetadataValue.path(str(path)),
            **{f"target_{k}": round(v, 4) for k, v in extra.get("metrics", {}).items()},
            **cluster_loss_report(plan.base_cluster_loss_path),
            **lease_metadata,
        },
        data_version=dg.DataVersion(plan.base_sha),
    )


def _candidate_frame(iteration: int, groups: list[int], weights: np.ndarray, version: str) -> pl.DataFrame:
    frame = pl.DataFrame(weights, schema=weight_columns(groups), orient="row")
    ids = [f"it{iteration}-c{j:03d}" for j in range(len(weights))]
    return frame.insert_column(0, pl.Series("candidate_id", ids)).with_columns(
        iteration=pl.lit(iteration), cluster_version=pl.lit(version)
    )


def propose_candidates(plan: SearchPlan, iteration: int) -> tuple[pl.DataFrame, dict]:
    """Iteration 1: Dirichlet around the token prior (half the old search's best when continuing it). Later:
    exploit the previous predictor, then explore. Both in the search's space (after a partial restart: the moved
    super-clusters and one block at the parent's ratios)."""
    search = plan.search
    _, corpus = search_inputs(plan)
    prior = token_prior(corpus.tokens_per_group())
    rng = np.random.default_rng([search.seed, iteration])
    info = {"groups": len(corpus.groups), "prior": [round(float(p), 4) for p in prior], "search_key": plan.search_key}
    if iteration == 1:
        state = continuation.start_search(plan, corpus.groups, prior)
        weights, extra = continuation.first_candidates(plan, prior, rng, corpus.groups)
        info |= {"n": len(weights), **continuation.metadata(state, refresh=False), **extra}
    else:
        n = continuation.proxies(plan, iteration)
        predictor = Predictor.load(plan.predictor_path(iteration - 1))
        space = continuation.search_space(continuation.load(plan), corpus.groups)
        done = continuation.training_set(plan, iteration - 1)
        evaluated = space.reduce(done.select(weight_columns(corpus.groups)).to_numpy())
        exploit = evaluated.max(axis=0) if search.acquisition == "exploit_first" else None  # ClimbMix's bounds
        weights = space.expand(next_iteration_candidates(space.scoring(predictor), space.reduce(prior), n, rng,
                                                         pool_size=search.pool_size, evaluated=evaluated,
                                                         exploit_within=exploit))  # fmt: skip
        predicted = predictor.predict(weights)
        info |= {"n": n, "pool_size": search.pool_size, "top": max(n**2, 128), "acquisition": search.acquisition,
                 "mean_predicted_objective": float(predicted.mean()), "first_predicted_objective": float(predicted[0])}
    return _candidate_frame(iteration, corpus.groups, weights, plan.cluster_version), info


def iteration_run_log(plan: SearchPlan, tracking: MlflowTracking, iteration: int, context) -> RunLog:
    """Where the iteration's proxy runs report: children of the iteration's parent run of this search (labels and
    proxy settings logged on it once; a new search key gets new parent runs)."""
    sink = run_log(plan, tracking, context, parent=f"iteration-{iteration}", tags={"climb.iteration": str(iteration)})
    if not sink.client.get_run(sink.parent).data.params:
        _, corpus = search_inputs(plan)
        log_run(sink.client, sink.parent, params=label_params(corpus.labels) | plan.search.proxy_settings().params())
    return sink


def candidate_runs(plan: SearchPlan, iteration: int) -> list[TrainingRun]:
    """The iteration's proxy runs, one per candidate, all continuing from the base checkpoint."""
    _, corpus = search_inputs(plan)
    candidates = pl.read_parquet(plan.candidates_path(iteration))
    settings = plan.search.proxy_settings()
    seed = plan.search.proxy_seed()
    columns = weight_columns(corpus.groups)
    return [
        TrainingRun(row["candidate_id"], corpus.groups, np.array([row[c] for c in columns]), settings, seed, plan.base_path)
        for row in candidates.iter_rows(named=True)
    ]


def result_values(record: dict) -> dict[str, float]:
    """A run's metrics and per-super-cluster loss as result columns."""
    return {**{k: float(v) for k, v in record["metrics"].items()},
            **{f"cluster_bpb_{g}": float(v) for g, v in record.get("cluster_bpb", {}).items()}}  # fmt: skip


def collect_proxy_results(plan: SearchPlan, sink: RunLog, iteration: int, records: list[dict]) -> pl.DataFrame:
    """The iteration's results table, one run per candidate in candidate order, written where the confirmations,
    the predictor and later iterations read it."""
    rows = pl.DataFrame([
        {"candidate_id": r["name"], **result_values(r), "seconds": r["seconds"], "tokens_seen": r["tokens_seen"],
         "fingerprint": r["fingerprint"], "reused": r["reused"], "mlflow_run_id": r["mlflow_run_id"]}
        for r in records
    ])  # fmt: skip
    candidates = pl.read_parquet(plan.candidates_path(iteration))
    results = candidates.join(rows, on="candidate_id", how="inner", maintain_order="left")
    if results.height != candidates.height:
        raise dg.Failure(f"{candidates.height - results.height} candidates of iteration {iteration} have no result")
    results = results.with_columns(seeds=pl.lit(1), objective_first_seed=pl.col("objective"),
                                   confirm_fingerprint=pl.lit(None, pl.String))  # fmt: skip
    tag_run(sink.client, sink.parent, {"climb.proxies": str(results.height)})
    write_parquet_atomic(results, plan.results_path(iteration))
    return results


CONFIRM_SUFFIX = "-confirm"


def confirmation_runs(plan: SearchPlan, iteration: int) -> list[TrainingRun]:
    """The iteration's best ``confirm_top`` proxies (by their first run) again, with the confirmation seed."""
    search = plan.search
    if not search.confirm_top:
        return []
    _, corpus = search_inputs(plan)
    columns = weight_columns(corpus.groups)
    best = pl.read_parquet(plan.results_path(iteration)).sort("objective_first_seed", descending=True).head(search.confirm_top)
    return [
        TrainingRun(row["candidate_id"] + CONFIRM_SUFFIX, corpus.groups, np.array([row[c] for c in columns]),
                    search.proxy_settings(), search.confirm_seed(), plan.base_path)
        for row in best.iter_rows(named=True)
    ]  # fmt: skip


def confirm_results(plan: SearchPlan, sink: RunLog, iteration: int, confirmations: list[dict]) -> pl.DataFrame:
    """The results table with each confirmed candidate's metrics the mean of its two runs (its first run's record
    read from its marker, so a re-run averages the same two runs); then the per-cluster loss of the base and of the
    iteration's best proxy beside it."""
    results = pl.read_parquet(plan.results_path(iteration))
    markers = lake.proxy_markers_dir(plan.home)
    rows = []
    for confirmation in confirmations:
        candidate = confirmation["name"].removesuffix(CONFIRM_SUFFIX)
        (first_key,) = results.filter(pl.col("candidate_id") == candidate)["fingerprint"]
        first = result_values(json.loads((markers / f"{first_key}.json").read_text()))
        second = result_values(confirmation)
        rows.append({"candidate_id": candidate, "seeds": 2, "objective_first_seed": first["objective"],
                     "confirm_fingerprint": confirmation["fingerprint"],
                     **{k: (v + second[k]) / 2 for k, v in first.items() if k in second}})  # fmt: skip
    if rows:
        confirmed = pl.DataFrame(rows).cast({c: results.schema[c] for c in rows[0] if c in results.columns})
        results = results.update(confirmed, on="candidate_id")
        write_parquet_atomic(results, plan.results_path(iteration))
    best = results.sort("objective", descending=True).row(0, named=True)
    best_losses = {k.removeprefix("cluster_bpb_"): v for k, v in best.items() if k.startswith("cluster_bpb_") and v is not None}
    if best_losses:
        table = cluster_loss_table(plan, {"base": base_cluster_losses(plan), "best_proxy": best_losses})
        write_parquet_atomic(table.with_columns(best_candidate=pl.lit(best["candidate_id"])),
                             plan.cluster_loss_path(iteration))  # fmt: skip
        log_run(sink.client, sink.parent, metrics={f"best_cluster_bpb_{g}": v for g, v in best_losses.items()})
    return results.with_columns(
        mlflow_url=pl.col("mlflow_run_id").map_elements(
            lambda r: run_url(sink.tracking.uri(plan.home), sink.experiment, r), return_dtype=pl.String
        )
    )


def run_fingerprints(results: pl.DataFrame) -> list[str]:
    """Every run behind a results table (a confirmed candidate's two), sorted: what a predictor learned from."""
    confirmations = results["confirm_fingerprint"].drop_nulls().to_list() if "confirm_fingerprint" in results.columns else []
    return sorted(results["fingerprint"].to_list() + confirmations)


def fit_iteration_predictor(plan: SearchPlan, sink: RunLog, iteration: int):
    """Refit the predictor on every proxy run so far (and the continued search's evidence); report each kind's
    k-fold held-out Spearman. Iteration 1 of a continued search first judges the refresh."""
    search = plan.search
    _, corpus = search_inputs(plan)
    state = continuation.judge_refresh(plan, corpus.groups) if iteration == 1 else continuation.load(plan)
    results = continuation.training_set(plan, iteration)
    columns = weight_columns(corpus.groups)
    X, y = results.select(columns).to_numpy(), results["objective"].to_numpy()
    params = search.predictor_params()
    predictor, scores = select_predictor(
        X, y, search.seed, k=search.predictor_folds, params=params, feature_names=columns, kinds=search.predictor_kinds()
    )
    cv = scores[predictor.kind]
    predictor.extra |= {
        "spearman": cv.spearman,
        "cv": cv.to_dict(),
        # kept so reports can plot predicted vs. actual without re-running the cross-validation
        "cv_predictions": [None if np.isnan(v) else float(v) for v in cv.predictions],
        "trained_on": run_fingerprints(results),
    }
    predictor.save(plan.predictor_path(iteration))
    client, parent = sink.client, sink.parent
    by_kind = {f"predictor_spearman_{kind}": score.spearman for kind, score in scores.items()}
    log_run(
        client, parent,
        params={f"predictor.{k}": v for k, v in asdict(params).items()} | {"predictor.kinds": ",".join(scores)},
        # rounds and the chosen kind follow the data: metrics and tags, so a refit never conflicts with a param
        metrics={"predictor_spearman": cv.spearman, "predictor_num_rounds": predictor.num_rounds,
                 "runs_so_far": len(y), "best_objective_so_far": float(y.max()), **by_kind},
    )  # fmt: skip
    tag_run(client, parent, {"climb.predictor_kind": predictor.kind, "climb.search_start": state["start"],
                             "climb.continuation": state.get("decision", state["start"])})  # fmt: skip
    if iteration == 1 and state["start"] == "refresh":
        measured = {k: state[k] for k in ("refresh_runs", "refresh_spearman", "refresh_p_value", "refresh_rmse",
                                          "refresh_rmse_after_shift") if state.get(k) is not None}  # fmt: skip
        log_run(client, parent, metrics=measured | {"refresh_offset": state["offset"]})
    if iteration == 1 and state["start"] == "partial":
        tag_run(client, parent, {"climb.searched_groups": ",".join(map(str, state["searched_groups"])),
                                 "climb.frozen_groups": ",".join(map(str, state["frozen_groups"]))})  # fmt: skip
        log_run(client, parent, metrics={"prior_shift": state["prior_shift"],
                                         "searched_groups": len(state["searched_groups"])})  # fmt: skip
    if predictor.booster is not None:
        log_lightgbm_model(client, parent, predictor.booster, "predictor")
    if predictor.linear is not None:
        client.log_dict(parent, predictor.linear.to_dict(), "predictor/linear.json")
    client.set_terminated(parent)
    return predictor, scores, results


def build_iteration_assets(iteration: int, final: bool) -> list[dg.AssetsDefinition]:
    """The three assets of one search iteration, wired to the previous iteration's predictor; the final one's
    predictor records the search as finished in its lineage."""
    prefix = f"iteration_{iteration}"
    upstream = ["proxy_tokenizer", "proxy_token_files"] if iteration == 1 else [dg.AssetKey([f"iteration_{iteration - 1}", "predictor"])]

    @dg.asset(name="mixture_candidates", key_prefix=prefix, group_name="search", deps=upstream, kinds={"numpy"},
              code_version=ALGORITHM_VERSIONS["candidates"])  # fmt: skip
    def mixture_candidates(climb: ClimbHomeResource, search: SearchSettings) -> dg.MaterializeResult:
        """Mixture weight vectors to try in this iteration."""
        plan = SearchPlan(climb.home(), search)
        frame, info = propose_candidates(plan, iteration)
        write_parquet_atomic(frame, plan.candidates_path(iteration))
        return dg.MaterializeResult(
            metadata={"candidates": frame.height, **info, "preview": markdown_table(frame.head(10))},
            data_version=dg.DataVersion(fingerprint({"search": plan.search_key, "candidates": frame.to_dicts()})),
        )

    def collect_first_runs(context: dg.OpExecutionContext, plan: SearchPlan, records: list[dict]) -> dg.Output:
        sink = iteration_run_log(plan, context.resources.mlflow_tracking, iteration, context)
        results = collect_proxy_results(plan, sink, iteration, records)
        return dg.Output(None, metadata={"proxies": results.height, "best_first_seed": results["objective"].max()})

    def collect(context: dg.OpExecutionContext, plan: SearchPlan, confirmations: list[dict]) -> dg.Output:
        sink = iteration_run_log(plan, context.resources.mlflow_tracking, iteration, context)
        results = confirm_results(plan, sink, iteration, confirmations)
        best = results.sort("objective", descending=True).row(0, named=True)
        return dg.Output(
            None,
            metadata={
                "proxies": results.height,
                "trained": int((~results["reused"]).sum()),
                "reused": int(results["reused"].sum()),
                "confirmed": int((results["seeds"] > 1).sum()),
                "confirmations_trained": sum(not c["reused"] for c in confirmations),
                "search_key": plan.search_key,
                "best_objective": best["objective"],
                "best_candidate": best["candidate_id"],
                "best_seeds": best["seeds"],
                "best_first_seed_objective": results["objective_first_seed"].max(),
                "best_mlflow_run": dg.MetadataValue.url(best["mlflow_url"]),
                "mean_objective": float(results["objective"].mean()),
                "proxy_seconds_total": float(results["seconds"].sum()),
                **cluster_loss_report(plan.cluster_loss_path(iteration)),
                "results": markdown_table(
                    results.select("candidate_id", "objective", *[c for c in ("bpb", "mc_acc") if c in results.columns],
                                   "seeds", "objective_first_seed", "seconds", "reused", "fingerprint",
                                   "mlflow_url").sort("objective", descending=True)  # fmt: skip
                ),
            },
            data_version=dg.DataVersion(fingerprint({"runs": run_fingerprints(results)})),
        )

    def run_log_of(plan: SearchPlan, tracking: MlflowTracking, context) -> RunLog:
        return iteration_run_log(plan, tracking, iteration, context)

    proxy_fan_out = training_fan_out(
        f"{prefix}_proxy",
        inputs=["candidates", "base"],
        runs_of=lambda context, plan: candidate_runs(plan, iteration),
        markers_of=lake.proxy_markers_dir,
        run_log_of=run_log_of,
        collect=collect_first_runs,
    )
    confirm_fan_out = training_fan_out(
        f"{prefix}_confirm",
        inputs=["first_runs"],
        runs_of=lambda context, plan: confirmation_runs(plan, iteration),
        markers_of=lake.proxy_markers_dir,
        run_log_of=run_log_of,
        collect=collect,
    )

    @dg.graph_asset(
        name="proxy_results", key_prefix=prefix, group_name="search", kinds={"pytorch", "mlflow"},
        ins={"candidates": dg.AssetIn(key=mixture_candidates.key, dagster_type=dg.Nothing),
             "base": dg.AssetIn(key=dg.AssetKey("proxy_base_checkpoint"), dagster_type=dg.Nothing)},
    )  # fmt: skip
    def proxy_results(candidates, base):
        """One small proxy LM per candidate, each its own GPU step (retried alone, run in parallel up to the gpu
        pool's limit), trained for a fixed token budget; the collect step writes the iteration's results. With
        ``confirm_top``, the best few are then trained again with a second seed (steps of their own) and their
        results become the mean of both runs."""
        return confirm_fan_out(first_runs=proxy_fan_out(candidates=candidates, base=base))

    previous_predictor = [] if iteration == 1 else [dg.AssetKey([f"iteration_{iteration - 1}", "predictor"])]

    @dg.asset(name="predictor", key_prefix=prefix, group_name="search", deps=[proxy_results, *previous_predictor],
              kinds={"lightgbm", "mlflow"}, code_version=ALGORITHM_VERSIONS["predictor"])  # fmt: skip
    def predictor(context: dg.AssetExecutionContext, climb: ClimbHomeResource, search: SearchSettings,
                  mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:  # fmt: skip
        """Mixture weights → target, refit on all proxy runs so far: LightGBM (paper settings), ridge or both,
        whichever ranks held-out runs best."""
        plan = SearchPlan(climb.home(), search)
        sink = iteration_run_log(plan, mlflow_tracking, iteration, context)
        fitted, scores, results = fit_iteration_predictor(plan, sink, iteration)
        state = continuation.load(plan)
        if final:
            plan.register_finished(iteration)
        cv = scores[fitted.kind]
        importance = fitted.feature_importance()
        return dg.MaterializeResult(
            metadata={
                "spearman_heldout": dg.MetadataValue.float(float(cv.spearman)),
                "predictor_kind": fitted.kind,
                **{f"spearman_{kind}": dg.MetadataValue.float(float(score.spearman)) for kind, score in scores.items()},
                "cv_folds": cv.folds,
                "cv_note": cv.reason or "",
                "runs": cv.n,
                "runs_reused_from_parent": int((results["iteration"] == 0).sum()),
                **continuation.metadata(state, refresh=iteration == 1),
                "num_rounds": fitted.num_rounds,
                "search_key": plan.search_key,
                "constant_model": bool(fitted.extra.get("constant", False)),
                "feature_importance": markdown_table(
                    pl.DataFrame({"weight": list(importance), "gain": list(importance.values())}).sort("gain", descending=True)
                ),
                "search_plot": search_plot(results, cv.predictions, cv.spearman),
            },
            data_version=dg.DataVersion(fingerprint({"search": plan.search_key, "runs": fitted.extra["trained_on"]})),
        )

    return [mixture_candidates, proxy_results, predictor]


def final_predictor_key(iterations: int) -> dg.AssetKey:
    return dg.AssetKey([f"iteration_{iterations}", "predictor"])


def build_search_assets(iterations: int) -> list[dg.AssetsDefinition]:
    """The tokenizer, the base checkpoint and ``iterations`` unrolled search iterations (``proxy_token_files`` is
    partitioned by shard, so it is defined beside them, not in the search's runs)."""
    if iterations < 1:
        raise ValueError(f"a search needs at least one iteration, got {iterations}")
    return [proxy_tokenizer, proxy_base_checkpoint] + [
        asset for k in range(1, iterations + 1) for asset in build_iteration_assets(k, final=k == iterations)
    ]
