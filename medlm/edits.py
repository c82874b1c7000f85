"""Canonical edit labels: which parallel replace / delete / insert step moves a draft towards its reference.

The refiner is trained on these labels, so they must be a pure function of (draft, reference): the
same pair gives the same labels on every run and machine. We take the matched blocks of an optimal
alignment from ``rapidfuzz.distance.Levenshtein.editops`` (Hyyrö's bit-parallel distance with a
deterministic C++ backtrace), never from a Python O(nm) DP, and label the unmatched regions between
matched blocks with list slices (the Python part costs about half as much as ``editops`` itself).

Label format (the library's, not the model's):
    token_target[i]  token that should stand at draft position i: draft[i] = keep, another id =
                     replace, ``del_id`` = delete.
    insert_target[g] for each of the len(draft)+1 gaps (gap g lies before position g, gap len(draft)
                     after the last token): the ONE token to insert there in this step, or NO_INSERT.

Tie-break, fixed and pinned by golden tests in tests/test_edits.py:
  1. keep: the matched blocks are rapidfuzz's backtrace of one minimal alignment (it keeps a
     repeated token's first copy and edits the later ones);
  2. replace: inside each unmatched region (p draft tokens facing q reference tokens, cost max(p, q))
     the first min(p, q) draft tokens are replaced, left to right;
  3. delete: a surplus of draft tokens (p > q) is deleted at the region's end;
  4. insert: a surplus of reference tokens (q > p) goes into the gap at the region's end.
Worked example, draft ``x a b b`` -> reference ``a b c``: matched ``a b``; region before it is
(x | -) so x is deleted; region after it is (b | c) so the second b is replaced by c:

    token_target  = [<del>, a, b, c]
    insert_target = [-, -, -, -, -]

and draft ``a b`` -> reference ``a b b``: matched ``a b``, trailing region (- | b):
token_target = [a, b], insert_target = [-, -, b].

Where a gap needs several insertions, only the first (leftmost in the reference) is labelled in this
step. Every other edit is complete, so one step lowers the Levenshtein distance by at least one and
repeating label + apply reaches the reference.

A draft of a task with several valid answers is labelled against the CLOSEST one
(:func:`label_draft`, via :func:`closest_reference`): fewest token edits, ties to the earlier
reference, so the canonical answer wins. Labels against one fixed answer would teach the editor to
rewrite one valid answer into another; against the closest one they only fix errors.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

from rapidfuzz.distance import Levenshtein

NO_INSERT = -1

__all__ = [
    "NO_INSERT",
    "edit_labels",
    "apply_edits",
    "edit_labels_batch",
    "count_edits",
    "edit_distance",
    "closest_reference",
    "label_draft",
    "DraftLabels",
    "gap_targets_to_positions",
    "positions_to_gap_targets",
]


def edit_labels(noisy: Sequence[int], clean: Sequence[int], *, del_id: int) -> tuple[list[int], list[int]]:
    """Labels for one parallel edit step from ``noisy`` towards ``clean`` (see the module docstring).

    Built from ``clean`` in runs, because matched blocks and equal-sized regions (p == q: all
    replaced) both read exactly ``clean``'s tokens there; only regions with a surplus (p != q) break
    a run. Skipping the p == q regions is what keeps the Python loop cheap next to ``editops``.
    """
    noisy = noisy if isinstance(noisy, list) else list(noisy)
    clean = clean if isinstance(clean, list) else list(clean)
    insert_target = [NO_INSERT] * (len(noisy) + 1)
    token_target: list[int] = []
    extend = token_target.extend
    run = 0  # start in ``clean`` of the run not yet copied into token_target
    i = j = 0  # end of the previous matched block in draft / reference
    for block in Levenshtein.editops(noisy, clean).as_matching_blocks():  # the last block is (len, len, 0)
        a = block.a
        b = block.b
        p = a - i
        q = b - j
        if p != q:
            if p > q:  # first q draft tokens replaced (clean[j:b]), the surplus deleted at the end
                extend(clean[run:b])
                extend([del_id] * (p - q))
            else:  # all p replaced (clean[j:j+p]), the first surplus reference token inserted at gap a
                extend(clean[run : j + p])
                insert_target[a] = clean[j + p]
            run = b
        size = block.size
        i = a + size
        j = b + size
    extend(clean[run:])
    return token_target, insert_target


def apply_edits(
    tokens: Sequence[int], token_target: Sequence[int], insert_target: Sequence[int], *, del_id: int
) -> list[int]:
    """Apply one parallel edit step: replace/delete every position and insert at most one token per gap."""
    n = len(tokens)
    if len(token_target) != n:
        raise ValueError(f"token_target has length {len(token_target)}, expected len(tokens) = {n}")
    if len(insert_target) != n + 1:
        raise ValueError(f"insert_target has length {len(insert_target)}, expected len(tokens) + 1 = {n + 1}")
    out: list[int] = []
    for i in range(n):
        ins = insert_target[i]
        if ins != NO_INSERT:
            out.append(ins)
        tok = token_target[i]
        if tok != del_id:
            out.append(tok)
    if insert_target[n] != NO_INSERT:
        out.append(insert_target[n])
    return out


def _as_int_lists(column) -> list[list[int]]:
    """Accept a list of sequences or an Arrow (chunked) list array."""
    if hasattr(column, "to_pylist"):
        return column.to_pylist()
    return [list(x) for x in column]


def edit_labels_batch(
    noisy: Iterable[Sequence[int]] | object, clean: Iterable[Sequence[int]] | object, *, del_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """``edit_labels`` over many pairs; inputs may be lists or pyarrow list arrays of equal length."""
    noisy_rows = _as_int_lists(noisy)
    clean_rows = _as_int_lists(clean)
    if len(noisy_rows) != len(clean_rows):
        raise ValueError(f"{len(noisy_rows)} drafts but {len(clean_rows)} references")
    token_targets, insert_targets = [], []
    for a, b in zip(noisy_rows, clean_rows):
        t, g = edit_labels(a, b, del_id=del_id)
        token_targets.append(t)
        insert_targets.append(g)
    return token_targets, insert_targets


def count_edits(
    tokens: Sequence[int], token_target: Sequence[int], insert_target: Sequence[int], *, del_id: int
) -> tuple[int, int, int]:
    """(n_replace, n_delete, n_insert) that one label step asks for."""
    n_delete = sum(1 for t in token_target if t == del_id)
    n_replace = sum(1 for a, t in zip(tokens, token_target) if t != a and t != del_id)
    n_insert = sum(1 for g in insert_target if g != NO_INSERT)
    return n_replace, n_delete, n_insert


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two token sequences."""
    return Levenshtein.distance(list(a), list(b))


