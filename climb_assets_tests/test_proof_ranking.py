"""The ClimbMix proof and dataset writer on a hand-built corpus of three clearly different kinds of text.

Group 0 is Shakespeare, group 1 Python source, group 2 runs of digits; the target is held-out Shakespeare. A model
trained only on group 0 must beat one trained only on digits, and the proof table must be computed from the runs.
"""

import json
import math
from collections import Counter

import numpy as np
import polars as pl
import pytest

from climb_assets.climbmix.mix import ProofRun, proof_table, write_climbmix
from climb_assets.demo.corpus import _kind_docs
from climb_assets.home import ClimbHome
from climb_assets.lm.proxy import (
    ProxySettings,
    SearchCorpus,
    TargetData,
    load_search_corpus,
    run_proxy,
)
from climb_assets.lm.targets import TargetSpec
from climb_assets.lm.tokenizer import ByteTokenizer

TOKENIZER = ByteTokenizer()
SETTINGS = ProxySettings(n_layer=1, n_head=2, n_embd=64, block_size=64, batch_size=8, token_budget=20_000, lr=3e-3,
                         min_lr=3e-4)  # fmt: skip
MIXTURES = {"all_group0": [1.0, 0.0, 0.0], "all_group2": [0.0, 0.0, 1.0], "uniform": [1 / 3, 1 / 3, 1 / 3]}


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    prose = [d.text for d in _kind_docs("shakespeare", 0, 30)]
    return {
        "prose": prose[:24],
        "code": [d.text for d in _kind_docs("code", 0, 20)],
        "digits": [" ".join(str((i * 7919 + j * 31) % 1000) for j in range(150)) for i in range(20)],
        "target": [t[:2000] for t in prose[24:]],
    }


@pytest.fixture(scope="module")
def docs(texts) -> pl.DataFrame:
    """Documents of each group spread over two raw shards."""
    groups = {0: texts["prose"], 1: texts["code"], 2: texts["digits"]}
    return pl.DataFrame(
        [
            {"doc_id": f"g{g}-{i:03d}", "text": t, "shard": f"shard-{(g + i) % 2}", "super_cluster_id": g}
            for g, group in groups.items()
            for i, t in enumerate(group)
        ]
    )


@pytest.fixture(scope="module")
def corpus(docs, tmp_path_factory) -> SearchCorpus:
    """The documents in a real lake (raw shards + super-cluster membership), tokenized as bytes into token files."""
    home = ClimbHome(tmp_path_factory.mktemp("climb"))
    raw = home.lake_dir("raw_shards")
    raw.mkdir(parents=True)
    for (shard,), part in docs.group_by(["shard"]):
        part.select("doc_id", "text", "shard").write_parquet(raw / f"{shard}.parquet")
    clusters = home.lake_dir("super_clusters")
    clusters.mkdir(parents=True)
    docs.select("doc_id", "super_cluster_id").write_parquet(clusters / "documents.parquet")
    pl.DataFrame({"super_cluster_id": [0, 1, 2], "label": ["prose", "code", "digits"], "version": ["v-test"] * 3}
                 ).write_parquet(clusters / "super_clusters.parquet")  # fmt: skip
    return load_search_corpus(home, TOKENIZER)


@pytest.fixture(scope="module")
def proof(corpus, texts):
    """Every mixture × seed trained as the proof's steps train them (``run_proxy``), seeds outermost."""
    target = TargetData(TargetSpec(kind="bpb"), texts["target"])
    runs, outcomes = [], []
    for seed in (0, 1):
        for name, weights in MIXTURES.items():
            outcome, _ = run_proxy(corpus, TOKENIZER, np.array(weights), SETTINGS, target, seed=seed)
            runs.append(ProofRun(name, seed, outcome.metrics, outcome.seconds))
            outcomes.append((runs[-1], outcome))
    return runs, outcomes


def longest_doc(corpus: SearchCorpus) -> int:
    """Shares miss their weight by less than one document: at most half a document per group, either way."""
    return max(int(corpus.members[g].n_tokens.max()) for g in corpus.groups)


