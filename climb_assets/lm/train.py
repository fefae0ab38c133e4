"""Train one proxy model on a token stream for a fixed token budget (the inner loop of the CLIMB search).

Every proxy of one search iteration must differ only in its data mixture, so everything else is pinned here:
the token budget decides the step count, the seed decides initialisation and dropout, and the caller decides
the data order. All hyperparameters live in ``TrainConfig`` so they can be logged as MLflow params verbatim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from climb_assets.lm.model import GPT, GPTConfig, pick_device
from climb_assets.storage import atomic_path

BatchSource = Iterable[torch.Tensor] | Callable[[], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """One run's optimisation; the budget, shape and learning rates come from the caller (``ProxySettings``)."""

    token_budget: int
    batch_size: int
    block_size: int
    lr: float
    min_lr: float
    grad_accum: int = 1  # micro-batches per optimizer step (large paper batches on one GPU)
    warmup_frac: float = 0.05
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_frac: float = 0.2  # WSD only: final fraction of steps that decays linearly to min_lr
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    device: str = "auto"  # "auto" = CUDA when present, else CPU
    bf16: bool | None = None  # None = autocast to bf16 on CUDA with bf16 support, off on CPU
    eval_every: int = 0  # steps between eval_fn calls (0 = only at the end, if eval_fn is given)
    num_threads: int | None = None  # CPU intra-op threads; None = all cores available to this process

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "wsd"):
            raise ValueError(f"schedule must be 'cosine' or 'wsd', got {self.schedule!r}")
        for name in ("token_budget", "batch_size", "block_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (0.0 <= self.warmup_frac < 1.0 and 0.0 <= self.decay_frac <= 1.0):
            raise ValueError("warmup_frac must be in [0, 1) and decay_frac in [0, 1]")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size * self.grad_accum

    @property
    def num_steps(self) -> int:
        """Optimizer steps needed to see at least ``token_budget`` tokens."""
        return math.ceil(self.token_budget / self.tokens_per_step)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay or WSD (warmup-stable-decay) down to ``min_lr``."""
    n = cfg.num_steps
    warmup = round(cfg.warmup_frac * n)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, n - 1 - warmup)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (cfg.lr - cfg.min_lr)
    decay_start = n - round(cfg.decay_frac * n)
    if step < decay_start:
        return cfg.lr
    progress = (step - decay_start + 1) / max(1, n - decay_start)
    return cfg.lr - min(progress, 1.0) * (cfg.lr - cfg.min_lr)


@dataclass
class TrainResult:
    model: GPT
    loss_curve: list[tuple[int, int, float]]  # (step, tokens seen after the step, train loss of the step)
    tokens_seen: int
    seconds: float
    evals: list[tuple[int, int, dict[str, float]]] = field(default_factory=list)  # (step, tokens, eval_fn(model))

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds > 0 else float("nan")

    @property
    def final_loss(self) -> float:
        return self.loss_curve[-1][2]


def _batch_reader(source: BatchSource) -> Callable[[], torch.Tensor | None]:
    """One ``next batch or None`` function over an iterable or a zero-argument callable."""
    if callable(source) and not isinstance(source, Iterable):
        return source
    iterator = iter(source)
    return lambda: next(iterator, None)


def _check_batch(batch: torch.Tensor | None, cfg: TrainConfig, vocab_size: int, step: int) -> torch.Tensor:
    """Reject batches that would silently train on the wrong shape or crash deep inside the embedding."""
    if batch is None:
        raise RuntimeError(
            f"the token stream ran out at step {step} of {cfg.num_steps}: "
            f"it must supply token_budget={cfg.token_budget} tokens"
        )
    expected = (cfg.batch_size, cfg.block_size + 1)
    if batch.ndim != 2 or tuple(batch.shape) != expected:
        raise ValueError(f"batch at step {step} has shape {tuple(batch.shape)}, expected {expected}")
    if batch.dtype.is_floating_point or batch.dtype == torch.bool:
        raise TypeError(f"batch at step {step} must hold integer token ids, got {batch.dtype}")
    low, high = int(batch.min()), int(batch.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"batch at step {step} has token ids in [{low}, {high}], outside [0, {vocab_size})")
    return batch.long()


def _use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.bf16 is not None:
        return cfg.bf16
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases), as in GPT-2/nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")


# glibc hands every allocation above 32 MiB (a proxy's logits: batch x block x vocab floats) straight back to the
# kernel when it is freed, so each step faults the same memory in again: a third of CPU training time went to the
# kernel (1.8M page faults per 100k-token proxy). Keeping up to these sizes in the heap costs ~0.1 GiB of resident
# memory and makes a tiny proxy 1.4x faster on the 2-core machine (benchmarks/bench_proxy_step.py).
MALLOC_MMAP_THRESHOLD = 256 << 20
MALLOC_TRIM_THRESHOLD = 512 << 20


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); False where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD))


@contextmanager
def cpu_threads(num_threads: int | None) -> Iterator[int]:
    """Run with ``num_threads`` intra-op threads (None = every core this process may use), then restore.

    Restoring keeps one proxy's setting from leaking into the rest of the process. On a busy machine (several
    Dagster steps at once) fewer threads than cores is faster: oversubscribed OpenMP threads spin and stall.
    """
    previous = torch.get_num_threads()
    n = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


def train_proxy(
    model_cfg: GPTConfig,
    train_cfg: TrainConfig,
    token_batches: BatchSource,
    *,
    init_state: Mapping[str, torch.Tensor] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    eval_fn: Callable[[GPT], dict[str, float]] | None = None,
) -> TrainResult:
    """Train a fresh proxy (or continue from ``init_state``, a shared base checkpoint) for the token budget.

    ``token_batches`` yields int tensors of shape (batch_size, block_size + 1): inputs are ``[:, :-1]``, targets
    ``[:, 1:]``. ``on_step(step, tokens_seen, loss)`` runs after every optimizer step (logging);
    ``eval_fn(model)`` every ``eval_every`` steps and at the end, with the model in eval mode.
    """
    if train_cfg.block_size > model_cfg.block_size:
        raise ValueError(f"train block_size {train_cfg.block_size} exceeds model block_size {model_cfg.block_size}")
    device = pick_device(train_cfg.device)
    if device.type == "cpu":
        retain_freed_memory()
    threads = cpu_threads(train_cfg.num_threads) if device.type == "cpu" else nullcontext()
    with threads:
        return _train(model_cfg, train_cfg, device, token_batches, init_state, on_step, eval_fn)


def _train(
    model_cfg: GPTConfig,
    train_cfg: TrainConfig,
    device: torch.device,
    token_batches: BatchSource,
    init_state: Mapping[str, torch.Tensor] | None,
    on_step: Callable[[int, int, float], None] | None,
    eval_fn: Callable[[GPT], dict[str, float]] | None,
) -> TrainResult:
    torch.manual_seed(train_cfg.seed)
    model = GPT(model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    optimizer = _optimizer(model, train_cfg, device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=_use_bf16(train_cfg, device))
    next_batch = _batch_reader(token_batches)
    loss_curve: list[tuple[int, int, float]] = []
    evals: list[tuple[int, int, dict[str, float]]] = []

    def run_eval(step: int, tokens: int) -> None:
        model.eval()
        with torch.no_grad():
            evals.append((step, tokens, eval_fn(model)))
        model.train()

    tokens_seen = 0
    start = time.perf_counter()
    model.train()
    for step in range(train_cfg.num_steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(train_cfg, step)
        step_loss = torch.zeros((), device=device)
        for _ in range(train_cfg.grad_accum):
            batch = _check_batch(next_batch(), train_cfg, model_cfg.vocab_size, step).to(device, non_blocking=True)
            with autocast:
                _, loss = model(batch[:, :-1], batch[:, 1:])
            (loss / train_cfg.grad_accum).backward()
            step_loss += loss.detach() / train_cfg.grad_accum
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += train_cfg.tokens_per_step
        loss_value = float(step_loss)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value} at step {step}; lower lr or check data")
        loss_curve.append((step, tokens_seen, loss_value))
        if on_step is not None:
            on_step(step, tokens_seen, loss_value)
        last = step == train_cfg.num_steps - 1
        if eval_fn is not None and (last or (train_cfg.eval_every and (step + 1) % train_cfg.eval_every == 0)):
            run_eval(step, tokens_seen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    model.eval()
    return TrainResult(model, loss_curve, tokens_seen, time.perf_counter() - start, evals)


def pack_documents(
    token_lists: Iterable[Sequence[int]],
    block_size: int,
    eot_id: int,
    batch_size: int,
    rng: np.random.Generator | int | None = None,
    *,
    shuffle_batches: int = 8,
) -> Iterator[torch.Tensor]:
    """Concatenate documents, each preceded by ``eot_id``, and cut the stream into (batch_size, block_size+1) batches.

    Windows are shuffled within a pool of ``shuffle_batches`` batches (when ``rng`` is given) so that one batch
    is not one long document. This is a stream: the final tail shorter than one batch is not yielded.
    """
    if block_size < 1 or batch_size < 1 or shuffle_batches < 1:
        raise ValueError("block_size, batch_size and shuffle_batches must be >= 1")
    gen = np.random.default_rng(rng) if isinstance(rng, int) else rng
    window = block_size + 1
    pool_tokens = window * batch_size * shuffle_batches
    eot = np.array([eot_id], dtype=np.int64)
    pending: list[np.ndarray] = []
    n_pending = 0
    rows = np.empty((0, window), dtype=np.int64)  # cut windows not yet yielded

    def cut(final: bool) -> Iterator[torch.Tensor]:
        nonlocal pending, n_pending, rows
        stream = np.concatenate(pending)
        n_windows = len(stream) // window
        new_rows = stream[: n_windows * window].reshape(n_windows, window)
        if gen is not None:
            new_rows = new_rows[gen.permutation(n_windows)]
        rows = np.concatenate([rows, new_rows])
        rest = stream[n_windows * window :]
        pending, n_pending = [rest], len(rest)
        n_batches = len(rows) // batch_size
        for b in range(n_batches):
            yield torch.from_numpy(rows[b * batch_size : (b + 1) * batch_size].copy())
        rows = rows[n_batches * batch_size :]
        if final:
            rows = rows[:0]

    for doc in token_lists:
        pending += [eot, np.asarray(doc, dtype=np.int64)]
        n_pending += len(doc) + 1
        if n_pending >= pool_tokens:
            yield from cut(final=False)
    if n_pending:
        yield from cut(final=True)


def save_checkpoint(
    path: str | os.PathLike,
    model: GPT,
    *,
    train_cfg: TrainConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model config + weights (+ training config, + plain-data ``extra``) atomically, on CPU tensors."""
    payload = {
        "model_config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": asdict(train_cfg) if train_cfg is not None else None,
        "extra": extra or {},
    }
    final = Path(path)
    with atomic_path(final) as tmp:
        torch.save(payload, tmp)
    return final


def load_checkpoint(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> tuple[GPT, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, the payload without weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**payload["model_config"]))
    model.load_state_dict(payload.pop("state_dict"))
    model.to(pick_device(device)).eval()
    return model, payload
