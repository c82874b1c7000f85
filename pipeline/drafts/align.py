"""The align stage: label each draft against the closest valid reference (``medlm.edits.label_draft``).

Closest = fewest token edits; ties go to the earlier reference, so the canonical answer wins. Labelling
against the closest of several valid solutions keeps the editor from learning to rewrite one valid
answer into another (docs/design.md). Kept apart from the draft stage so the CPU tasks that run it import
only pyarrow and rapidfuzz, not torch.
"""

from __future__ import annotations

import pyarrow as pa

from medlm.edits import count_edits, label_draft
from pipeline.drafts.shards import DRAFT_SCHEMA


def align_table(batch: pa.Table, *, del_id: int) -> pa.Table:
    """Drafted rows -> DRAFT_SCHEMA rows: closest reference, edit labels, edit counts."""
    drafts = batch.column("draft_ids").to_pylist()
    answers_ids = batch.column("answers_ids").to_pylist()
    answers_text = batch.column("answers_text").to_pylist()
    labels = [label_draft(d, refs, del_id=del_id) for d, refs in zip(drafts, answers_ids)]
    counts = [count_edits(d, x.token_target, x.insert_target, del_id=del_id) for d, x in zip(drafts, labels)]
    columns = {name: batch.column(name) for name in DRAFT_SCHEMA.names if name in batch.column_names}
    columns.update(
        response_text=[texts[x.reference_index] for x, texts in zip(labels, answers_text)],
        target_ids=[refs[x.reference_index] for x, refs in zip(labels, answers_ids)],
        token_target=[x.token_target for x in labels],
        insert_target=[x.insert_target for x in labels],
        reference_index=[x.reference_index for x in labels],
        n_references=[len(refs) for refs in answers_ids],
        edit_distance=[x.distance for x in labels],
        n_replace=[c[0] for c in counts],
        n_delete=[c[1] for c in counts],
        n_insert=[c[2] for c in counts],
    )
    arrays = [pa.array(columns[f.name], f.type) if not isinstance(columns[f.name], pa.ChunkedArray)
              else columns[f.name].cast(f.type) for f in DRAFT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=DRAFT_SCHEMA)
