"""Canonical edit labels: golden tie-breaks, convergence properties, batch form, model encoding."""

import random

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from medlm.edits import (
    NO_INSERT,
    apply_edits,
    count_edits,
    edit_labels,
    edit_labels_batch,
    gap_targets_to_positions,
    positions_to_gap_targets,
)

DEL = -5
tokens = st.lists(st.integers(min_value=0, max_value=6), max_size=24)  # small alphabet: many repeats


def converge(noisy, clean):
    x, steps = list(noisy), 0
    d = Levenshtein.distance(x, clean)
    while x != list(clean):
        tt, it = edit_labels(x, clean, del_id=DEL)
        x = apply_edits(x, tt, it, del_id=DEL)
        d_new = Levenshtein.distance(x, clean)
        assert d_new < d, (x, clean)
        d, steps = d_new, steps + 1
        assert steps <= len(noisy) + len(clean) + 1
    return steps


@pytest.mark.parametrize(
    "noisy, clean, token_target, insert_target",
    [
        # the docstring's worked examples
        ([9, 1, 2, 2], [1, 2, 3], [DEL, 1, 2, 3], [NO_INSERT] * 5),
        ([1, 2], [1, 2, 2], [1, 2], [NO_INSERT, NO_INSERT, 2]),
        # identical, empty draft, empty reference
        ([4, 5, 6], [4, 5, 6], [4, 5, 6], [NO_INSERT] * 4),
        ([], [7, 8], [], [7]),
        ([7, 8], [], [DEL, DEL], [NO_INSERT] * 3),
        # inserts at both ends: one per gap
        ([5], [1, 5, 2], [5], [1, 2]),
        # replace inside a region, left to right
        ([1, 9, 9, 4], [1, 2, 3, 4], [1, 2, 3, 4], [NO_INSERT] * 5),
    ],
)
def test_golden_labels(noisy, clean, token_target, insert_target):
    assert edit_labels(noisy, clean, del_id=DEL) == (token_target, insert_target)


def test_several_inserts_in_one_gap_take_several_steps():
    assert edit_labels([1], [1, 2, 3, 4], del_id=DEL) == ([1], [NO_INSERT, 2])
    assert converge([1], [1, 2, 3, 4]) == 3


@settings(max_examples=300, deadline=None)
@given(tokens, tokens)
def test_iterating_labels_reaches_reference_with_strictly_falling_distance(noisy, clean):
    converge(noisy, clean)


@settings(max_examples=200, deadline=None)
@given(tokens, tokens)
def test_labels_are_shaped_and_deterministic(noisy, clean):
    tt, it = edit_labels(noisy, clean, del_id=DEL)
    assert len(tt) == len(noisy) and len(it) == len(noisy) + 1
    assert (tt, it) == edit_labels(list(noisy), list(clean), del_id=DEL)
    r, d, i = count_edits(noisy, tt, it, del_id=DEL)
    # one step fixes every replace and delete and one insert per gap: the distance left is only inserts
    left = Levenshtein.distance(apply_edits(noisy, tt, it, del_id=DEL), clean)
    assert r + d + i + left == Levenshtein.distance(noisy, clean)


def position_by_position_labels(noisy, clean, del_id):
    """The tie-break written out token by token from rapidfuzz's matched blocks: the plain statement."""
    token_target, insert_target = [], [NO_INSERT] * (len(noisy) + 1)
    i = j = 0
    for block in Levenshtein.editops(noisy, clean).as_matching_blocks():
        p, q = block.a - i, block.b - j
        token_target += [clean[j + k] if k < q else del_id for k in range(p)]  # replace left to right, then delete
        if q > p:
            insert_target[block.a] = clean[j + p]  # the first surplus reference token
        token_target += clean[block.b : block.b + block.size]  # matched: the reference's own items
        i, j = block.a + block.size, block.b + block.size
    return token_target, insert_target


@settings(max_examples=500, deadline=None)
@given(tokens, tokens)
def test_labels_match_the_position_by_position_statement(noisy, clean):
    assert edit_labels(noisy, clean, del_id=DEL) == position_by_position_labels(noisy, clean, DEL)


