"""Token files: one tokenization per (tokenizer, raw shard), read back through memory maps by proxies and ClimbMix."""

import hashlib
import json
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from climb_assets.home import ClimbHome
from climb_assets.lake import raw_shard_path, raw_shards_dir
from climb_assets.lm.proxy import (
    ProxySettings,
    TargetData,
    load_search_corpus,
    mixture_token_stream,
    mixture_window_batches,
    run_proxy,
)
from climb_assets.lm.targets import TargetSpec
from climb_assets.lm.train import TrainConfig
from climb_assets.lm.token_files import (
    TokenStore,
    ensure_token_files,
    token_dir,
    tokenizer_sha256,
)
from climb_assets.lm.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()



def decode_shard(home, tokenizer, shard: str) -> list[np.ndarray]:
    """Every row's tokens of one shard, read through the same memory maps the proxies read."""
    store = TokenStore(token_dir(home, tokenizer), raw_shards_dir(home), [shard])
    return [np.asarray(store.tokens(0, r)) for r in range(len(store.row_lengths(0)))]

def make_docs(shard: str, n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 60)))) for _ in range(n)]
    texts[0] = ""  # an empty document is a zero-length row, not a missing one
    texts[1] = "ünïcödé <|endoftext|> stays text"
    return pl.DataFrame({"doc_id": [f"{shard}-{i:04d}" for i in range(n)], "text": texts, "shard": [shard] * n})


def add_shard(home: ClimbHome, shard: str, n: int = 40, seed: int = 0) -> pl.DataFrame:
    frame = make_docs(shard, n, seed)
    raw = home.lake_dir("raw_shards")
    raw.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(raw / f"{shard}.parquet")
    return frame


def write_membership(home: ClimbHome, docs: pl.DataFrame, n_groups: int) -> None:
    clusters = home.lake_dir("super_clusters")
    clusters.mkdir(parents=True, exist_ok=True)
    members = docs.select("doc_id").with_row_index("i").select("doc_id", super_cluster_id=pl.col("i") % n_groups)
    members.write_parquet(clusters / "documents.parquet")
    pl.DataFrame({"super_cluster_id": list(range(n_groups)), "label": [f"g{g}" for g in range(n_groups)],
                  "version": ["v1"] * n_groups}).write_parquet(clusters / "super_clusters.parquet")  # fmt: skip


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer([" ".join(WORDS)] * 50, vocab_size=300)


def file_stamps(directory):
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


def test_token_files_decode_to_the_tokenizers_encoding(home, bpe):
    frame = add_shard(home, "s0")
    assert ensure_token_files(home, bpe) == {"tokenized": ["s0"], "reused": []}
    rows = decode_shard(home, bpe, "s0")
    assert [r.tolist() for r in rows] == [bpe.encode(t) for t in frame["text"]]
    assert rows[0].size == 0 and rows[2].dtype == np.uint16


def test_new_shard_is_tokenized_alone_and_a_new_tokenizer_gets_new_files(home, bpe):
    add_shard(home, "s0")
    ensure_token_files(home, bpe)
    directory = token_dir(home, bpe)
    before = file_stamps(directory)
    add_shard(home, "s1", seed=1)
    assert ensure_token_files(home, bpe) == {"tokenized": ["s1"], "reused": ["s0"]}
    after = file_stamps(directory)
    assert {k: v for k, v in after.items() if k.startswith("s0.")} == before and len(before) == 3
    assert sorted(after) == ["s0.bin", "s0.idx", "s0.json", "s1.bin", "s1.idx", "s1.json"]

    other = ByteTokenizer()
    assert tokenizer_sha256(other) != tokenizer_sha256(bpe) and token_dir(home, other) != directory
    assert ensure_token_files(home, other)["tokenized"] == ["s0", "s1"]
    assert file_stamps(directory) == after  # the first tokenizer's files are left as they were
    text = pl.read_parquet(home.lake_dir("raw_shards") / "s1.parquet")["text"][5]
    assert decode_shard(home, other, "s1")[5].tolist() == other.encode(text)


