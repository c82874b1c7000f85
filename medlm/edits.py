"""Canonical edit labels: which parallel replace / delete / insert step moves a draft towards its reference.

The refiner is trained on these labels, so they must be a pure function of (draft, reference): the
same pair gives the same labels on every run and machine. We take the matched blocks of an optimal
alignment from ``rapidfuzz.distance.Levenshtein.editops`` (Hyyrö's bit-parallel distance with a
deterministic C++ backtrace), never from a Python O(nm) DP, and touch in Python only the unmatched
regions whose two sides differ in length (the Python part costs a bit over a third of ``editops``).

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

from rapidfuzz.distance import Levenshtein, MatchingBlock

NO_INSERT = -1
_ORIGIN = MatchingBlock(0, 0, 0)  # an empty block where every alignment starts, on diagonal 0

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

    ``token_target`` is ``clean`` with two kinds of splice: a region with surplus draft tokens gets
    their deletes at its end, a region with surplus reference tokens loses them (the first becomes
    its insert). Between two matched blocks p - q is the change of the diagonal (block.a - block.b),
    so a splice is due only where the diagonal changes; walking the blocks right to left keeps the
    indices still to visit in place.
    """
    noisy = noisy if isinstance(noisy, list) else list(noisy)
    clean = clean if isinstance(clean, list) else list(clean)
    token_target = clean[:]
    insert_target = [NO_INSERT] * (len(noisy) + 1)
    dels = (del_id,)  # a tuple: repeating it once makes no new object
    end_a, end_b = len(noisy), len(clean)  # end of the region being looked at: the block right of it
    diag = end_a - end_b
    blocks = Levenshtein.editops(noisy, clean).as_matching_blocks()  # ends with (len(noisy), len(clean), 0)
    blocks.insert(0, _ORIGIN)
    for block in reversed(blocks):
        a = block.a
        b = block.b
        left = a - b
        if left != diag:  # the region from this block to (end_a, end_b) has p - q = diag - left
            if diag > left:  # surplus draft tokens, deleted at the region's end
                token_target[end_b:end_b] = dels * (diag - left)
            else:  # surplus reference tokens: dropped, the first inserted into the gap at the region's end
                first = end_a - left
                insert_target[end_a] = clean[first]
                del token_target[first:end_b]
            diag = left
        end_a = a
        end_b = b
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


def _rows(column) -> list[Sequence[int]]:
    """Rows of a list of sequences or of an Arrow (chunked) list array, not copied (edit_labels lists a non-list)."""
    if hasattr(column, "to_pylist"):
        return column.to_pylist()
    return list(column)


def edit_labels_batch(
    noisy: Iterable[Sequence[int]] | object, clean: Iterable[Sequence[int]] | object, *, del_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """``edit_labels`` over many pairs; inputs may be lists or pyarrow list arrays of equal length."""
    noisy_rows = _rows(noisy)
    clean_rows = _rows(clean)
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
    assert best_d is not None  # references is not empty
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
