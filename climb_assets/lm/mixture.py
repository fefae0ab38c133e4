"""The training stream for proxies and for ClimbMix: super-clusters drawn by token-weighted mixture.

Weights are shares of TOKENS (not documents), as in CLIMB/RegMix. A group is never repeated more than ``max_repeats``
epochs (scarce data repeated too often is a known pitfall of proxies), and the share it cannot supply is given to the
other groups in proportion to their weights. Every such redistribution is reported in the stats, so a run never
silently trains on a mixture it was not asked for.

Two ways to draw: ``plan`` walks each group's shuffled documents whole, in epochs (ClimbMix, a dataset of
documents); ``window_plan`` draws training windows of each group, nanoGPT's way, with each group's window count fixed
by its weight (a proxy's stream). A 100k-token proxy sees ~800 windows from ~800 documents instead of ~170 whole
documents, and how many of them come from each group never varies: at random token positions the pooled seed sd of
the proof's six mixtures falls 1.2x on the demo corpus and 1.4x on packages; spread evenly over each group's stream
(``spread_points``, the default) it falls a further 1.46x and 1.25x (README, "Seed noise of the proxies").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TextSource = Sequence[str] | Callable[[np.ndarray], Sequence[str]]


@dataclass(frozen=True)
class DocPool:
    """The documents of one group (super-cluster): ids, token counts and texts (a sequence, a lazy loader or None).

    A loader is called with an int array of document indices and returns their texts in that order. ``texts=None``
    is a tokens-only pool (the search corpus: its texts are fetched from the raw shards by the caller, only for the
    drawn documents, and its ids may be positions).
    """

    doc_ids: Sequence[str] | range
    n_tokens: np.ndarray
    texts: TextSource | None = None

    def __post_init__(self) -> None:
        tokens = np.asarray(self.n_tokens, dtype=np.int64)
        if tokens.ndim != 1 or len(tokens) != len(self.doc_ids):
            raise ValueError(f"n_tokens must be 1-D with one entry per doc ({len(self.doc_ids)}), got {tokens.shape}")
        if (tokens < 0).any():
            raise ValueError("n_tokens must be non-negative")
        if self.texts is not None and not callable(self.texts) and len(self.texts) != len(self.doc_ids):
            raise ValueError(f"texts has {len(self.texts)} entries for {len(self.doc_ids)} doc ids")
        object.__setattr__(self, "n_tokens", tokens)

    @property
    def total_tokens(self) -> int:
        return int(self.n_tokens.sum())

    def texts_for(self, indices: np.ndarray) -> list[str]:
        if self.texts is None:
            raise ValueError("this pool holds token counts only, no texts")
        if callable(self.texts):
            texts = list(self.texts(indices))
            if len(texts) != len(indices):
                raise ValueError(f"loader returned {len(texts)} texts for {len(indices)} indices")
            return texts
        return [self.texts[i] for i in indices]


@dataclass(frozen=True)
class GroupStats:
    requested_weight: float
    effective_weight: float
    available_tokens: int
    tokens: int
    docs: int
    epochs: float
    capped: bool


@dataclass(frozen=True)
class MixtureStats:
    token_budget: int
    max_repeats: float
    total_tokens: int
    groups: dict[int, GroupStats]
    capped_groups: list[int]
    realised_shares: dict[int, float]
    redistributed_share: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for asset metadata, MLflow params and the ClimbMix manifest)."""
        return {
            "token_budget": self.token_budget,
            "max_repeats": self.max_repeats,
            "total_tokens": self.total_tokens,
            "capped_groups": list(self.capped_groups),
            "redistributed_share": self.redistributed_share,
            "realised_shares": {str(g): s for g, s in self.realised_shares.items()},
            "groups": {str(g): asdict(s) for g, s in self.groups.items()},
        }


@dataclass(frozen=True)
class MixturePlan:
    """Draws in stream order: ``groups[i]`` and ``doc_indices[i]`` (index into that group's DocPool)."""

    groups: np.ndarray
    doc_indices: np.ndarray
    stats: MixtureStats

    def __len__(self) -> int:
        return len(self.groups)