def test_rewritten_shard_is_tokenized_again(home, bpe):
    add_shard(home, "s0")
    ensure_token_files(home, bpe)
    frame = add_shard(home, "s0", n=25, seed=7)  # same name, new content
    assert ensure_token_files(home, bpe)["tokenized"] == ["s0"]
    assert [r.tolist() for r in decode_shard(home, bpe, "s0")] == [bpe.encode(t) for t in frame["text"]]


def test_a_shard_replaced_during_tokenization_is_not_certified_by_the_new_bytes(home, bpe):
    """The tokenizer replaces the shard mid-way (a re-ingest racing the token files): the files must describe the
    bytes that were tokenized, so the next pass sees the new content and tokenizes it again."""
    original = add_shard(home, "s0")
    raw = raw_shard_path(home, "s0")
    original_sha = hashlib.sha256(raw.read_bytes()).hexdigest()

    class RacingTokenizer(BPETokenizer):  # the same definition, so the same token directory
        raced = False

        def encode_batch(self, texts):
            if not self.raced:
                self.raced = True
                add_shard(home, "s0", n=25, seed=7)
            return super().encode_batch(texts)

    assert ensure_token_files(home, RacingTokenizer(bpe._tok))["tokenized"] == ["s0"]
    meta = json.loads((token_dir(home, bpe) / "s0.json").read_text())
    assert meta["raw_sha256"] == original_sha and meta["rows"] == original.height
    assert ensure_token_files(home, bpe)["tokenized"] == ["s0"]  # the new bytes are tokenized, not trusted
    assert len(decode_shard(home, bpe, "s0")) == 25


def test_corpus_indexes_membership_and_proxy_is_deterministic(home, bpe):
    docs = pl.concat([add_shard(home, "s0", n=60), add_shard(home, "s1", n=60, seed=1)])
    write_membership(home, docs, n_groups=3)
    corpus = load_search_corpus(home, bpe)
    assert corpus.groups == [0, 1, 2] and corpus.version == "v1" and corpus.labels[2] == "g2"
    texts = dict(docs.select("doc_id", "text").iter_rows())
    members = pl.read_parquet(home.lake_dir("super_clusters") / "documents.parquet")
    for g in corpus.groups:
        ids = sorted(members.filter(pl.col("super_cluster_id") == g)["doc_id"])
        doc_ids, got_texts, _, n_tokens = corpus.records(np.full(len(ids), g), np.arange(len(ids)))
        assert doc_ids == ids and got_texts == [texts[d] for d in ids]
        assert [corpus.tokens(g, i).tolist() for i in range(len(ids))] == [bpe.encode(texts[d]) for d in ids]
        assert n_tokens.tolist() == [len(bpe.encode(texts[d])) for d in ids]
    assert corpus.tokens_per_group().sum() == sum(len(bpe.encode(t)) for t in docs["text"])

    settings = ProxySettings(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, token_budget=2_000)
    target = TargetData(TargetSpec(kind="bpb"), texts=list(docs["text"][:5]))
    weights = np.array([0.5, 0.3, 0.2])
    reloaded = load_search_corpus(home, bpe)  # from the stored index this time
    assert len(list(token_dir(home, bpe).glob("index-*.npz"))) == 1
    for g in corpus.groups:
        for k in ("shard", "row", "n_tokens"):
            assert np.array_equal(getattr(reloaded.members[g], k), getattr(corpus.members[g], k))
    first, _ = run_proxy(corpus, bpe, weights, settings, target, seed=3)
    again, _ = run_proxy(reloaded, bpe, weights, settings, target, seed=3)
    other, _ = run_proxy(corpus, bpe, weights, settings, target, seed=4)
    assert first.loss_curve == again.loss_curve and first.metrics == again.metrics
    assert first.loss_curve != other.loss_curve

    # re-clustering gets a new index, the token files stay as they were
    tokens = {k: v for k, v in file_stamps(token_dir(home, bpe)).items() if not k.startswith("index-")}
    write_membership(home, docs, n_groups=2)
    regrouped = load_search_corpus(home, bpe)
    assert regrouped.groups == [0, 1] and sum(len(regrouped.members[g]) for g in (0, 1)) == docs.height
    after = file_stamps(token_dir(home, bpe))
    assert {k: v for k, v in after.items() if not k.startswith("index-")} == tokens
    assert len([k for k in after if k.startswith("index-")]) == 2