def test_clearly_better_mixture_ranks_first(proof, corpus):
    runs, outcomes = proof
    assert [(r.mixture, r.seed) for r in runs] == [(m, s) for s in (0, 1) for m in MIXTURES]
    # every run really trained for the budget, on the mixture it was given
    for run, outcome in outcomes:
        assert outcome.tokens_seen >= SETTINGS.token_budget and run.seconds == outcome.seconds > 0
        shares = outcome.mixture["realised_shares"]
        tolerance = longest_doc(corpus) / outcome.mixture["total_tokens"]
        assert [shares[str(g)] for g in range(3)] == pytest.approx(MIXTURES[run.mixture], abs=tolerance)
    table = proof_table(runs)
    assert table["mixture"].to_list()[0] == "all_group0"
    assert table["mixture"].to_list()[-1] == "all_group2"
    by_name = {r["mixture"]: r for r in table.iter_rows(named=True)}
    assert by_name["all_group0"]["bpb_mean"] + 1.0 < by_name["all_group2"]["bpb_mean"]


def test_table_is_computed_from_the_per_seed_runs(proof):
    runs, _ = proof
    table = proof_table(runs)
    assert sorted(table["mixture"]) == sorted(MIXTURES) and set(table["seeds"]) == {2}
    for row in table.iter_rows(named=True):
        mine = [r for r in runs if r.mixture == row["mixture"]]
        for metric in ("objective", "bpb", "train_loss"):
            values = [r.metrics[metric] for r in mine]
            assert row[f"{metric}_mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert row[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
        # the two seeds are two different training runs
        assert mine[0].metrics["bpb"] != mine[1].metrics["bpb"]
    assert table["objective_mean"].is_sorted(descending=True)


def read_shards(directory, manifest) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(directory / name) for name in manifest["shards"]])


