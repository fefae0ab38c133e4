"""Proxy model, tokenizers and training loop: real tiny models trained on real (tiny) text."""

from __future__ import annotations

import math
import platform
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from climb_assets.lm.model import GPT, GPTConfig, preset
from climb_assets.lm.tokenizer import ByteTokenizer, load_tokenizer, train_bpe_tokenizer
from climb_assets.lm.train import (
    TrainConfig,
    learning_rate,
    load_checkpoint,
    pack_documents,
    save_checkpoint,
    train_proxy,
)

DOCS = [
    "The quick brown fox jumps over the lazy dog. ",
    "To be, or not to be, that is the question. ",
]
BYTES = ByteTokenizer()
BLOCK = 32
BATCH = 8


def tiny_cfg() -> GPTConfig:
    return preset("tiny", vocab_size=BYTES.vocab_size, block_size=BLOCK)


def train_cfg(**overrides: object) -> TrainConfig:
    base = dict(
        token_budget=BATCH * BLOCK * 60,
        batch_size=BATCH,
        block_size=BLOCK,
        lr=3e-3,
        min_lr=3e-4,
        warmup_frac=0.1,
        num_threads=1,
        device="cpu",
    )
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def repetitive_stream(seed: int = 0):
    """Endless stream of the two documents in random order, packed into training batches."""
    rng = np.random.default_rng(seed)

    def docs():
        while True:
            yield BYTES.encode(DOCS[int(rng.integers(len(DOCS)))])

    return pack_documents(docs(), BLOCK, BYTES.eot_id, BATCH, np.random.default_rng(seed))


# --- model -------------------------------------------------------------------------------------------------------


def test_model_shapes_tying_and_initial_loss_near_uniform():
    torch.manual_seed(0)
    model = GPT(tiny_cfg())
    idx, targets = torch.randint(0, BYTES.vocab_size, (2, 2, BLOCK))
    logits, loss = model(idx, targets)
    assert logits.shape == (2, BLOCK, BYTES.vocab_size)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert abs(loss.item() - math.log(BYTES.vocab_size)) < 0.2  # small init -> nearly uniform predictions
    assert model(idx)[1] is None
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros((1, BLOCK + 1), dtype=torch.long))


def test_presets_sizes_and_validation():
    tiny = GPT(preset("tiny", vocab_size=4096)).num_params()
    demo = GPT(preset("demo", vocab_size=4096)).num_params()
    assert 0.5e6 < tiny < 1.5e6 < demo < 10e6
    paper = preset("paper_62m")
    # count without building the 62M model: blocks (12 d^2 each) + tied token table + position table
    approx = paper.n_layer * 12 * paper.n_embd**2 + (paper.vocab_size + paper.block_size) * paper.n_embd
    assert 55e6 < approx < 70e6
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)


# --- tokenizers --------------------------------------------------------------------------------------------------


def test_byte_tokenizer_roundtrip_and_separator():
    text = "héllo wörld ✓"
    ids = BYTES.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and BYTES.eot_id not in ids
    assert BYTES.decode(ids + [BYTES.eot_id]) == text
    assert BYTES.encode_batch([text, "a"]) == [ids, [ord("a")]]


def test_bpe_trains_offline_roundtrips_and_saves(tmp_path):
    corpus = [d * 20 for d in DOCS] + ["def f(x):\n    return x + 1\n"] * 10
    tok = train_bpe_tokenizer(corpus, vocab_size=400)
    assert 257 < tok.vocab_size <= 400
    unseen = "Ünïcödé ✓ and text never seen, <|endoftext|> included"
    ids = tok.encode(unseen)
    assert tok.decode(ids) == unseen  # byte-level: everything encodable
    assert tok.eot_id not in ids  # the literal separator string in text stays text
    assert len(tok.encode(DOCS[0])) < len(DOCS[0].encode("utf-8")) / 2  # merges learned on the corpus
    path = tok.save(tmp_path / "tok" / "tokenizer.json")
    again = load_tokenizer(path)
    assert again.encode_batch(corpus[:3] + [unseen]) == tok.encode_batch(corpus[:3] + [unseen])
    assert again.eot_id == tok.eot_id
    assert train_bpe_tokenizer(corpus, vocab_size=400).encode(unseen) == ids  # deterministic training
    assert not list(tmp_path.glob("tok/.*.tmp"))  # atomic write leaves no temp dir
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")


# --- packing and schedule ----------------------------------------------------------------------------------------


def test_pack_documents_keeps_every_token_in_order_without_rng():
    docs = [list(range(n, n + n % 7 + 1)) for n in range(1, 120)]
    batches = list(pack_documents(docs, block_size=9, eot_id=999, batch_size=3, rng=None, shuffle_batches=2))
    stream = [t for d in docs for t in [999, *d]]
    flat = torch.cat(batches).reshape(-1).tolist()
    assert all(b.shape == (3, 10) and b.dtype == torch.long for b in batches)
    assert flat == stream[: len(flat)]
    assert len(stream) - len(flat) < 3 * 10  # only a tail shorter than one batch is left over


