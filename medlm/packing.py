"""All packing: many variable-length sequences in one row, no per-sequence padding.

Training: each example is a plain dict of token lists (``input_ids``, ``token_labels``,
``insert_labels``, ``token_weights``, ``is_edit``) made by :func:`mask_example` or :func:`edit_example`;
:class:`ExampleStream` draws them for an objective (mask / edit / mixture / online), :class:`Packer`
fills micro-batches of rows of at most ``max_len`` tokens without reordering the mixture, and
:func:`collate` concatenates a micro-batch into a :class:`PackedBatch` with cumulative lengths.

Decoding: :func:`pack` turns the token lists still being decoded into one packed row per step, and
:func:`pack_groups` splits a batch into forward passes of bounded size.

Every random choice of an example is seeded from (run seed, row id, epoch), so the same row gets the
same masking wherever it lands; a stream's position is a few counters that go into checkpoints, so a
resumed run continues where it stopped instead of replaying the first rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from medlm.edits import gap_targets_to_positions
from medlm.tokenizer import SpecialIds

IGNORE = -100
DRAFT_REQUEST = "draft_request"  # key of mask examples an online-draft step turns into edit examples
# How losses are weighted (docs/fidelity.md):
#   llada : mask loss sum_masked CE / (t * response length) per sequence (LLaDA's SFT estimator); edit
#           loss unweighted;
#   me-dlm: mask loss mean_masked CE / t per sequence; edit loss / t, t = the share of the reference that
#           was masked when the draft started (1 for a draft from all masks), as ME-DLM's trainer does.
LOSS_WEIGHTINGS = ("llada", "me-dlm")


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [T] long
    cu_seqlens: torch.Tensor  # [N + 1] int32
    token_labels: torch.Tensor  # [T] long, IGNORE where unlabelled
    insert_labels: torch.Tensor  # [T] long, IGNORE where unlabelled
    token_weights: torch.Tensor  # [T] float: per-token loss weight (mask: 1/t/len; edit: the draft's scale)
    is_edit: torch.Tensor  # [T] bool: token belongs to an edit example
    n_mask_seqs: int
    n_edit_seqs: int

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device) -> PackedBatch:
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
    weighting: str = "llada",
) -> dict:
    """Forward process of masked diffusion: mask each response token with probability t ~ U(eps, 1).

    The response is padded with ``<|pad|>`` to ``gen_len`` so the model learns where an answer ends;
    loss weights are 1/t per masked token over the response length (LLaDA's unbiased estimator), or
    over the number of masked tokens with ``weighting="me-dlm"``. The example records its ``t``.
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
    w = 1.0 / (t * (len(response) if weighting == "llada" else sum(masked)))
    return {
        "input_ids": list(prompt_ids) + noisy,
        "token_labels": [IGNORE] * p + [tok if m else IGNORE for m, tok in zip(masked, response)],
        "insert_labels": [IGNORE] * (p + len(response)),
        "token_weights": [0.0] * p + [w if m else 0.0 for m in masked],
        "is_edit": False,
        "t": t,
    }


def edit_example(
    prompt_ids: Sequence[int],
    draft_ids: Sequence[int],
    token_target: Sequence[int],
    insert_target: Sequence[int],
    special: SpecialIds,
    scale: float = 1.0,
) -> dict:
    """An edit-training example: the draft with its canonical labels on both heads.

    ``scale`` multiplies the example's edit loss terms (1/t under ME-DLM's weighting)."""
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
        "token_weights": [float(scale)] * (p + n),
        "is_edit": True,
    }


def edit_scale(weighting: str, start_mask_ratio: float, eps: float = 1e-3) -> float:
    """The edit loss multiplier of one draft: 1/t under ME-DLM's weighting, else 1."""
    return 1.0 / max(float(start_mask_ratio), eps) if weighting == "me-dlm" else 1.0


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


def padding_waste(rows: Sequence[Sequence[dict]], max_len: int) -> float:
    """Share of a fixed ``len(rows) * max_len`` budget left empty by packing."""
    used = sum(len(ex["input_ids"]) for row in rows for ex in row)
    return 1.0 - used / max(1, len(rows) * max_len)