def test_climbmix_dataset_follows_its_weights_and_sources(corpus, docs, tmp_path):
    out = tmp_path / "climbmix"
    weights = np.array([0.5, 0.3, 0.2])
    manifest = write_climbmix(out, corpus, weights, token_budget=120_000, max_repeats=4.0, seed=3, docs_per_shard=25,
                              manifest_extra={"note": "test"})  # fmt: skip
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest, default=str))
    assert math.isclose(sum(w["weight"] for w in manifest["weights"].values()), 1.0, abs_tol=1e-9)
    assert manifest["capped_groups"] == [] and manifest["note"] == "test"

    rows = read_shards(out, manifest)
    assert rows.height == manifest["documents"] and len(manifest["shards"]) == math.ceil(rows.height / 25)
    assert all(pl.read_parquet(out / name).height <= 25 for name in manifest["shards"])
    # token shares, recomputed from the written text, match the manifest and the weights (to one document)
    tokens = rows.with_columns(n=pl.col("text").map_elements(lambda t: len(TOKENIZER.encode(t)), return_dtype=pl.Int64))
    per_group = dict(tokens.group_by("super_cluster_id").agg(pl.col("n").sum()).iter_rows())
    total = sum(per_group.values())
    assert total == manifest["tokens"] and abs(total - 120_000) <= len(corpus.groups) * longest_doc(corpus) / 2
    for g, w in zip(corpus.groups, weights):
        assert manifest["sampled"][str(g)]["tokens"] == per_group[g]
        assert abs(per_group[g] / total - w) <= longest_doc(corpus) / total
    # every document is the corpus document it names, from the raw shard that holds it
    source = {(r["super_cluster_id"], r["doc_id"]): (r["shard"], r["text"]) for r in docs.iter_rows(named=True)}
    for row in rows.iter_rows(named=True):
        assert source[(row["super_cluster_id"], row["doc_id"])] == (row["source_shard"], row["text"])
    assert manifest["provenance"]["documents_per_raw_shard"] == dict(Counter(rows["source_shard"]))
    # the repetition cap holds
    assert max(Counter(rows["doc_id"]).values()) <= math.ceil(manifest["max_repeats"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["climbmix"]


def test_scarce_group_is_capped_and_reported(corpus, tmp_path):
    out = tmp_path / "climbmix"
    digits = int(corpus.tokens_per_group()[2])
    manifest = write_climbmix(out, corpus, np.array([0.2, 0.2, 0.6]), token_budget=60_000, max_repeats=1.0, seed=0,
                              docs_per_shard=100, manifest_extra={})  # fmt: skip
    assert 0.6 * 60_000 > digits and manifest["capped_groups"] == [2]
    rows = read_shards(out, manifest)
    scarce = rows.filter(pl.col("super_cluster_id") == 2)
    assert scarce["doc_id"].n_unique() == scarce.height  # max_repeats 1: no digit document twice
    assert manifest["sampled"]["2"]["tokens"] <= digits
    # the share the scarce group could not supply went to the others in proportion: 0.2 : 0.2 stays 1 : 1
    assert manifest["tokens"] >= 60_000
    rest = (1 - manifest["sampled"]["2"]["token_share"]) / 2
    for g in ("0", "1"):
        assert manifest["sampled"][g]["token_share"] == pytest.approx(
            rest, abs=longest_doc(corpus) / manifest["tokens"]
        )


def test_budget_beyond_the_repetition_cap_is_lowered_and_reported(corpus, tmp_path):
    out = tmp_path / "climbmix"
    weights = np.array([0.0, 0.0, 1.0])  # everything on the small digits group
    digits = int(corpus.tokens_per_group()[2])
    manifest = write_climbmix(out, corpus, weights, token_budget=100 * digits, max_repeats=2.0, seed=0,
                              docs_per_shard=100, manifest_extra={})  # fmt: skip
    assert manifest["token_budget"] == 100 * digits and manifest["token_budget_used"] < 2 * digits
    assert "budget lowered" in manifest["budget_note"]
    rows = read_shards(out, manifest)
    assert set(rows["super_cluster_id"]) == {2}
    assert max(Counter(rows["doc_id"]).values()) <= 2


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot serialise")


def test_output_directory_is_replaced_atomically(corpus, tmp_path):
    out = tmp_path / "climbmix"
    kwargs = {"token_budget": 30_000, "max_repeats": 4.0, "docs_per_shard": 10}
    first = write_climbmix(out, corpus, np.array([0.4, 0.4, 0.2]), seed=0, manifest_extra={}, **kwargs)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"manifest.json", *first["shards"]}

    # a failure while writing leaves the previous dataset exactly as it was, and no temp files behind
    with pytest.raises(RuntimeError, match="cannot serialise"):
        write_climbmix(out, corpus, np.array([0.1, 0.1, 0.8]), seed=1, manifest_extra={"bad": Unprintable()}, **kwargs)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["climbmix"]

    # a successful rewrite replaces the whole directory: no shard of the old dataset survives
    second = write_climbmix(out, corpus, np.array([0.1, 0.1, 0.8]), seed=1, manifest_extra={}, docs_per_shard=1000,
                            token_budget=30_000, max_repeats=4.0)  # fmt: skip
    assert (
        sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *second["shards"]])
        and len(second["shards"]) == 1
    )
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["climbmix"]


def test_paired_comparison_separates_a_real_gap_from_a_tie():
    from climb_assets.climbmix.baselines import paired_comparison

    seeds = range(5)
    noise = [0.03, -0.02, 0.05, -0.04, 0.01]  # shared by every mixture of a seed: pairing cancels it
    rows = [{"mixture": "climbmix", "seed": s, "objective": -3.0 + noise[s]} for s in seeds]
    rows += [{"mixture": "worse", "seed": s, "objective": -3.1 + noise[s] + 0.001 * (-1) ** s} for s in seeds]
    rows += [{"mixture": "same", "seed": s, "objective": -3.0 + noise[s] + 0.002 * (-1) ** s} for s in seeds]
    table = {r["baseline"]: r for r in paired_comparison(pl.DataFrame(rows)).iter_rows(named=True)}
    assert table["worse"]["verdict"] == "beats" and table["worse"]["mean_delta"] == pytest.approx(0.1, abs=1e-3)
    assert table["worse"]["ci_low"] > 0
    assert table["same"]["verdict"] == "tie" and table["same"]["ci_low"] < 0 < table["same"]["ci_high"]
    assert table["same"]["seeds"] == 5