def test_held_out_documents_are_never_trained_on_and_each_super_cluster_gets_a_loss(home, bpe):
    docs = pl.concat([add_shard(home, "s0", n=60), add_shard(home, "s1", n=60, seed=1)])
    write_membership(home, docs, n_groups=3)
    corpus = load_search_corpus(home, bpe)
    heldout = corpus.heldout(4)
    assert {g: len(p) for g, p in heldout.items()} == {0: 4, 1: 4, 2: 4}
    assert all(np.array_equal(heldout[g], p) for g, p in corpus.heldout(4).items())  # the same for every run
    assert {g: len(p) for g, p in corpus.heldout(30).items()} == {0: 10, 1: 10, 2: 10}  # a quarter of a small group
    pools = corpus.training_pools(heldout)
    for g in corpus.groups:
        assert sorted([*pools[g].doc_ids, *heldout[g]]) == list(range(len(corpus.members[g])))

    def key(tokens) -> tuple:
        return tuple(np.asarray(tokens).tolist())

    # a budget of several epochs draws every training document, and no held-out one
    epochs = int(corpus.tokens_per_group().sum() * 5)
    stream, _ = mixture_token_stream(corpus, np.array([0.4, 0.3, 0.3]), epochs, 50.0, seed=0, heldout=heldout)
    drawn = {key(t) for t in stream}
    training = {key(corpus.tokens(g, int(i))) for g in corpus.groups for i in pools[g].doc_ids}
    held = {key(corpus.tokens(g, int(i))) for g in corpus.groups for i in heldout[g]}
    assert drawn == training and not (held - training) & drawn and held - training

    settings = ProxySettings(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, token_budget=2_000,
                             cluster_loss_docs=4)  # fmt: skip
    outcome, _ = run_proxy(corpus, bpe, np.array([0.5, 0.3, 0.2]), settings,
                           TargetData(TargetSpec(kind="bpb"), texts=list(docs["text"][:5])), seed=3)  # fmt: skip
    assert set(outcome.cluster_bpb) == {"0", "1", "2"} and all(0 < v < 20 for v in outcome.cluster_bpb.values())
    off, _ = run_proxy(corpus, bpe, np.array([0.5, 0.3, 0.2]), replace(settings, cluster_loss_docs=0),
                       TargetData(TargetSpec(kind="bpb"), texts=list(docs["text"][:5])), seed=3)  # fmt: skip
    assert off.cluster_bpb == {}


def test_mean_hidden_states_embed_each_text_the_same_alone_or_in_a_padded_batch(bpe):
    import torch

    from climb_assets.lm.model import GPT, GPTConfig
    from climb_assets.lm.targets import mean_hidden_states

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    texts = ["alpha beta", " ".join(WORDS * 3), "gamma delta epsilon zeta eta"]
    together = mean_hidden_states(model, bpe, texts, "cpu", batch_size=8)
    alone = np.stack([mean_hidden_states(model, bpe, [t], "cpu")[0] for t in texts])
    assert together.shape == (3, 16) and np.allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[2])  # different texts, different vectors


def test_membership_naming_a_missing_document_is_an_error(home, bpe):
    docs = add_shard(home, "s0")
    write_membership(home, pl.concat([docs, make_docs("gone", 3, 0)]), n_groups=2)
    with pytest.raises(ValueError, match="3 super-cluster documents are missing"):
        load_search_corpus(home, bpe)