class RowOrder:
    """Visits rows 0..n-1 forever, reshuffled every epoch; ``position`` counts rows handed out."""

    def __init__(self, n: int, seed: int, rank: int, name: str, position: int = 0):
        if n < 1:
            raise ValueError(f"the {name} shard of worker {rank} holds no rows")
        self.n, self.seed, self.rank, self.name = n, seed, rank, name
        self.position = position
        self._epoch = -1
        self._perm: list[int] = []

    def next(self) -> tuple[int, int]:
        """(row index, epoch) of the next row."""
        epoch, k = divmod(self.position, self.n)
        if epoch != self._epoch:
            self._perm = list(range(self.n))
            random.Random(f"{self.seed}:{self.rank}:{self.name}:{epoch}").shuffle(self._perm)
            self._epoch = epoch
        self.position += 1
        return self._perm[k], epoch


class ExampleStream:
    """Endless training examples for one worker, for the objective ``mask | edit | mixture | online``.

    mixture: each example is an edit example with probability ``mix_ratio`` (one draw per example).
    online:  each mask row is marked, with probability ``mix_ratio``, for drafting by the current model
             (see ``pipeline.train.online_drafts``); it keeps its mask example's length for packing.

    Rows are read by index: ``mask_rows`` has ``ids``, ``prompt[i]`` and ``refs[i]`` (every valid answer,
    the reference first), ``edit_rows`` has ``ids``, ``prompt[i]``, ``draft[i]``, ``token_target[i]`` and
    ``insert_target[i]`` (``pipeline.train.batches.MaskRows`` / ``EditRows`` over Arrow columns).
    """

    def __init__(self, objective: str, special: SpecialIds, *, gen_len: int, mix_ratio: float, seed: int, rank: int,
                 mask_rows=None, edit_rows=None,
                 state: Optional[dict] = None, loss_weighting: str = "llada"):
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
        self.loss_weighting = loss_weighting
        self.objective, self.special, self.gen_len = objective, special, gen_len
        self.mix_ratio, self.seed, self.rank = mix_ratio, seed, rank
        self.mask_rows, self.edit_rows = mask_rows, edit_rows
        state = state or {}
        self.mask_order = RowOrder(len(mask_rows), seed, rank, "mask", state.get("mask", 0)) if mask_rows else None
        self.edit_order = RowOrder(len(edit_rows), seed, rank, "edit", state.get("edit", 0)) if edit_rows else None
        self._mix_rng = random.Random(f"{seed}:{rank}:mix")
        self.draws = 0
        for _ in range(state.get("draws", 0)):  # replay the mixing choices made before the checkpoint
            self._draw()

    def _draw(self) -> bool:
        self.draws += 1
        return self._mix_rng.random() < self.mix_ratio

    def state(self) -> dict:
        return {"mask": self.mask_order.position if self.mask_order else 0,
                "edit": self.edit_order.position if self.edit_order else 0,
                "draws": self.draws}

    def _mask(self) -> dict:
        assert self.mask_order is not None  # drawn only when there are mask rows
        i, epoch = self.mask_order.next()
        rows = self.mask_rows
        rng = random.Random(f"{self.seed}:{rows.ids[i]}:{epoch}")
        prompt = rows.prompt[i]
        wants_draft = self.objective == "online" and rng.random() < self.mix_ratio
        refs = rows.refs[i]
        # one valid phrasing per example, drawn from (seed, row, epoch): a task with several valid
        # answers must train a model that knows them all, or parallel decoding has nothing to mix
        # and the editor nothing to repair (always the first reference made the base model unimodal)
        target = refs[rng.randrange(len(refs))] if len(refs) > 1 else refs[0]
        ex = mask_example(prompt, target, self.special, rng, gen_len=self.gen_len, weighting=self.loss_weighting)
        if wants_draft:  # the noised response and its t: ME-DLM drafts from exactly this partly masked state
            ex[DRAFT_REQUEST] = {"id": rows.ids[i], "prompt": prompt, "refs": refs,
                                 "start": ex["input_ids"][len(prompt):], "t": ex["t"]}
        return ex

    def _edit(self) -> dict:
        assert self.edit_order is not None  # drawn only when there are edit rows
        i, _ = self.edit_order.next()
        rows = self.edit_rows
        return edit_example(rows.prompt[i], rows.draft[i], rows.token_target[i], rows.insert_target[i], self.special,
                            scale=edit_scale(self.loss_weighting, rows.start_mask_ratio[i]))

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.objective == "edit":
            return self._edit()
        if self.objective == "mixture":
            return self._edit() if self._draw() else self._mask()
        return self._mask()


