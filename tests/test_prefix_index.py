"""The prefix cache's pure core: block chain keys, longest-prefix matching, LRU eviction that keeps chains whole."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from lmistream.engines.prefix_index import PrefixIndex, block_keys, reusable_blocks


def _index(capacity: int) -> PrefixIndex[tuple[int, ...]]:
    return PrefixIndex(capacity, block_tokens=4)


def _store(index: PrefixIndex[tuple[int, ...]], tokens: list[int]) -> None:
    """Cache every full block of `tokens`, each valued by its own tokens."""
    index.insert(block_keys(tokens, 4), lambda i, _: tuple(tokens[4 * i : 4 * i + 4]))


def test_a_key_names_the_whole_prefix_not_only_its_block() -> None:
    a = block_keys([1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    b = block_keys([0, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and len(b) == 2  # the partial block has no key
    assert a[0] != b[0] and a[1] != b[1]  # same second block, different parents
    assert block_keys([1, 2, 3, 4, 5, 6, 7, 8], 4) == a


def test_a_match_leaves_the_last_prompt_token_to_compute() -> None:
    index = _index(8)
    prompt = list(range(8))
    _store(index, prompt)
    assert index.match(block_keys(prompt, 4), len(prompt)) == [(0, 1, 2, 3)]
    longer = [*prompt, 99]
    assert index.match(block_keys(longer, 4), len(longer)) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert reusable_blocks(1, 4) == 0 and reusable_blocks(0, 4) == 0


def test_hit_rate_counts_prompt_tokens_found() -> None:
    index = _index(8)
    first = list(range(9))
    assert index.match(block_keys(first, 4), 9) == []
    _store(index, first)
    assert len(index.match(block_keys(first, 4), 9)) == 2
    assert (index.prompt_tokens, index.hit_tokens) == (18, 8)
    assert index.hit_rate == 8 / 18


def test_eviction_takes_the_least_recently_used_chain_leaf_first() -> None:
    index = _index(4)
    old, new = [1] * 9, [2] * 9
    _store(index, old)
    _store(index, new)
    assert len(index) == 4
    index.match(block_keys(old, 4), 9)  # old is now the more recent
    _store(index, [3] * 9)  # two blocks must go: both of new's, deepest first
    assert len(index.match(block_keys(new, 4), 9)) == 0
    assert len(index.match(block_keys(old, 4), 9)) == 2


def test_a_chain_longer_than_the_capacity_keeps_its_first_blocks() -> None:
    index = _index(2)
    tokens = list(range(17))
    _store(index, tokens)
    assert [block[0] for block in index.match(block_keys(tokens, 4), 17)] == [0, 4]


def test_a_new_block_is_handed_the_value_of_the_block_it_evicts() -> None:
    index: PrefixIndex[int] = PrefixIndex(2, block_tokens=4)
    handed: list[int | None] = []

    def value_of(position: int, evicted: int | None) -> int:
        handed.append(evicted)
        return 10 + len(handed)

    index.insert(block_keys(list(range(8)), 4), value_of)
    index.insert(block_keys([9] * 4, 4), value_of)  # the full index gives up its chain's leaf, valued 12
    assert handed == [None, None, 12] and len(index) == 2


def test_zero_capacity_caches_nothing() -> None:
    index = _index(0)
    _store(index, list(range(9)))
    assert len(index) == 0 and index.match(block_keys(list(range(9)), 4), 9) == []


prompts = st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=20), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(prompts, st.integers(0, 6), st.lists(st.booleans(), min_size=30, max_size=30))
def test_the_index_stays_bounded_prefix_closed_and_truthful(
    sequence: list[list[int]], capacity: int, stores: list[bool]
) -> None:
    """Whatever the traffic: at most `capacity` blocks, a cached block's parent is cached, and a match returns the
    blocks of the prompt's own tokens, as long as the longest cached chain of it allows."""
    index = _index(capacity)
    known: set[tuple[int, ...]] = set()  # every prefix ever stored
    for prompt, store in zip(sequence, stores):
        keys = block_keys(prompt, 4)
        found = index.match(keys, len(prompt))
        assert list(found) == [tuple(prompt[4 * i : 4 * i + 4]) for i in range(len(found))]
        assert all(tuple(prompt[: 4 * (i + 1)]) in known for i in range(len(found)))
        if len(found) < reusable_blocks(len(prompt), 4):
            assert keys[len(found)] not in index
        if store:
            _store(index, prompt)
            known.update(tuple(prompt[: 4 * (i + 1)]) for i in range(len(keys)))
            assert all(key in index for key in keys[: min(capacity, len(keys))])
        assert len(index) <= capacity
        for tokens in known:
            chain = block_keys(list(tokens), 4)
            if chain[-1] in index:
                assert all(key in index for key in chain)
