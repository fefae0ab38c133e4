from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from climb_assets.lm.mixture import DocPool, MixtureSampler, cap_and_redistribute, spread_points


def make_pool(group: int, n_docs: int, tokens: int | np.ndarray) -> DocPool:
    counts = np.full(n_docs, tokens) if np.isscalar(tokens) else np.asarray(tokens)
    ids = [f"g{group}-d{i}" for i in range(n_docs)]
    return DocPool(doc_ids=ids, n_tokens=counts, texts=[f"text of {d}" for d in ids])


@pytest.fixture
def pools() -> dict[int, DocPool]:
    rng = np.random.default_rng(0)
    return {
        0: make_pool(0, 200, 10),
        1: make_pool(1, 300, rng.integers(5, 16, size=300)),
        2: make_pool(2, 10, 10),  # scarce: 100 tokens in all
    }


def test_realised_token_shares_follow_weights(pools: dict[int, DocPool]) -> None:
    weights = {0: 0.5, 1: 0.4, 2: 0.1}
    plan = MixtureSampler(pools, weights, token_budget=2_000, max_repeats=4, seed=1).plan()
    stats = plan.stats
    assert stats.capped_groups == []
    assert abs(stats.total_tokens - 2_000) <= (10 + 15 + 10) / 2  # half a document per group at most
    for g, w in weights.items():
        assert stats.realised_shares[g] == pytest.approx(w, abs=0.01)
        drawn = plan.doc_indices[plan.groups == g]
        assert stats.groups[g].docs == len(drawn)
        assert stats.groups[g].tokens == int(pools[g].n_tokens[drawn].sum())


def test_a_group_misses_its_share_by_at_most_half_a_document_either_way() -> None:
    """Whole documents are taken while their midpoint is before the target: long documents do not inflate small
    shares (taking every document that starts before the target gave a 6% group 12% in a 30k-token ClimbMix)."""
    pools = {0: make_pool(0, 50, 1_000), 1: make_pool(1, 5_000, 10)}
    for seed in range(5):
        stats = MixtureSampler(pools, [0.06, 0.94], token_budget=30_000, seed=seed).plan().stats
        assert abs(stats.groups[0].tokens - 1_800) <= 500 and abs(stats.groups[1].tokens - 28_200) <= 5
        assert stats.groups[0].tokens == 2_000  # 1.8 documents round to 2, not up to the first past the target
    assert MixtureSampler(pools, [0.01, 0.99], token_budget=30_000, seed=0).plan().stats.groups[0].tokens == 0


def test_weights_are_token_shares_not_document_shares() -> None:
    pools = {0: make_pool(0, 100, 100), 1: make_pool(1, 1_000, 10)}
    plan = MixtureSampler(pools, [0.5, 0.5], token_budget=5_000, seed=0).plan()
    assert plan.stats.groups[0].tokens == plan.stats.groups[1].tokens == 2_500
    assert plan.stats.groups[1].docs == 10 * plan.stats.groups[0].docs


def test_documents_are_walked_in_epochs(pools: dict[int, DocPool]) -> None:
    plan = MixtureSampler(pools, {0: 0.3, 1: 0.3, 2: 0.4}, token_budget=800, max_repeats=4, seed=3).plan()
    counts = Counter(plan.doc_indices[plan.groups == 2].tolist())
    # 320 tokens from a 100-token group: every doc 3 times, then a partial 4th epoch; never a 5th.
    assert set(counts) == set(range(10))
    assert set(counts.values()) <= {3, 4}
    assert plan.stats.groups[2].epochs == pytest.approx(3.2)


def test_repetition_cap_holds_and_leftover_is_redistributed_and_reported(pools: dict[int, DocPool]) -> None:
    weights = {0: 0.3, 1: 0.2, 2: 0.5}  # group 2 would need 10 epochs of its 100 tokens
    sampler = MixtureSampler(pools, weights, token_budget=2_000, max_repeats=4, seed=0)
    stats = sampler.plan().stats
    assert stats.capped_groups == [2]
    assert stats.groups[2].capped and stats.groups[2].epochs == pytest.approx(4.0)
    assert max(Counter(sampler.plan().doc_indices[sampler.plan().groups == 2].tolist()).values()) == 4
    assert stats.groups[2].effective_weight == pytest.approx(0.2)
    assert stats.redistributed_share == pytest.approx(0.3)
    # The freed 0.3 goes to groups 0 and 1 in proportion 3:2.
    assert stats.groups[0].effective_weight == pytest.approx(0.3 + 0.3 * 0.6)
    assert stats.groups[1].effective_weight == pytest.approx(0.2 + 0.3 * 0.4)
    assert abs(stats.total_tokens - 2_000) <= (10 + 15) / 2  # the capped group is exact
    assert json.loads(json.dumps(stats.to_dict()))["capped_groups"] == [2]


