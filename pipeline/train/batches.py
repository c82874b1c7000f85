"""On each training worker: its dataset shard -> a stream of examples -> packed micro-batches.

Why the shard is read once, up front, and kept as Arrow (4 bytes per token): Ray Data's streaming
split starts every epoch with a barrier across workers, and in Ray Train V2 ``ray.train.report`` is a
barrier too. Packing makes the number of examples per step differ between workers, so a worker that
runs out of data first would wait at the epoch barrier while the others wait for it at the report
barrier. Taking the whole shard before step 0 removes that interleaving; later epochs are reshuffled
locally, seeded by (run seed, rank, epoch).

Every random choice of an example is seeded from (run seed, row id, epoch), so the same row gets the
same masking wherever it lands; the stream's position is a few counters that go into checkpoints,
so a resumed run continues where it stopped instead of replaying the first rows.
"""

from __future__ import annotations

import random
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc

from medlm.packing import edit_example, mask_example, padding_waste
from medlm.tokenizer import SpecialIds

DRAFT_REQUEST = "draft_request"  # key of mask examples an online-draft step turns into edit examples


def load_shard(shard, batch_size: int = 1024) -> pa.Table:
    """The usable rows of a ``ray.train.get_dataset_shard`` iterator as one Arrow table.

    Rows the driver rejected (``reason`` set; already counted and written to rejects.jsonl) are
    dropped here.
    """
    batches = [b for b in shard.iter_batches(batch_format="pyarrow", batch_size=batch_size) if b.num_rows]
    if not batches:
        return pa.table({"id": pa.array([], pa.string())})
    table = pa.concat_tables(batches)
    if "reason" in table.column_names:
        table = table.filter(pc.equal(table["reason"], ""))
    return table.combine_chunks()


class TokenColumn:
    """A ``list<int>`` column as flat values + offsets: row i -> list[int] without per-row Arrow objects."""

    def __init__(self, column):
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        self.offsets = arr.offsets.to_numpy()
        self.values = arr.values
        self.flat = arr.values.to_numpy(zero_copy_only=False) if pa.types.is_integer(arr.values.type) else None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.flat[self.offsets[i] : self.offsets[i + 1]].tolist()


class NestedTokenColumn:
    """A ``list<list<int>>`` column (all valid reference answers of a row)."""

    def __init__(self, column):
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        self.offsets = arr.offsets.to_numpy()
        self.inner = TokenColumn(arr.values)

    def __getitem__(self, i: int) -> list[list[int]]:
        return [self.inner[j] for j in range(self.offsets[i], self.offsets[i + 1])]


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


class MaskRows:
    def __init__(self, table: pa.Table):
        self.ids = table.column("id").to_pylist()
        self.prompt = TokenColumn(table.column("prompt_ids"))
        self.refs = NestedTokenColumn(table.column("answers_ids"))  # the reference first

    def __len__(self) -> int:
        return len(self.ids)


class EditRows:
    def __init__(self, table: pa.Table):
        self.ids = table.column("id").to_pylist()
        self.prompt = TokenColumn(table.column("prompt_ids"))
        self.draft = TokenColumn(table.column("draft_ids"))
        self.token_target = TokenColumn(table.column("token_target"))
        self.insert_target = TokenColumn(table.column("insert_target"))

    def __len__(self) -> int:
        return len(self.ids)


class ExampleStream:
    """Endless training examples for one worker, for the objective ``mask | edit | mixture | online``.

    mixture: each example is an edit example with probability ``mix_ratio`` (one draw per example).
    online:  each mask row is marked, with probability ``mix_ratio``, for drafting by the current model
             (see ``pipeline.train.online_drafts``); it keeps its mask example's length for packing.
    """

    def __init__(self, objective: str, special: SpecialIds, *, gen_len: int, mix_ratio: float, seed: int, rank: int,
                 mask_rows: Optional[MaskRows] = None, edit_rows: Optional[EditRows] = None,
                 state: Optional[dict] = None):
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
        ex = mask_example(prompt, target, self.special, rng, gen_len=self.gen_len)
        if wants_draft:
            ex[DRAFT_REQUEST] = {"id": rows.ids[i], "prompt": prompt, "refs": refs}
        return ex

    def _edit(self) -> dict:
        i, _ = self.edit_order.next()
        rows = self.edit_rows
        return edit_example(rows.prompt[i], rows.draft[i], rows.token_target[i], rows.insert_target[i], self.special)

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
    first-fit decreasing over the buffer (``medlm.packing.pack_greedy``) and the fullest rows: that
    hands out the longest examples first, so in a mixture the shorter edit examples would wait and
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
