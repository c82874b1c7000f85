"""On each training worker: its dataset shard as Arrow, and the row views ``medlm.packing.ExampleStream`` reads.

Why the shard is read once, up front, and kept as Arrow (4 bytes per token): Ray Data's streaming
split starts every epoch with a barrier across workers, and in Ray Train V2 ``ray.train.report`` is a
barrier too. Packing makes the number of examples per step differ between workers, so a worker that
runs out of data first would wait at the epoch barrier while the others wait for it at the report
barrier. Taking the whole shard before step 0 removes that interleaving; later epochs are reshuffled
locally, seeded by (run seed, rank, epoch).

The stream of examples and the packer that fills micro-batches are the method's, in
``medlm.packing``; this module only turns Arrow columns into token lists without per-row Arrow objects.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


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
        # share of the reference masked when the draft started (1.0: fully masked); ME-DLM's loss divides by it
        self.start_mask_ratio = (table.column("start_mask_ratio").to_pylist() if "start_mask_ratio" in table.column_names
                                 else [1.0] * len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)