def test_redistribution_cascades_when_it_pushes_another_group_over() -> None:
    effective, capped = cap_and_redistribute({0: 60.0, 1: 30.0, 2: 10.0}, {0: 20.0, 1: 35.0, 2: 1_000.0})
    assert capped == {0, 1}
    assert effective == pytest.approx({0: 20.0, 1: 35.0, 2: 45.0})


def test_budget_beyond_every_cap_is_an_error(pools: dict[int, DocPool]) -> None:
    with pytest.raises(ValueError, match="cannot be met"):
        MixtureSampler(pools, {0: 0.5, 2: 0.5}, token_budget=100_000, max_repeats=2).plan()


def test_plan_is_deterministic_for_a_seed(pools: dict[int, DocPool]) -> None:
    weights = {0: 0.5, 1: 0.4, 2: 0.1}
    a = MixtureSampler(pools, weights, token_budget=1_500, seed=7).plan()
    b = MixtureSampler(pools, weights, token_budget=1_500, seed=7).plan()
    c = MixtureSampler(pools, weights, token_budget=1_500, seed=8).plan()
    assert np.array_equal(a.groups, b.groups) and np.array_equal(a.doc_indices, b.doc_indices)
    assert not np.array_equal(a.doc_indices, c.doc_indices)


def test_stream_is_interleaved_and_texts_follow_the_plan(pools: dict[int, DocPool]) -> None:
    calls: list[int] = []
    base = pools[1]

    def loader(indices: np.ndarray) -> list[str]:
        calls.append(len(indices))
        return [f"text of {base.doc_ids[i]}" for i in indices]

    pools = {**pools, 1: DocPool(base.doc_ids, base.n_tokens, loader)}
    sampler = MixtureSampler(pools, [0.5, 0.5, 0.0], token_budget=1_000, seed=2)
    plan = sampler.plan()
    records = list(sampler.iter_records(chunk_size=64))
    assert [r[0] for r in records] == plan.groups.tolist()
    assert [r[1] for r in records] == [pools[g].doc_ids[i] for g, i in zip(plan.groups, plan.doc_indices)]
    assert sum(calls) == int((plan.groups == 1).sum()) and max(calls) <= 64
    first_half = plan.groups[: len(plan) // 2]
    assert 0.3 < (first_half == 0).mean() < 0.7  # not group-by-group


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({0: 0.7, 1: 0.5}, "sum to 1"),
        ({0: 1.2, 1: -0.2}, "non-negative"),
        ({0: 0.5, 9: 0.5}, "do not exist"),
        ([0.5, 0.5], "expected 3 weights"),
        ({0: 0.5, 1: float("nan"), 2: 0.5}, "finite"),
    ],
)
def test_bad_weights_are_rejected(pools: dict[int, DocPool], weights: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MixtureSampler(pools, weights, token_budget=100)  # type: ignore[arg-type]


def test_nonzero_weight_on_an_empty_group_is_an_error(pools: dict[int, DocPool]) -> None:
    pools = {**pools, 3: make_pool(3, 0, np.zeros(0, dtype=np.int64))}
    assert MixtureSampler(pools, {0: 1.0}, token_budget=100).plan().stats.groups[3].docs == 0
    with pytest.raises(ValueError, match="no tokens"):
        MixtureSampler(pools, {0: 0.9, 3: 0.1}, token_budget=100)


def test_doc_pool_validates_its_columns() -> None:
    with pytest.raises(ValueError, match="one entry per doc"):
        DocPool(["a", "b"], np.array([1]), ["x", "y"])
    with pytest.raises(ValueError, match="non-negative"):
        DocPool(["a"], np.array([-1]), ["x"])
    with pytest.raises(ValueError, match="texts has"):
        DocPool(["a", "b"], np.array([1, 2]), ["x"])


def test_tokens_only_pool_samples_but_has_no_texts():
    pool = DocPool(range(3), np.array([5, 7, 9]))
    plan = MixtureSampler({0: pool}, [1.0], token_budget=20, seed=0).plan()
    assert abs(plan.stats.total_tokens - 20) <= 9 / 2 and set(plan.doc_indices.tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="token counts only"):
        pool.texts_for(np.array([0]))


def test_window_plan_fixes_each_groups_window_count_by_its_weight(pools: dict[int, DocPool]) -> None:
    plan = MixtureSampler(pools, {0: 0.5, 1: 0.4, 2: 0.1}, token_budget=2_005, seed=1).window_plan(10)
    assert len(plan) == 200 and plan.stats.total_tokens == 2_000
    assert Counter(plan.groups.tolist()) == {0: 100, 1: 80, 2: 20}
    assert plan.stats.realised_shares == {0: 0.5, 1: 0.4, 2: 0.1}
    for g in pools:
        at = plan.groups == g
        assert (plan.offsets[at] >= 0).all() and (plan.offsets[at] <= pools[g].n_tokens[plan.doc_indices[at]]).all()
        assert plan.stats.groups[g].docs == len(np.unique(plan.doc_indices[at]))
    again = MixtureSampler(pools, {0: 0.5, 1: 0.4, 2: 0.1}, token_budget=2_005, seed=1).window_plan(10)
    other = MixtureSampler(pools, {0: 0.5, 1: 0.4, 2: 0.1}, token_budget=2_005, seed=2).window_plan(10)
    assert np.array_equal(plan.offsets, again.offsets) and np.array_equal(plan.doc_indices, again.doc_indices)
    assert not np.array_equal(plan.doc_indices, other.doc_indices)


def test_window_starts_follow_token_counts_not_document_counts() -> None:
    pools = {0: make_pool(0, 2, np.array([9, 999]))}  # the long document holds 99% of the group's positions
    plan = MixtureSampler(pools, [1.0], token_budget=2_000, seed=0).window_plan(10)
    assert 0.97 < (plan.doc_indices == 1).mean() <= 1.0


def test_a_groups_windows_are_shared_by_every_mixture_that_draws_as_many(pools: dict[int, DocPool]) -> None:
    """Common random numbers: a group's first k windows do not depend on the other groups' weights."""
    few = MixtureSampler(pools, {0: 0.2, 1: 0.8}, token_budget=2_000, seed=5).window_plan(10)
    many = MixtureSampler(pools, {0: 0.6, 1: 0.4}, token_budget=2_000, seed=5).window_plan(10)
    starts = [Counter(zip(p.doc_indices[p.groups == 0].tolist(), p.offsets[p.groups == 0].tolist())) for p in (few, many)]
    assert starts[0].total() == 40 and starts[1].total() == 120 and not starts[0] - starts[1]


def test_spread_points_cover_the_interval_evenly_at_every_prefix() -> None:
    points = spread_points(1000, 0.3)
    assert ((points >= 0) & (points < 1)).all() and len(np.unique(points)) == 1000
    for k in (1, 2, 7, 64, 100, 999):
        ordered = np.sort(points[:k])
        circular_gaps = np.diff(np.append(ordered, ordered[0] + 1))
        assert circular_gaps.max() <= 2 / k + 1e-12  # the first k points hold every multiple of 1/2^m, 2^m <= k
    assert np.allclose((spread_points(10, 0.75) - spread_points(10, 0.5)) % 1, 0.25)  # the shift rotates them


def test_spread_windows_reach_every_stretch_of_a_group_in_proportion() -> None:
    """A group's documents are sorted by id, so its stream holds sources together: spread windows visit every tenth
    of the stream in proportion to its tokens, for every seed; independent random positions leave some tenths short."""
    pools = {0: make_pool(0, 400, 10)}  # 400 documents of 10 tokens (11 positions each), 80 windows

    def windows_per_tenth(seed: int, spread: bool) -> np.ndarray:
        plan = MixtureSampler(pools, [1.0], token_budget=800, seed=seed).window_plan(10, spread=spread)
        return np.bincount(plan.doc_indices // 40, minlength=10)

    assert all(np.abs(windows_per_tenth(seed, True) - 8).max() <= 2 for seed in range(50))
    assert max(np.abs(windows_per_tenth(seed, False) - 8).max() for seed in range(50)) >= 5


def test_window_plan_caps_a_scarce_group_and_reports_it(pools: dict[int, DocPool]) -> None:
    plan = MixtureSampler(pools, {0: 0.3, 1: 0.2, 2: 0.5}, token_budget=2_000, max_repeats=4, seed=0).window_plan(10)
    assert plan.stats.capped_groups == [2]
    assert plan.stats.groups[2].tokens == 400 and plan.stats.groups[2].epochs == pytest.approx(4.0)
    assert len(plan) == 200 and plan.stats.redistributed_share == pytest.approx(0.3)
    zero = MixtureSampler(pools, {0: 0.0, 1: 0.55, 2: 0.45}, token_budget=2_000, max_repeats=4.05, seed=0).window_plan(10)
    assert Counter(zero.groups.tolist()) == {1: 160, 2: 40}  # the capped group's lost fraction goes to group 1, not 0
    with pytest.raises(ValueError, match="window_tokens"):
        MixtureSampler(pools, {0: 1.0}, token_budget=100, seed=0).window_plan(101)
