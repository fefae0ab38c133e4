"""Offline tokenizers for the proxy: a byte-level BPE trained on a sample of the lake, and a raw byte tokenizer.

Nothing may be downloaded at run time, so the BPE is trained here with HF ``tokenizers`` (seconds on a few MB of
text) and cached as one JSON file. Byte-level means every string is encodable (no unknown tokens), which keeps
bits-per-byte exact. Both tokenizers share one small interface so the trainer and the targets accept either.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from climb_assets.storage import atomic_path

EOT_TOKEN = "<|endoftext|>"


@runtime_checkable
class TextTokenizer(Protocol):
    """What the trainer and the targets need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens, plus one end-of-text id (256): vocab 257.

    EOT gets its own id rather than reusing a byte, so a document separator can never collide with text.
    Used by tests and as a tokenizer-free baseline (bits per byte = bits per token).
    """

    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i != self.eot_id).decode("utf-8", errors="replace")


class BPETokenizer:
    """A trained byte-level BPE (HF ``tokenizers``) with ``<|endoftext|>`` as the document separator."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        eot = tokenizer.token_to_id(EOT_TOKEN)
        if eot is None:
            raise ValueError(f"tokenizer has no {EOT_TOKEN!r} token; train it with train_bpe_tokenizer")
        # Text that happens to contain "<|endoftext|>" (crawls do) must stay text, never become the separator.
        tokenizer.encode_special_tokens = True
        self._tok = tokenizer
        self._eot = eot

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def eot_id(self) -> int:
        return self._eot

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as one JSON file, atomically (a crash never leaves a truncated tokenizer)."""
        final = Path(path)
        with atomic_path(final) as tmp:
            tmp.write_text(self._tok.to_str(), encoding="utf-8")
        return final


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096, *, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE on ``texts`` (a sample of the corpus is enough).

    The 256 byte symbols are always in the vocabulary, so any later text is encodable whatever the sample held.
    """
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must exceed the 256 byte symbols + EOT, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


def load_tokenizer(path: str | os.PathLike) -> BPETokenizer:
    """Load a tokenizer written by ``BPETokenizer.save``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    return BPETokenizer(Tokenizer.from_file(str(path)))
