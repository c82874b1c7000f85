"""Packed variable-length training batches: many sequences in one row, no per-sequence padding.

Each training example is a plain dict of token lists (``input_ids``, ``token_labels``,
``insert_labels``, ``token_weights``, ``is_edit``); :func:`collate` concatenates them into a
:class:`PackedBatch` with cumulative lengths, and :func:`pack_greedy` groups examples into rows of at
most ``max_len`` tokens (first-fit decreasing), which wastes far less than padding every sequence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from medlm.edits import gap_targets_to_positions
from medlm.tokenizer import SpecialIds

IGNORE = -100


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [T] long
    cu_seqlens: torch.Tensor  # [N + 1] int32
    token_labels: torch.Tensor  # [T] long, IGNORE where unlabelled
    insert_labels: torch.Tensor  # [T] long, IGNORE where unlabelled
    token_weights: torch.Tensor  # [T] float: per-token loss weight of mask examples (1/t/len)
    is_edit: torch.Tensor  # [T] bool: token belongs to an edit example
    n_mask_seqs: int
    n_edit_seqs: int

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device) -> "PackedBatch":
        return PackedBatch(
            self.input_ids.to(device), self.cu_seqlens.to(device), self.token_labels.to(device),
            self.insert_labels.to(device), self.token_weights.to(device), self.is_edit.to(device),
            self.n_mask_seqs, self.n_edit_seqs,
        )


def mask_example(
    prompt_ids: Sequence[int],
    target_ids: Sequence[int],
    special: SpecialIds,
    rng: random.Random,
    gen_len: int | None = None,
    eps: float = 1e-3,
) -> dict:
    """Forward process of masked diffusion: mask each response token with probability t ~ U(eps, 1).

    The response is padded with ``<|pad|>`` to ``gen_len`` so the model learns where an answer ends;
    loss weights are 1/t per masked token over the response length (LLaDA's unbiased estimator).
    """
    response = list(target_ids)
    if gen_len is not None:
        if len(response) > gen_len:
            raise ValueError(f"response has {len(response)} tokens, more than gen_len={gen_len}")
        response += [special.pad] * (gen_len - len(response))
    if not response:
        raise ValueError("empty response")
    t = eps + (1 - eps) * rng.random()
    masked = [rng.random() < t for _ in response]
    if not any(masked):
        masked[rng.randrange(len(response))] = True
    p = len(prompt_ids)
    noisy = [special.mask if m else tok for m, tok in zip(masked, response)]
    w = 1.0 / (t * len(response))
    return {
        "input_ids": list(prompt_ids) + noisy,
        "token_labels": [IGNORE] * p + [tok if m else IGNORE for m, tok in zip(masked, response)],
        "insert_labels": [IGNORE] * (p + len(response)),
        "token_weights": [0.0] * p + [w if m else 0.0 for m in masked],
        "is_edit": False,
    }


def edit_example(
    prompt_ids: Sequence[int],
    draft_ids: Sequence[int],
    token_target: Sequence[int],
    insert_target: Sequence[int],
    special: SpecialIds,
) -> dict:
    """An edit-training example: the draft with its canonical labels on both heads."""
    p, n = len(prompt_ids), len(draft_ids)
    if len(token_target) != n or len(insert_target) != n + 1:
        raise ValueError(
            f"label lengths ({len(token_target)}, {len(insert_target)}) do not fit a draft of {n} tokens "
            f"(expected ({n}, {n + 1}))"
        )
    return {
        "input_ids": list(prompt_ids) + list(draft_ids),
        "token_labels": [IGNORE] * p + list(token_target),
        "insert_labels": gap_targets_to_positions(insert_target, prompt_len=p, no_insert_id=special.no_insert),
        "token_weights": [0.0] * (p + n),
        "is_edit": True,
    }


def collate(examples: Sequence[dict]) -> PackedBatch:
    """Concatenate examples into one packed row."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    ids, tl, il, tw, ie, cu = [], [], [], [], [], [0]
    for ex in examples:
        n = len(ex["input_ids"])
        ids += ex["input_ids"]
        tl += ex["token_labels"]
        il += ex["insert_labels"]
        tw += ex["token_weights"]
        ie += [ex["is_edit"]] * n
        cu.append(cu[-1] + n)
    n_edit = sum(1 for ex in examples if ex["is_edit"])
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        token_labels=torch.tensor(tl, dtype=torch.long),
        insert_labels=torch.tensor(il, dtype=torch.long),
        token_weights=torch.tensor(tw, dtype=torch.float32),
        is_edit=torch.tensor(ie, dtype=torch.bool),
        n_mask_seqs=len(examples) - n_edit,
        n_edit_seqs=n_edit,
    )


def pack_greedy(examples: Sequence[dict], max_len: int) -> list[list[dict]]:
    """Group examples into rows of at most ``max_len`` tokens (first-fit decreasing)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[list[dict]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        if n > max_len:
            raise ValueError(f"an example has {n} tokens, more than max_len={max_len}; raise max_len or shorten the data")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(examples[i])
                room[r] -= n
                break
        else:
            rows.append([examples[i]])
            room.append(max_len - n)
    return rows


def padding_waste(rows: Sequence[Sequence[dict]], max_len: int) -> float:
    """Share of a fixed ``len(rows) * max_len`` budget left empty by packing."""
    used = sum(len(ex["input_ids"]) for row in rows for ex in row)
    return 1.0 - used / max(1, len(rows) * max_len)