def noisy_copy(rng, clean, rate):
    """``clean`` with about ``rate`` of its tokens replaced, deleted or followed by an inserted token."""
    noisy = []
    for t in clean:
        r = rng.random()
        if r < rate / 3:
            noisy.append(rng.randrange(32000))  # replaced
        elif r < 2 * rate / 3:
            pass  # deleted
        elif r < rate:
            noisy += [t, rng.randrange(32000)]  # kept, then one inserted
        else:
            noisy.append(t)
    return noisy


def labelled_pairs():
    """Edge cases, then random pairs from tiny alphabets (many ties) to benchmark-sized ones."""
    yield [], []
    yield [], [3, 1, 4]  # all insert
    yield [3, 1, 4], []  # all delete
    yield [2, 7, 1, 8], [2, 7, 1, 8]  # identical
    # unicode and huge ids; rapidfuzz matches items by hash (and 1-character strings by code point),
    # so "a" ~ 97 and 2**61 - 1 ~ 0 count as matches: the labels then carry the reference's item
    yield ["é", "字", 2**61 - 1, "a", "naïve"], ["字", "é", 0, 97, "naïve"]
    yield [2**64 + 1, -1, -2, 10**30, 7], [1, -2, -1, 10**30, 2**63]
    rng = random.Random(0)
    for _ in range(400):
        alphabet = rng.choice([2, 5, 50, 2**40])
        yield ([rng.randrange(alphabet) for _ in range(rng.randrange(60))],
               [rng.randrange(alphabet) for _ in range(rng.randrange(60))])
    for rate in (0.05, 0.2, 0.6):
        for _ in range(10):
            clean = [rng.randrange(32000) for _ in range(512)]
            yield noisy_copy(rng, clean, rate), clean


def test_labels_match_the_statement_on_edge_cases_unicode_and_long_pairs():
    for noisy, clean in labelled_pairs():
        assert edit_labels(noisy, clean, del_id=DEL) == position_by_position_labels(noisy, clean, DEL), (noisy, clean)


def test_batch_form_accepts_lists_tuples_and_arrow():
    noisy = [[1, 2, 3], [], [4, 4]]
    clean = [[1, 3], [5], [4, 4, 4]]
    expected = [edit_labels(a, b, del_id=DEL) for a, b in zip(noisy, clean)]
    tuples = ([tuple(x) for x in noisy], [tuple(x) for x in clean])
    arrow = (pa.array(noisy, pa.list_(pa.int32())), pa.array(clean, pa.list_(pa.int32())))
    for n_in, c_in in [(noisy, clean), tuples, arrow]:
        tts, its = edit_labels_batch(n_in, c_in, del_id=DEL)
        assert list(zip(tts, its)) == expected
    with pytest.raises(ValueError, match="2 drafts but 3 references"):
        edit_labels_batch(noisy[:2], clean, del_id=DEL)


def test_apply_rejects_mismatched_label_lengths():
    with pytest.raises(ValueError, match="token_target has length 2, expected len\\(tokens\\) = 3"):
        apply_edits([1, 2, 3], [1, 2], [NO_INSERT] * 4, del_id=DEL)
    with pytest.raises(ValueError, match="insert_target has length 3"):
        apply_edits([1, 2, 3], [1, 2, 3], [NO_INSERT] * 3, del_id=DEL)


@settings(max_examples=100, deadline=None)
@given(tokens, tokens, st.integers(min_value=1, max_value=5))
def test_model_encoding_round_trip(noisy, clean, prompt_len):
    _, it = edit_labels(noisy, clean, del_id=DEL)
    rows = gap_targets_to_positions(it, prompt_len=prompt_len, no_insert_id=99)
    assert len(rows) == prompt_len + len(noisy)  # one target per prompt+draft position
    assert rows[: prompt_len - 1] == [-100] * (prompt_len - 1)
    assert positions_to_gap_targets(rows, prompt_len=prompt_len, no_insert_id=99) == it


def test_model_encoding_needs_a_prompt_token():
    with pytest.raises(ValueError, match="prompt_len must be >= 1"):
        gap_targets_to_positions([NO_INSERT], prompt_len=0, no_insert_id=2)
