"""Loss-guided bootstrapping: the model's own loss per super-cluster sets the next mixture (DoReMi's rule, no labels).

The base checkpoint (trained on the natural mixture) is the reference model and the starting point. Each round
trains one proxy-sized segment on the current weights, continuing from the previous round's model, measures the
held-out bits per byte of every super-cluster, and re-weights them: w <- w * exp(eta * (loss - reference loss)),
normalised, then mixed with uniform by ``floor`` (DoReMi's smoothing), so clusters the model improves on least gain
weight and the ones it has mastered lose it. A super-cluster without held-out documents keeps its relative weight.
The mixture it ends with (the mean of the updated weights over the rounds, as DoReMi averages them) is the proof's
``loss_guided`` baseline, trained and evaluated exactly like ClimbMix; its proxy compute is ``rounds`` segments.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np

from climb_assets import lake
from climb_assets.devices import device_lease
from climb_assets.lm.proxy import ProxySettings, SearchCorpus, TargetData, run_proxy
from climb_assets.lm.tokenizer import TextTokenizer
from climb_assets.lm.train import load_checkpoint
from climb_assets.search.keys import ALGORITHM_VERSIONS, SearchPlan, fingerprint
from climb_assets.search.reports import base_cluster_losses
from climb_assets.search.settings import ProofSettings, result_settings_of
from climb_assets.search.state import search_inputs
from climb_assets.search.tracking import log_run
from climb_assets.storage import exclusive_lock, write_json_atomic


def update_weights(weights: np.ndarray, losses: np.ndarray, reference: np.ndarray, eta: float, floor: float) -> np.ndarray:
    """One DoReMi step: up-weight by the excess loss over the reference (none where either is unmeasured), smooth."""
    excess = np.where(np.isnan(losses) | np.isnan(reference), 0.0, losses - reference)
    tilted = weights * np.exp(eta * excess)
    tilted /= tilted.sum()
    return (1.0 - floor) * tilted + floor / len(tilted)


def loss_guided_rounds(
    corpus: SearchCorpus, tokenizer: TextTokenizer, base_state: dict, reference: dict[str, float],
    settings: ProxySettings, target: TargetData, *, rounds: int, eta: float, floor: float, seed: int,
) -> dict:  # fmt: skip
    """Train ``rounds`` segments from the base, re-weighting after each; every round's weights and losses."""
    reference_loss = np.array([reference.get(str(g), np.nan) for g in corpus.groups])
    weights, state = corpus.natural_weights(), base_state
    log, updated = [], []
    for number in range(1, rounds + 1):
        outcome, model = run_proxy(corpus, tokenizer, weights, settings, target, seed=seed + number, init_state=state)
        state = model.state_dict()
        losses = np.array([outcome.cluster_bpb.get(str(g), np.nan) for g in corpus.groups])
        next_weights = update_weights(weights, losses, reference_loss, eta, floor)
        log.append({
            "round": number, "trained_on": weights.tolist(), "cluster_bpb": outcome.cluster_bpb,
            "excess": np.nan_to_num(losses - reference_loss).tolist(), "next_weights": next_weights.tolist(),
            "tokens": outcome.tokens_seen, "seconds": outcome.seconds, "objective": outcome.metrics["objective"],
        })  # fmt: skip
        updated.append(next_weights)
        weights = next_weights
    final = np.mean(updated, axis=0)
    return {"groups": corpus.groups, "rounds": log, "weights": (final / final.sum()).tolist(),
            "tokens": sum(r["tokens"] for r in log), "seconds": sum(r["seconds"] for r in log)}  # fmt: skip


def unavailable(plan: SearchPlan, proof: ProofSettings) -> str | None:
    """Why there is no loss-guided baseline for these settings (None: there is one)."""
    if proof.loss_guided_rounds == 0:
        return "loss_guided_rounds is 0"
    if plan.base_path is None:
        return "it starts from the base checkpoint, and base_token_budget is 0"
    if plan.search.cluster_loss_docs == 0:
        return "it needs held-out loss per super-cluster, and cluster_loss_docs is 0"
    return None


def loss_guided_key(plan: SearchPlan, proof: ProofSettings) -> str:
    return fingerprint({
        "algorithm": ALGORITHM_VERSIONS["loss_guided"], **plan.corpus_ingredients, "tokenizer_sha256": plan.tokenizer_sha,
        "base_sha256": plan.base_sha, "settings": result_settings_of(plan.search.proxy_settings()),
        "target": plan.target_ingredients, "seed": plan.search.proxy_seed(), "rounds": proof.loss_guided_rounds,
        "eta": proof.loss_guided_eta, "floor": proof.loss_guided_floor,
    })  # fmt: skip


def loss_guided_path(plan: SearchPlan, proof: ProofSettings) -> Path:
    return lake.loss_guided_path(plan.home, loss_guided_key(plan, proof))


def finished(plan: SearchPlan, proof: ProofSettings) -> dict | None:
    """The finished record for these settings, None when they have no loss-guided baseline."""
    if unavailable(plan, proof):
        return None
    path = loss_guided_path(plan, proof)
    if not path.exists():
        raise dg.Failure(f"no loss-guided run for these settings ({path.stem}): materialize loss_guided_baseline first")
    return json.loads(path.read_text())


def ensure_loss_guided(plan: SearchPlan, proof: ProofSettings, slots: int, on_wait=None) -> tuple[dict, bool, dict]:
    """The loss-guided record (trained now or reused by its key), whether it was reused, and the device lease."""
    path = loss_guided_path(plan, proof)
    with exclusive_lock(path.with_suffix(".lock"), on_wait=on_wait):
        if path.exists():
            return json.loads(path.read_text()), True, {}
        tokenizer, corpus = search_inputs(plan)
        settings = plan.search.proxy_settings()
        with device_lease(plan.home, slots) as lease:
            pinned = replace(settings, device=lease.device, num_threads=settings.num_threads or lease.threads)
            record = loss_guided_rounds(
                corpus, tokenizer, load_checkpoint(plan.base_path)[0].state_dict(), base_cluster_losses(plan), pinned,
                plan.search.target(plan.home), rounds=proof.loss_guided_rounds, eta=proof.loss_guided_eta,
                floor=proof.loss_guided_floor, seed=plan.search.proxy_seed(),
            )  # fmt: skip
        write_json_atomic(record | {"fingerprint": path.stem}, path)
        return record | {"fingerprint": path.stem}, False, lease.metadata()


def log_rounds(sink, record: dict, proof: ProofSettings, groups: list[int]) -> None:
    """One MLflow run for the whole strategy: its settings, and per round each super-cluster's weight and loss."""
    rounds = record["rounds"]
    tags = sink.tags | {"climb.stage": "loss_guided", "climb.fingerprint": record["fingerprint"]}
    run_id = sink.tracking.open_run(sink.client, sink.experiment, "loss-guided", tags)
    curves = {f"weight_{g}": [(r["round"], r["next_weights"][i]) for r in rounds] for i, g in enumerate(groups)}
    curves |= {f"cluster_bpb_{g}": [(r["round"], r["cluster_bpb"][str(g)]) for r in rounds if str(g) in r["cluster_bpb"]]
               for g in groups}  # fmt: skip
    curves["objective"] = [(r["round"], r["objective"]) for r in rounds]
    log_run(sink.client, run_id, metrics={"tokens": record["tokens"]}, curves=curves, params={
        "rounds": proof.loss_guided_rounds, "eta": proof.loss_guided_eta, "floor": proof.loss_guided_floor})
    sink.client.set_terminated(run_id)
