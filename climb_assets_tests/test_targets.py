"""Targets read off a proxy: bits per byte and lm-eval-style multiple choice, on real tiny trained models."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from climb_assets.lm.model import GPT, preset
from climb_assets.lm.targets import (
    MCItem,
    TargetSpec,
    _continuation_ids,
    bits_per_byte,
    evaluate_target,
    load_mc_tasks,
    load_target_texts,
    multiple_choice_accuracy,
)
from climb_assets.lm.tokenizer import ByteTokenizer, train_bpe_tokenizer
from climb_assets.lm.train import TrainConfig, pack_documents, train_proxy

BYTES = ByteTokenizer()
BLOCK = 32
FACTS = {"the sky is": " blue.", "fresh grass is": " green.", "winter snow is": " white.", "old coal is": " black."}
TEXT_A = [f"{context}{answer}" for context, answer in FACTS.items()]
TEXT_B = ["def parse(x):\n    return {k: v for k, v in x}\n", "SELECT id, name FROM users WHERE id > 42;"]


def untrained() -> GPT:
    torch.manual_seed(0)
    return GPT(preset("tiny", vocab_size=BYTES.vocab_size, block_size=BLOCK)).eval()


@pytest.fixture(scope="module")
def trained_on_a() -> GPT:
    """A tiny byte model that has memorised the four facts (about 5 s on one CPU thread)."""
    rng = np.random.default_rng(0)

    def docs():
        while True:
            yield BYTES.encode(TEXT_A[int(rng.integers(len(TEXT_A)))])

    cfg = TrainConfig(
        token_budget=8 * BLOCK * 80, batch_size=8, block_size=BLOCK, lr=3e-3, min_lr=3e-4, num_threads=1, device="cpu"
    )
    stream = pack_documents(docs(), BLOCK, BYTES.eot_id, 8, np.random.default_rng(0))
    return train_proxy(preset("tiny", vocab_size=BYTES.vocab_size, block_size=BLOCK), cfg, stream).model


def mc_items() -> list[MCItem]:
    answers = list(FACTS.values())
    return [MCItem(context, tuple(answers), answers.index(answer)) for context, answer in FACTS.items()]


# --- bits per byte -----------------------------------------------------------------------------------------------


def test_untrained_byte_model_costs_about_eight_bits_per_byte():
    bpb = bits_per_byte(untrained(), BYTES, TEXT_A + TEXT_B)
    assert abs(bpb - math.log2(BYTES.vocab_size)) < 0.5


def test_trained_model_has_lower_bpb_on_its_own_text(trained_on_a):
    on_a = bits_per_byte(trained_on_a, BYTES, TEXT_A)
    on_b = bits_per_byte(trained_on_a, BYTES, TEXT_B)
    assert on_a < 2.0 < on_b
    assert trained_on_a.training is False


def test_bpb_matches_the_models_own_loss_and_ignores_batching():
    model = untrained()
    texts = ["short one", "a somewhat longer text here"]  # both fit one window: no cut
    nll = 0.0
    for text in texts:
        seq = torch.tensor([[BYTES.eot_id, *BYTES.encode(text)]])
        with torch.no_grad():
            _, loss = model(seq[:, :-1], seq[:, 1:])
        nll += loss.item() * (seq.shape[1] - 1)
    expected = nll / math.log(2) / sum(len(t.encode()) for t in texts)
    assert bits_per_byte(model, BYTES, texts) == pytest.approx(expected, rel=1e-5)
    long_text = [" ".join(TEXT_B) * 3, "x"]  # several windows + padding next to a 1-token document
    assert bits_per_byte(model, BYTES, long_text, batch_size=1) == pytest.approx(
        bits_per_byte(model, BYTES, long_text, batch_size=16), rel=1e-5
    )


def test_bpb_rejects_empty_input():
    with pytest.raises(ValueError, match="at least one"):
        bits_per_byte(untrained(), BYTES, [])
    with pytest.raises(ValueError, match="empty"):
        bits_per_byte(untrained(), BYTES, ["", ""])


# --- multiple choice ---------------------------------------------------------------------------------------------


def test_model_trained_on_the_answers_prefers_them(trained_on_a):
    trained = multiple_choice_accuracy(trained_on_a, BYTES, mc_items())
    assert trained["acc"] >= 0.75 and trained["acc_norm"] >= 0.75
    assert trained["score"] == trained["acc"]
    assert multiple_choice_accuracy(trained_on_a, BYTES, mc_items(), normalize="length")["score"] == trained["acc_norm"]


def test_load_mc_tasks_reads_valid_lines_and_skips_blank_ones(tmp_path):
    path = tmp_path / "mc.jsonl"
    lines = [json.dumps({"context": c, "choices": list(FACTS.values()), "answer": i}) for i, c in enumerate(FACTS)]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    items = load_mc_tasks(path)
    assert [i.context for i in items] == list(FACTS) and [i.answer for i in items] == [0, 1, 2, 3]
    assert items[0].choices == tuple(FACTS.values())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"context": "a", "choices": ["b", "c"], "answer": 0', "line 2: not valid JSON"),
        ('["a", ["b", "c"], 0]', "line 2: expected a JSON object"),
        ('{"context": "a", "choices": ["b", "c"]}', r"line 2: missing field\(s\) \['answer'\]"),
        ('{"context": "a", "choices": ["b", "c"], "answer": 2}', "line 2: 'answer' must be an integer index"),
        ('{"context": "a", "choices": ["b", "c"], "answer": true}', "line 2: 'answer' must be an integer index"),
        ('{"context": "a", "choices": ["b"], "answer": 0}', "line 2: 'choices' must be a list of at least 2"),
        ('{"context": "a", "choices": ["b", ""], "answer": 0}', "line 2: 'choices' must be a list"),
        ('{"context": 3, "choices": ["b", "c"], "answer": 0}', "line 2: 'context' must be a string"),
    ],
)
def test_load_mc_tasks_names_the_bad_line(tmp_path, line, message):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"context": "ok", "choices": ["x", "y"], "answer": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_mc_tasks(path)


def test_load_mc_tasks_rejects_an_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no multiple-choice items"):
        load_mc_tasks(path)


def test_choice_longer_than_the_block_is_an_error():
    item = MCItem("q", ("a" * (BLOCK + 1), "b"), 1)
    with pytest.raises(ValueError, match="block_size"):
        multiple_choice_accuracy(untrained(), BYTES, [item])


# --- target spec -------------------------------------------------------------------------------------------------


def test_objective_is_what_the_search_maximises(trained_on_a):
    bpb = bits_per_byte(trained_on_a, BYTES, TEXT_A)
    mc = multiple_choice_accuracy(trained_on_a, BYTES, mc_items(), normalize="length")
    by_bpb = evaluate_target(trained_on_a, BYTES, TargetSpec("bpb"), texts=TEXT_A)
    assert by_bpb == {"bpb": bpb, "objective": -bpb}
    by_mc = evaluate_target(trained_on_a, BYTES, TargetSpec("mc"), mc_items=mc_items())
    assert by_mc["objective"] == mc["acc_norm"] and by_mc["mc_acc"] == mc["acc"]
    blend = evaluate_target(
        trained_on_a, BYTES, TargetSpec("blend", {"bpb": 0.1, "mc": 1.0}), texts=TEXT_A, mc_items=mc_items()
    )
    assert blend["objective"] == pytest.approx(0.1 * -bpb + mc["acc_norm"])
    assert {"bpb", "mc_acc", "mc_acc_norm", "objective"} == set(blend)
    worse = evaluate_target(untrained(), BYTES, TargetSpec("bpb"), texts=TEXT_A)
    assert worse["objective"] < by_bpb["objective"]  # an untrained proxy scores lower


def test_target_spec_validation():
    with pytest.raises(ValueError, match="kind"):
        TargetSpec("loss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly"):
        TargetSpec("blend", {"bpb": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        TargetSpec("blend", {"bpb": 0.0, "mc": 0.0})
    with pytest.raises(ValueError, match="only apply to kind='blend'"):
        TargetSpec("bpb", {"bpb": 1.0})
    with pytest.raises(ValueError, match="needs held-out texts"):
        evaluate_target(untrained(), BYTES, TargetSpec("bpb"))
    with pytest.raises(ValueError, match="needs multiple-choice items"):
        evaluate_target(untrained(), BYTES, TargetSpec("mc"))


def test_load_target_texts_from_jsonl_and_parquet(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXT_A)) + "\n")
    parquet = tmp_path / "t.parquet"
    pl.DataFrame({"text": TEXT_B}).write_parquet(parquet)
    assert load_target_texts(jsonl) == TEXT_A
    assert load_target_texts(parquet) == TEXT_B
    jsonl.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match="t.jsonl, line 2:"):
        load_target_texts(jsonl)
    pl.DataFrame({"text": ["a", None]}).write_parquet(parquet)
    with pytest.raises(ValueError, match="first at row 1"):
        load_target_texts(parquet)
    with pytest.raises(ValueError, match=".jsonl or .parquet"):
        load_target_texts(tmp_path / "t.csv")


def test_continuation_split_follows_lm_eval_with_bpe():
    """Trailing context whitespace moves into the continuation, so ' blue.' is scored as BPE would tokenize it."""
    tok = train_bpe_tokenizer([" ".join(TEXT_A)] * 30, vocab_size=300)
    ctx, cont = _continuation_ids(tok, "the sky is ", "blue.")
    assert tok.decode(ctx) == "the sky is" and tok.decode(cont) == " blue."
    assert ctx + cont == tok.encode("the sky is blue.")