def closest_reference(draft: Sequence, references: Sequence[Sequence]) -> tuple[int, int]:
    """(index, edit distance) of the reference needing the fewest edits from ``draft``; ties -> earliest.

    Items may be token ids or words (any hashable): the toy task compares word lists.
    """
    if not references:
        raise ValueError("no reference to compare the draft with")
    best, best_d = 0, None
    for i, ref in enumerate(references):
        d = edit_distance(draft, ref)
        if best_d is None or d < best_d:
            best, best_d = i, d
    return best, int(best_d)


class DraftLabels(NamedTuple):
    """A draft labelled against its closest reference (see the module docstring)."""

    reference_index: int
    distance: int
    token_target: list[int]
    insert_target: list[int]


def label_draft(draft: Sequence[int], references: Sequence[Sequence[int]], *, del_id: int) -> DraftLabels:
    """Edit labels of ``draft`` against the closest of its valid ``references``."""
    k, d = closest_reference(draft, references)
    token_target, insert_target = edit_labels(draft, references[k], del_id=del_id)
    return DraftLabels(k, d, token_target, insert_target)


def gap_targets_to_positions(insert_target: Sequence[int], *, prompt_len: int, no_insert_id: int) -> list[int]:
    """Map gap labels to the model's insertion-head targets over the whole prompt+response row.

    The model's insertion head at absolute position p predicts what goes into the gap right AFTER p
    (``no_insert_id`` for nothing). Response gap g therefore lives at position ``prompt_len + g - 1``:
    gap 0 uses the last prompt token, which is why a prompt must have at least one token. Positions
    before ``prompt_len - 1`` get -100 (ignored by cross-entropy).
    """
    if prompt_len < 1:
        raise ValueError("prompt_len must be >= 1: the gap before the first response token is read at the last prompt token")
    row = [-100] * (prompt_len - 1)
    row.extend(no_insert_id if g == NO_INSERT else g for g in insert_target)
    return row


def positions_to_gap_targets(position_targets: Sequence[int], *, prompt_len: int, no_insert_id: int) -> list[int]:
    """Inverse of :func:`gap_targets_to_positions`."""
    if prompt_len < 1:
        raise ValueError("prompt_len must be >= 1")
    return [NO_INSERT if t == no_insert_id else int(t) for t in position_targets[prompt_len - 1 :]]