def normalise_weights(
    weights: Mapping[int, float] | Sequence[float] | np.ndarray, groups: Sequence[int], *, tol: float = 1e-3
) -> dict[int, float]:
    """Validate weights against the known groups and return them renormalised to sum to exactly 1.

    A sequence/array is read in the order of ``groups``; a mapping may omit groups (weight 0) but not name
    unknown ones.
    """
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(groups))
        if unknown:
            raise ValueError(f"weights name groups that do not exist: {unknown}")
        vector = np.array([float(weights.get(g, 0.0)) for g in groups])
    else:
        vector = np.asarray(weights, dtype=np.float64)
        if vector.shape != (len(groups),):
            raise ValueError(f"expected {len(groups)} weights (one per group, in group order), got {vector.shape}")
    if not np.isfinite(vector).all() or (vector < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {vector.tolist()}")
    total = float(vector.sum())
    if abs(total - 1.0) > tol:
        raise ValueError(f"weights must sum to 1 (within {tol}), got {total:.6f}")
    return {g: float(w) for g, w in zip(groups, vector / total)}


def cap_and_redistribute(
    targets: Mapping[int, float], capacity: Mapping[int, float]
) -> tuple[dict[int, float], set[int]]:
    """Water-fill token targets under per-group capacities.

    A group whose target exceeds its capacity is held at capacity and the excess goes to the still-uncapped groups
    in proportion to their targets, repeated until nothing exceeds (one pass can push another group over).
    """
    result = dict(targets)
    capped: set[int] = set()
    while True:
        over = {g for g, t in result.items() if g not in capped and t > capacity[g]}
        if not over:
            return result, capped
        excess = sum(result[g] - capacity[g] for g in over)
        for g in over:
            result[g] = float(capacity[g])
        capped |= over
        free = {g: t for g, t in result.items() if g not in capped and t > 0}
        free_total = sum(free.values())
        if free_total <= 0:
            raise ValueError(
                f"token budget cannot be met: {excess:.0f} tokens over the repetition cap of every weighted group"
                " (add data, raise max_repeats or lower the budget)"
            )
        for g, t in free.items():
            result[g] = t + excess * t / free_total


def _walk_group(tokens: np.ndarray, target: float, capacity: float, rng: np.random.Generator) -> np.ndarray:
    """Doc indices for one group: reshuffled each epoch, as near ``target`` tokens as whole documents come (a document
    is taken when its first half falls before the target, so a group misses its share by at most half a document, in
    either direction, and no group is favoured by its documents' length), never past ``capacity`` tokens."""
    if target <= 0:
        return np.empty(0, dtype=np.int64)
    drawn: list[np.ndarray] = []
    cum = 0
    while cum < target:
        perm = rng.permutation(len(tokens))
        ends = cum + np.cumsum(tokens[perm])
        starts = ends - tokens[perm]
        # Take docs whose midpoint comes before the target and that end within the cap (both prefixes of the epoch).
        take = min(int(np.searchsorted((starts + ends) / 2, target, side="left")), int(np.searchsorted(ends, capacity, "right")))
        drawn.append(perm[:take])
        if take == 0:
            break
        cum = int(ends[take - 1])
        if take < len(perm):
            break
    return np.concatenate(drawn) if drawn else np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class WindowPlan:
    """Training windows in stream order: window ``i`` starts ``offsets[i]`` tokens into the ``doc_indices[i]``-th
    document of group ``groups[i]`` (offset 0 is the boundary token before it) and runs on into the group's next ones."""

    groups: np.ndarray
    doc_indices: np.ndarray
    offsets: np.ndarray
    stats: MixtureStats

    def __len__(self) -> int:
        return len(self.groups)


def spread_points(count: int, shift: float) -> np.ndarray:
    """The first ``count`` points of the base-2 van der Corput sequence (0, 1/2, 1/4, 3/4, 1/8, ...) shifted by
    ``shift`` modulo 1: a randomised quasi-Monte Carlo draw in [0, 1). Every prefix covers the interval evenly, so a
    group's first k windows are the same in every mixture that draws k or more (as random draws are) and still spread
    over its whole token stream: its documents are sorted by id (source, package, URL), so windows reach every part of
    a super-cluster in proportion instead of piling up in a few documents by chance."""
    index = np.arange(count, dtype=np.int64)
    points, scale = np.zeros(count), 0.5
    while index.any():
        points += scale * (index & 1)
        index >>= 1
        scale /= 2
    return (points + shift) % 1.0


def window_counts(targets: np.ndarray, total: int, capped: np.ndarray) -> np.ndarray:
    """Whole window counts summing to ``total``: a capped group its target rounded down (never past its cap), the rest
    shared among the uncapped groups with a positive target by largest remainder (a zero weight never gets a window)."""
    counts = np.where(capped, np.floor(targets), 0).astype(np.int64)
    free = ~capped & (targets > 0)
    rest = total - int(counts.sum())
    if rest and not free.any():
        raise ValueError(f"token budget cannot be met: {rest} windows over the repetition cap of every weighted group")
    if free.any():
        share = targets[free] / targets[free].sum() * rest
        whole = np.floor(share).astype(np.int64)
        whole[np.argsort(-(share - whole), kind="stable")[: rest - int(whole.sum())]] += 1
        counts[free] = whole
    return counts


class MixtureSampler:
    """Draws documents (or windows) from groups by token share, with an epoch cap per group; deterministic for a seed."""

    def __init__(
        self,
        docs_by_group: Mapping[int, DocPool],
        weights: Mapping[int, float] | Sequence[float] | np.ndarray,
        *,
        token_budget: int,
        max_repeats: float = 4.0,
        seed: int = 0,
        tol: float = 1e-3,
    ) -> None:
        if token_budget <= 0:
            raise ValueError(f"token_budget must be positive, got {token_budget}")
        if max_repeats <= 0:
            raise ValueError(f"max_repeats must be positive, got {max_repeats}")
        self.groups = sorted(docs_by_group)
        if not self.groups:
            raise ValueError("no groups to sample from")
        if any(not isinstance(g, (int, np.integer)) or g < 0 for g in self.groups):
            raise ValueError(f"group ids must be non-negative ints (super-cluster ids), got {self.groups}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.pools = dict(docs_by_group)
        self.weights = normalise_weights(weights, self.groups, tol=tol)
        empty = [g for g in self.groups if self.weights[g] > 0 and self.pools[g].total_tokens == 0]
        if empty:
            raise ValueError(f"nonzero weight on groups with no tokens: {empty}")
        self.token_budget = int(token_budget)
        self.max_repeats = float(max_repeats)
        self.seed = int(seed)
        self._plan: MixturePlan | None = None

    def plan(self) -> MixturePlan:
        """The ordered draws and their stats (computed once; the same for the same inputs and seed)."""
        if self._plan is None:
            self._plan = self._build_plan()
        return self._plan

    def _build_plan(self) -> MixturePlan:
        targets = {g: self.weights[g] * self.token_budget for g in self.groups}
        capacity = {g: self.max_repeats * self.pools[g].total_tokens for g in self.groups}
        effective, capped = cap_and_redistribute(targets, capacity)
        per_group: dict[int, np.ndarray] = {}
        stats: dict[int, GroupStats] = {}
        for g in self.groups:
            pool = self.pools[g]
            # A per-group stream keyed by (seed, group) keeps a group's draws independent of the other groups.
            idx = _walk_group(pool.n_tokens, effective[g], capacity[g], np.random.default_rng([self.seed, 0, g]))
            per_group[g] = idx
            drawn = int(pool.n_tokens[idx].sum())
            stats[g] = GroupStats(
                requested_weight=self.weights[g],
                effective_weight=effective[g] / self.token_budget,
                available_tokens=pool.total_tokens,
                tokens=drawn,
                docs=len(idx),
                epochs=drawn / pool.total_tokens if pool.total_tokens else 0.0,
                capped=g in capped,
            )
        total = sum(s.tokens for s in stats.values())
        groups = np.concatenate([np.full(len(per_group[g]), g, dtype=np.int64) for g in self.groups])
        indices = np.concatenate([per_group[g] for g in self.groups]).astype(np.int64)
        order = np.random.default_rng([self.seed, 1]).permutation(len(groups))
        return MixturePlan(
            groups=groups[order],
            doc_indices=indices[order],
            stats=MixtureStats(
                token_budget=self.token_budget,
                max_repeats=self.max_repeats,
                total_tokens=total,
                groups=stats,
                capped_groups=sorted(capped),
                realised_shares={g: (s.tokens / total if total else 0.0) for g, s in stats.items()},
                redistributed_share=sum(self.weights[g] - stats[g].effective_weight for g in capped),
            ),
        )

    def window_plan(self, window_tokens: int, *, spread: bool = True) -> WindowPlan:
        """``token_budget // window_tokens`` windows, each group's count fixed by its (capped) weight.

        A window starts at a token of its group (documents weighted by length, each with its boundary token): at
        ``spread_points`` of the group's token stream (``spread``) or at independent uniformly random tokens. A
        group's windows come from a stream keyed by (seed, group), so the first k windows of a group are the same in
        every mixture that gives it k or more (common random numbers across the proxies of a search).
        """
        if window_tokens < 1 or self.token_budget < window_tokens:
            raise ValueError(f"window_tokens must be in [1, token_budget={self.token_budget}], got {window_tokens}")
        n_windows = self.token_budget // window_tokens
        total = n_windows * window_tokens
        targets = {g: self.weights[g] * total for g in self.groups}
        capacity = {g: self.max_repeats * self.pools[g].total_tokens for g in self.groups}
        effective, capped = cap_and_redistribute(targets, capacity)
        counts = window_counts(np.array([effective[g] / window_tokens for g in self.groups]), n_windows,
                               np.array([g in capped for g in self.groups]))  # fmt: skip
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        stats: dict[int, GroupStats] = {}
        for g, count in zip(self.groups, counts.tolist()):
            pool = self.pools[g]
            ends = np.cumsum(pool.n_tokens + 1)  # every document with its boundary token
            stream = np.random.default_rng([self.seed, 3, g])
            unit = spread_points(count, stream.random()) if spread else stream.random(count)
            starts = (unit * (ends[-1] if len(ends) else 0)).astype(np.int64)
            docs = np.searchsorted(ends, starts, side="right")
            offsets = starts - (ends[docs] - pool.n_tokens[docs] - 1)
            parts.append((np.full(count, g, dtype=np.int64), docs, offsets))
            tokens = count * window_tokens
            stats[g] = GroupStats(
                requested_weight=self.weights[g], effective_weight=effective[g] / total,
                available_tokens=pool.total_tokens, tokens=tokens, docs=len(np.unique(docs)),
                epochs=tokens / pool.total_tokens if pool.total_tokens else 0.0, capped=g in capped,
            )  # fmt: skip
        groups, doc_indices, offsets = (np.concatenate(column) for column in zip(*parts))
        order = np.random.default_rng([self.seed, 4]).permutation(n_windows)
        return WindowPlan(
            groups=groups[order], doc_indices=doc_indices[order], offsets=offsets[order],
            stats=MixtureStats(
                token_budget=self.token_budget, max_repeats=self.max_repeats, total_tokens=total, groups=stats,
                capped_groups=sorted(capped), realised_shares={g: s.tokens / total for g, s in stats.items()},
                redistributed_share=sum(self.weights[g] - stats[g].effective_weight for g in capped),
            ),
        )  # fmt: skip

    def iter_records(self, chunk_size: int = 1024) -> Iterator[tuple[int, str, str]]:
        """(group, doc_id, text) in stream order; texts are fetched one chunk at a time, one call per group."""
        plan = self.plan()
        for start in range(0, len(plan), chunk_size):
            groups = plan.groups[start : start + chunk_size]
            indices = plan.doc_indices[start : start + chunk_size]
            texts: list[str | None] = [None] * len(groups)
            for g in np.unique(groups):
                positions = np.flatnonzero(groups == g)
                for pos, text in zip(positions, self.pools[int(g)].texts_for(indices[positions])):
                    texts[pos] = text
            for g, i, text in zip(groups, indices, texts):
                yield int(g), self.pools[int(g)].doc_ids[i], text  # type: ignore[misc]
