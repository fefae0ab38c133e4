"""What the search maximises: a measurable function of a trained proxy.

Two kinds, as in the paper: language-model loss on a held-out set the user cares about (reported as bits per
byte, so proxies with different tokenizers stay comparable), and multiple-choice tasks scored by log-likelihood
the lm-eval-harness way. ``evaluate_target`` turns either, or a weighted blend, into one ``objective`` to MAXIMISE.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from torch.nn import functional as F

from climb_assets.lm.model import GPT, pick_device
from climb_assets.lm.tokenizer import TextTokenizer


@contextmanager
def _inference(model: GPT, device: str | torch.device | None) -> Iterator[torch.device]:
    """Eval mode + no autograd on the requested device (the model's own by default); restores train mode."""
    target = pick_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(target).eval()
    try:
        with torch.inference_mode():
            yield target
    finally:
        model.train(was_training)


def _window_logprobs(
    model: GPT, windows: Sequence[Sequence[int]], score_from: Sequence[int], device: torch.device, batch_size: int
) -> list[float]:
    """For each token window, the summed log-probability (nats) of its tokens at positions >= score_from[i].

    Position 0 is never scored (nothing predicts it). Windows are batched by length to keep padding small;
    right padding cannot leak into earlier positions because attention is causal.
    """
    sums = [0.0] * len(windows)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        length = max(len(windows[i]) for i in chunk) - 1
        inputs = torch.zeros((len(chunk), length), dtype=torch.long)
        targets = torch.full((len(chunk), length), -1, dtype=torch.long)
        for row, i in enumerate(chunk):
            w, first = windows[i], score_from[i]
            inputs[row, : len(w) - 1] = torch.tensor(w[:-1])
            targets[row, first - 1 : len(w) - 1] = torch.tensor(w[first:])
        logits, _ = model(inputs.to(device))
        logp = F.log_softmax(logits.float(), dim=-1)
        targets = targets.to(device)
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        row_sums = (picked * (targets >= 0)).sum(dim=1).double().cpu().tolist()
        for row, i in enumerate(chunk):
            sums[i] = row_sums[row]
    return sums


def bits_per_byte(
    model: GPT,
    tokenizer: TextTokenizer,
    texts: Sequence[str],
    block_size: int | None = None,
    device: str | torch.device | None = None,
    *,
    batch_size: int = 16,
) -> float:
    """Total NLL of every token of every text, in bits, divided by the texts' total UTF-8 bytes.

    Each document is ``[EOT] + tokens`` (EOT gives the first token a context, as in training) cut into
    non-overlapping windows of ``block_size`` predicted tokens. Per byte, not per token, so that tokenizers
    with different vocabularies give comparable numbers.
    """
    if not texts:
        raise ValueError("bits_per_byte needs at least one text")
    block = min(block_size or model.config.block_size, model.config.block_size)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if total_bytes == 0:
        raise ValueError("bits_per_byte: all texts are empty")
    windows: list[list[int]] = []
    for ids in tokenizer.encode_batch(list(texts)):
        seq = [tokenizer.eot_id, *ids]
        windows += [seq[i : i + block + 1] for i in range(0, len(seq) - 1, block)]
    with _inference(model, device) as dev:
        logprobs = _window_logprobs(model, windows, [1] * len(windows), dev, batch_size)
    return -math.fsum(logprobs) / math.log(2) / total_bytes


def mean_hidden_states(
    model: GPT, tokenizer: TextTokenizer, texts: Sequence[str], device: str | torch.device | None = None,
    *, batch_size: int = 64,
) -> np.ndarray:
    """One vector per text: the model's final hidden states averaged over its first ``block_size`` tokens (after an
    EOT, as in training), so texts can be clustered in the model's own space. Float32 (n, n_embd)."""
    block = model.config.block_size
    ids = [[tokenizer.eot_id, *seq][:block] for seq in tokenizer.encode_batch(list(texts))]
    out = np.zeros((len(ids), model.config.n_embd), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with _inference(model, device) as dev:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            length = max(len(ids[i]) for i in chunk)
            inputs = torch.zeros((len(chunk), length), dtype=torch.long)
            mask = torch.zeros((len(chunk), length, 1))
            for row, i in enumerate(chunk):  # right padding: causal attention keeps it out of earlier positions
                inputs[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1.0
            hidden = model.hidden_states(inputs.to(dev)).float().cpu()
            out[chunk] = ((hidden * mask).sum(dim=1) / mask.sum(dim=1)).numpy()
    return out


@dataclass(frozen=True)
class MCItem:
    context: str
    choices: tuple[str, ...]
    answer: int


def _parse_mc_line(line: str, where: str) -> MCItem:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = {"context", "choices", "answer"} - obj.keys()
    if missing:
        raise ValueError(f"{where}: missing field(s) {sorted(missing)}")
    context, choices, answer = obj["context"], obj["choices"], obj["answer"]
    if not isinstance(context, str):
        raise ValueError(f"{where}: 'context' must be a string")
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise ValueError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(f"{where}: 'answer' must be an integer index into choices (0..{len(choices) - 1})")
    return MCItem(context, tuple(choices), answer)


def load_mc_tasks(path: str | os.PathLike) -> list[MCItem]:
    """Read multiple-choice items from jsonl: ``{"context": str, "choices": [str, ...], "answer": int}`` per line.

    Blank lines are skipped; any other bad line raises with its file and line number (no silent skipping).
    """
    path = Path(path)
    items = [
        _parse_mc_line(line, f"{path}, line {lineno}")
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip()
    ]
    if not items:
        raise ValueError(f"{path}: no multiple-choice items")
    return items


def _continuation_ids(tokenizer: TextTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context whitespace moves to the continuation; the continuation's tokens are
    those of ``context + continuation`` after the context's, so merges across the boundary match training."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    ctx = tokenizer.encode(stripped)
    whole = tokenizer.encode(stripped + continuation)
    return ctx, whole[len(ctx) :]


def multiple_choice_accuracy(
    model: GPT,
    tokenizer: TextTokenizer,
    items: Sequence[MCItem],
    device: str | torch.device | None = None,
    normalize: Literal["none", "length"] = "none",
    *,
    batch_size: int = 32,
) -> dict[str, float]:
    """Pick, per item, the choice whose continuation tokens have the highest summed log-likelihood.

    ``acc`` uses the raw sum; ``acc_norm`` divides by the choice's UTF-8 byte length (lm-eval's length
    normalisation, which stops long answers being penalised just for being long). ``score`` is the one that
    ``normalize`` selects.
    """
    if normalize not in ("none", "length"):
        raise ValueError(f"normalize must be 'none' or 'length', got {normalize!r}")
    if not items:
        raise ValueError("multiple_choice_accuracy needs at least one item")
    block = model.config.block_size
    windows: list[list[int]] = []
    score_from: list[int] = []
    for item in items:
        for choice in item.choices:
            ctx, cont = _continuation_ids(tokenizer, item.context, choice)
            if not 0 < len(cont) <= block:
                raise ValueError(f"choice {choice!r} is {len(cont)} tokens; it must be 1..{block} (block_size)")
            seq = [tokenizer.eot_id, *ctx, *cont][-(block + 1) :]  # keep the continuation, trim old context
            windows.append(seq)
            score_from.append(len(seq) - len(cont))
    with _inference(model, device) as dev:
        logprobs = _window_logprobs(model, windows, score_from, dev, batch_size)
    correct = correct_norm = 0
    offset = 0
    for item in items:
        lls = logprobs[offset : offset + len(item.choices)]
        offset += len(item.choices)
        normed = [ll / len(c.encode("utf-8")) for ll, c in zip(lls, item.choices, strict=True)]
        correct += max(range(len(lls)), key=lls.__getitem__) == item.answer
        correct_norm += max(range(len(normed)), key=normed.__getitem__) == item.answer
    acc, acc_norm = correct / len(items), correct_norm / len(items)
    return {"acc": acc, "acc_norm": acc_norm, "score": acc_norm if normalize == "length" else acc}


def load_target_texts(path: str | os.PathLike, text_field: str = "text") -> list[str]:
    """Held-out texts for the bpb target, from jsonl (one object per line) or Parquet (a ``text`` column)."""
    path = Path(path)
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
        if text_field not in frame.columns:
            raise ValueError(f"{path}: no column {text_field!r} (columns: {frame.columns})")
        texts = frame[text_field].to_list()
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"{path}: {len(bad)} row(s) without a string {text_field!r}, first at row {bad[0]}")
    elif path.suffix == ".jsonl":
        texts = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                raise ValueError(f"{path}, line {lineno}: expected an object with a string {text_field!r}")
            texts.append(obj[text_field])
    else:
        raise ValueError(f"{path}: target texts must be .jsonl or .parquet")
    if not texts:
        raise ValueError(f"{path}: no target texts")
    return texts


_COMPONENTS = ("bpb", "mc")


@dataclass(frozen=True)
class TargetSpec:
    """Which target the search maximises.

    kind 'bpb': objective = -bits_per_byte on the target texts (lower loss is better).
    kind 'mc': objective = multiple-choice accuracy (``acc_norm`` when mc_normalize='length').
    kind 'blend': objective = weights['bpb'] * (-bpb) + weights['mc'] * accuracy. The two live on different
    scales (bpb ~1-8, accuracy 0-1), so choose the weights with that in mind.
    """

    kind: Literal["bpb", "mc", "blend"] = "bpb"
    weights: Mapping[str, float] = field(default_factory=dict)
    mc_normalize: Literal["none", "length"] = "length"
    block_size: int | None = None  # bpb window; None = the model's block_size

    def __post_init__(self) -> None:
        if self.kind not in ("bpb", "mc", "blend"):
            raise ValueError(f"TargetSpec.kind must be 'bpb', 'mc' or 'blend', got {self.kind!r}")
        if self.mc_normalize not in ("none", "length"):
            raise ValueError(f"mc_normalize must be 'none' or 'length', got {self.mc_normalize!r}")
        if self.kind == "blend":
            if set(self.weights) != set(_COMPONENTS):
                raise ValueError(f"a blend needs weights for exactly {list(_COMPONENTS)}, got {dict(self.weights)}")
            if not all(math.isfinite(w) and w >= 0 for w in self.weights.values()) or not any(self.weights.values()):
                raise ValueError(f"blend weights must be finite, >= 0 and not all zero: {dict(self.weights)}")
        elif self.weights:
            raise ValueError(f"weights only apply to kind='blend', not {self.kind!r}")

    @property
    def needs(self) -> tuple[str, ...]:
        """The components this target evaluates ('bpb', 'mc')."""
        return _COMPONENTS if self.kind == "blend" else (self.kind,)


def evaluate_target(
    model: GPT,
    tokenizer: TextTokenizer,
    spec: TargetSpec,
    *,
    texts: Sequence[str] | None = None,
    mc_items: Sequence[MCItem] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """All metrics the spec needs plus ``objective`` (higher is better), ready to log as MLflow metrics."""
    metrics: dict[str, float] = {}
    parts: dict[str, float] = {}
    if "bpb" in spec.needs:
        if not texts:
            raise ValueError(f"target kind {spec.kind!r} needs held-out texts for bits per byte")
        metrics["bpb"] = bits_per_byte(model, tokenizer, texts, spec.block_size, device)
        parts["bpb"] = -metrics["bpb"]
    if "mc" in spec.needs:
        if not mc_items:
            raise ValueError(f"target kind {spec.kind!r} needs multiple-choice items")
        mc = multiple_choice_accuracy(model, tokenizer, mc_items, device, spec.mc_normalize)
        metrics.update(mc_acc=mc["acc"], mc_acc_norm=mc["acc_norm"])
        parts["mc"] = mc["score"]
    weights = spec.weights if spec.kind == "blend" else {spec.kind: 1.0}
    metrics["objective"] = math.fsum(weights[name] * value for name, value in parts.items())
    return metrics