def test_pack_documents_shuffle_is_a_seeded_permutation_of_windows():
    docs = [list(range(n, n + 5)) for n in range(200)]
    plain = torch.cat(list(pack_documents(docs, 7, 999, 5, rng=None)))  # 150 windows = 30 full batches
    shuffled = torch.cat(list(pack_documents(docs, 7, 999, 5, rng=3)))
    again = torch.cat(list(pack_documents(docs, 7, 999, 5, rng=3)))
    assert torch.equal(shuffled, again)
    assert not torch.equal(shuffled, plain)
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, plain.tolist()))


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_schedule_warms_up_and_ends_at_min_lr(schedule):
    cfg = train_cfg(schedule=schedule, token_budget=BATCH * BLOCK * 100, warmup_frac=0.1, decay_frac=0.3)
    lrs = [learning_rate(cfg, s) for s in range(cfg.num_steps)]
    assert cfg.num_steps == 100
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(cfg.lr)
    assert lrs[-1] == pytest.approx(cfg.min_lr)
    assert all(cfg.min_lr - 1e-12 <= lr <= cfg.lr + 1e-12 for lr in lrs)
    if schedule == "wsd":
        assert lrs[10:70] == [cfg.lr] * 60  # stable phase until the last 30%
        assert lrs[70] < cfg.lr
    else:
        assert lrs[40] > lrs[60] > lrs[80]


# --- training ----------------------------------------------------------------------------------------------------


def test_loss_falls_on_repetitive_corpus_and_is_deterministic():
    seen: list[tuple[int, int, float]] = []
    started = time.perf_counter()
    first = train_proxy(tiny_cfg(), train_cfg(), repetitive_stream(), on_step=lambda *a: seen.append(a))
    wall = time.perf_counter() - started
    steps = train_cfg().num_steps
    assert len(first.loss_curve) == steps and seen == first.loss_curve
    assert first.tokens_seen == steps * BATCH * BLOCK
    start = np.mean([loss for _, _, loss in first.loss_curve[:3]])
    end = np.mean([loss for _, _, loss in first.loss_curve[-3:]])
    assert start > 4.5 and end < start / 3  # from ~ln(257) to a memorised corpus
    second = train_proxy(tiny_cfg(), train_cfg(), repetitive_stream())
    assert second.loss_curve == first.loss_curve
    other_seed = train_proxy(tiny_cfg(), train_cfg(seed=1), repetitive_stream())
    assert other_seed.loss_curve != first.loss_curve
    assert 0 < first.seconds <= wall  # the training loop's own time, within the call's


def test_checkpoint_roundtrip_and_continuing_from_a_base(tmp_path):
    base = train_proxy(tiny_cfg(), train_cfg(), repetitive_stream())
    path = save_checkpoint(tmp_path / "base.pt", base.model, train_cfg=train_cfg(), extra={"iteration": 1})
    model, meta = load_checkpoint(path)
    idx = torch.randint(0, BYTES.vocab_size, (2, BLOCK))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], base.model.to("cpu")(idx)[0])
    assert meta["extra"] == {"iteration": 1} and meta["train_config"]["seed"] == 0
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tying survives reload
    cont = train_proxy(
        tiny_cfg(), train_cfg(token_budget=BATCH * BLOCK * 3), repetitive_stream(1), init_state=model.state_dict()
    )
    fresh = train_proxy(tiny_cfg(), train_cfg(token_budget=BATCH * BLOCK * 3), repetitive_stream(1))
    assert cont.loss_curve[0][2] < fresh.loss_curve[0][2] / 2
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")


def test_eval_fn_runs_every_eval_every_steps_and_at_end():
    cfg = train_cfg(token_budget=BATCH * BLOCK * 7, eval_every=3)
    calls: list[bool] = []

    def eval_fn(model: GPT) -> dict[str, float]:
        calls.append(model.training)
        return {"n_params": float(model.num_params())}

    result = train_proxy(tiny_cfg(), cfg, repetitive_stream(), eval_fn=eval_fn)
    assert [step for step, _, _ in result.evals] == [2, 5, 6]
    assert calls == [False] * 3  # evaluated in eval mode
    assert result.evals[0][2]["n_params"] == result.model.num_params()


def test_bad_streams_fail_clearly():
    with pytest.raises(RuntimeError, match="ran out at step 2"):
        train_proxy(tiny_cfg(), train_cfg(), [torch.zeros((BATCH, BLOCK + 1), dtype=torch.long)] * 2)
    with pytest.raises(ValueError, match="shape"):
        train_proxy(tiny_cfg(), train_cfg(), lambda: torch.zeros((BATCH, BLOCK), dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        train_proxy(tiny_cfg(), train_cfg(), lambda: torch.full((BATCH, BLOCK + 1), 300, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        train_proxy(tiny_cfg(), train_cfg(), lambda: torch.zeros((BATCH, BLOCK + 1)))
    with pytest.raises(ValueError, match="exceeds model block_size"):
        train_proxy(tiny_cfg(), train_cfg(block_size=BLOCK * 2), repetitive_stream())
    with pytest.raises(ValueError, match="schedule"):
        train_cfg(schedule="linear")


ALLOCATION_CHURN = """
import resource, sys, torch
from climb_assets.lm.train import retain_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(48 << 18)  # 48 MiB of floats, freed at once: a proxy's logits
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
plain = faults()
print(plain, faults() if retain_freed_memory() else -1)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_freed_training_memory_is_kept_instead_of_faulted_in_again():
    plain, retained = map(int, subprocess.run(
        [sys.executable, "-c", ALLOCATION_CHURN], check=True, capture_output=True, text=True).stdout.split())  # fmt: skip
    assert retained >= 0, "mallopt refused the thresholds"
    assert plain > 20 * 10_000  # each 48 MiB tensor faults in ~12k fresh pages under glibc's defaults
    assert retained < plain / 10


def test_training_restores_torch_threads():
    before = torch.get_num_threads()
    train_proxy(tiny_cfg(), train_cfg(token_budget=BATCH * BLOCK), repetitive_stream())
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_training_learns():
    cfg = train_cfg(device="cuda")
    result = train_proxy(tiny_cfg(), cfg, repetitive_stream())
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.loss_curve[-1][2] < result.loss_curve[0][2] / 3