def test_token_files_are_one_partition_per_shard_made_once_per_tokenizer(home, climb_resource, bpe):
    import dagster as dg

    from climb_assets.search.assets import proxy_token_files
    from climb_assets.search.keys import SearchPlan
    from climb_assets.search.settings import SearchSettings

    write_membership(home, add_shard(home, "s0"), n_groups=2)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("raw_shards", ["s0", "s1", "s9"])
    resources = {"climb": climb_resource, "search": SearchSettings()}

    def materialize(shard: str) -> dg.AssetMaterialization:
        result = dg.materialize([proxy_token_files], partition_key=shard, resources=resources, instance=instance,
                                raise_on_error=False)  # fmt: skip
        assert result.success, [e.message for e in result.all_events if e.is_step_failure]
        (made,) = result.asset_materializations_for_node("proxy_token_files")
        return made

    refused = dg.materialize([proxy_token_files], partition_key="s0", resources=resources, instance=instance,
                             raise_on_error=False)  # fmt: skip
    assert not refused.success and "materialize proxy_tokenizer first" in str(refused.all_events)
    path = SearchPlan(home, SearchSettings()).tokenizer_path  # where proxy_tokenizer puts it for these settings
    path.parent.mkdir(parents=True, exist_ok=True)
    bpe.save(path)
    tokenizer = load_tokenizer(path)

    first = materialize("s0")
    assert first.partition == "s0" and first.metadata["tokenized"].value is True
    assert first.metadata["tokenizer_sha256"].value == tokenizer_sha256(tokenizer)
    assert first.metadata["tokens"].value == sum(len(t) for t in decode_shard(home, tokenizer, "s0")) > 0
    stamps = file_stamps(token_dir(home, tokenizer))
    add_shard(home, "s1", seed=1)
    assert materialize("s1").metadata["tokenized"].value is True
    again = materialize("s0")  # nothing new for s0: its files are kept, and its version is the same
    assert again.metadata["tokenized"].value is False
    assert {name: t for name, t in file_stamps(token_dir(home, tokenizer)).items() if name.startswith("s0")} == stamps
    versions: dict[str, set[str]] = {}
    for record in instance.fetch_materializations(dg.AssetKey("proxy_token_files"), limit=10).records:
        made = record.asset_materialization
        versions.setdefault(made.partition, set()).add(made.tags["dagster/data_version"])
    assert len(versions["s0"]) == 1 and versions["s0"] != versions["s1"]

    missing = dg.materialize([proxy_token_files], partition_key="s9", resources=resources, instance=instance,
                             raise_on_error=False)  # fmt: skip
    assert not missing.success and "raw shard 's9' is not in the lake" in str(missing.all_events)


@pytest.mark.parametrize("spread", [True, False], ids=["windows", "random_windows"])
def test_window_stream_reads_each_super_clusters_own_training_text_in_exact_shares(home, bpe, spread):
    docs = pl.concat([add_shard(home, "s0", n=60), add_shard(home, "s1", n=60, seed=1)])
    write_membership(home, docs, n_groups=3)
    corpus = load_search_corpus(home, bpe)
    heldout = corpus.heldout(4)
    pools = corpus.training_pools(heldout)
    cfg = TrainConfig(token_budget=3_000, batch_size=4, block_size=16, lr=1e-3, min_lr=1e-4)
    batches, stats = mixture_window_batches(corpus, np.array([0.5, 0.3, 0.2]), cfg, 4.0, seed=3, heldout=heldout,
                                            eot_id=bpe.eot_id, spread=spread)  # fmt: skip
    rows = torch.cat(list(batches))
    assert rows.shape == (cfg.num_steps * cfg.batch_size, cfg.block_size + 1)

    def stream(g: int) -> str:
        """The group's training documents, each after its boundary token, twice (a window may wrap round)."""
        tokens = [t for i in pools[g].doc_ids for t in [bpe.eot_id, *corpus.tokens(g, int(i)).tolist()]]
        return " ".join(map(str, tokens * 2)) + " "

    streams = {g: stream(g) for g in corpus.groups}
    owners = [[g for g, text in streams.items() if " ".join(map(str, row)) + " " in text] for row in rows.tolist()]
    assert all(len(found) == 1 for found in owners)  # a contiguous slice of one group's training text, no held-out text
    counts = np.bincount([found[0] for found in owners], minlength=3)
    assert counts.tolist() == [len(rows) // 2, round(len(rows) * 0.3), len(rows) - len(rows) // 2 - round(len(rows) * 0.3)]
    assert stats["realised_shares"] == {str(g): c / len(rows) for g, c in enumerate(counts.tolist())}
    again, _ = mixture_window_batches(corpus, np.array([0.5, 0.3, 0.2]), cfg, 4.0, seed=3, heldout=heldout,
                                      eot_id=bpe.eot_id, spread=spread)  # fmt: skip
    assert torch.equal(torch.cat(list(again)), rows)