class Packer:
    """Packs stream examples into micro-batches of ``rows`` rows of at most ``max_len`` tokens.

    Each row starts with the oldest example waiting and is filled from a look-ahead buffer of about
    ``lookahead`` micro-batches with the subset of waiting examples that leaves the least room unused
    (an exact subset-sum over the buffer, done with bitsets, preferring older examples). Why not
    first-fit decreasing over the buffer and the fullest rows: that hands out the longest examples first,
    so in a mixture the shorter edit examples would wait and
    batches would be sorted by length (all mask, then all edit). Oldest-first keeps the stream's order
    and mix; the subset-sum keeps rows full even when lengths take only a few values.
    """

    def __init__(self, stream: ExampleStream, max_len: int, rows: int, lookahead: int = 8):
        self.stream, self.max_len, self.rows, self.lookahead = stream, max_len, rows, lookahead
        self.buffer: list[dict] = []
        self._buffered_tokens = 0

    def _top_up(self) -> None:
        while self._buffered_tokens < self.rows * self.max_len * self.lookahead:
            ex = next(self.stream)
            n = len(ex["input_ids"])
            if n > self.max_len:
                raise ValueError(f"an example has {n} tokens, more than max_len={self.max_len}")
            self.buffer.append(ex)
            self._buffered_tokens += n

    def _take(self, i: int) -> dict:
        ex = self.buffer.pop(i)
        self._buffered_tokens -= len(ex["input_ids"])
        return ex

    def _row(self) -> list[dict]:
        self._top_up()
        row = [self._take(0)]
        free = self.max_len - len(row[0]["input_ids"])
        lengths = [len(ex["input_ids"]) for ex in self.buffer]
        # reach[i]: bit t set when some subset of the first i waiting examples sums to t tokens
        full = (1 << (free + 1)) - 1
        reach = [1]
        for n in lengths:
            reach.append((reach[-1] | (reach[-1] << n)) & full)
        target = reach[-1].bit_length() - 1
        chosen = []
        for i in range(len(lengths) - 1, -1, -1):  # newest first: skip an example whenever older ones suffice
            if target and not (reach[i] >> target) & 1:
                chosen.append(i)
                target -= lengths[i]
        for i in sorted(chosen, reverse=True):
            row.append(self._take(i))
        return row

    def next_batch(self) -> tuple[list[dict], float]:
        """(examples of one micro-batch, its padding waste against rows * max_len)."""
        chosen = [self._row() for _ in range(self.rows)]
        return [ex for row in chosen for ex in row], padding_waste(chosen, self.max_len)


def pack(seqs: Sequence[Sequence[int]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> one packed row: (input_ids [T] long, cu_seqlens [N + 1] int32) on ``device``."""
    flat: list[int] = []
    cu = [0]
    for s in seqs:
        flat.extend(s)
        cu.append(cu[-1] + len(s))
    return (torch.tensor(flat, dtype=torch.long, device=device), torch.tensor(cu, dtype=torch.int32, device=device))


def pack_groups(lengths: Sequence[int], tokens_per_forward: int) -> list[list[int]]:
    """Consecutive index groups whose total length stays within the budget (at least one row each)."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and used + n > tokens_per_forward:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        groups.append(current)
    return groups
