"""The align stage: label each draft against the closest valid reference with ``medlm.edits``.

Closest = fewest token edits; ties go to the earlier reference, so the canonical answer wins. Labelling
against the closest of several valid solutions keeps the editor from learning to rewrite one valid
answer into another (DESIGN.md). Kept apart from the draft stage so the CPU tasks that run it import
only pyarrow and rapidfuzz, not torch.
"""

from __future__ import annotations

import pyarrow as pa

from medlm.edits import count_edits, edit_distance, edit_labels_batch
from pipeline.drafts.shards import DRAFT_SCHEMA


def closest_reference(draft: list[int], references: list[list[int]]) -> tuple[int, int]:
    """(index, token edit distance) of the reference needing the fewest edits; ties -> earliest."""
    best, best_d = 0, None
    for i, ref in enumerate(references):
        d = edit_distance(draft, ref)
        if best_d is None or d < best_d:
            best, best_d = i, d
    return best, int(best_d)


def align_table(batch: pa.Table, *, del_id: int) -> pa.Table:
    """Drafted rows -> DRAFT_SCHEMA rows: closest reference, edit labels, edit counts."""
    drafts = batch.column("draft_ids").to_pylist()
    answers_ids = batch.column("answers_ids").to_pylist()
    answers_text = batch.column("answers_text").to_pylist()
    chosen = [closest_reference(d, refs) for d, refs in zip(drafts, answers_ids)]
    targets = [refs[k] for (k, _), refs in zip(chosen, answers_ids)]
    token_targets, insert_targets = edit_labels_batch(drafts, targets, del_id=del_id)
    counts = [count_edits(d, t, g, del_id=del_id) for d, t, g in zip(drafts, token_targets, insert_targets)]
    columns = {name: batch.column(name) for name in DRAFT_SCHEMA.names if name in batch.column_names}
    columns.update(
        response_text=[texts[k] for (k, _), texts in zip(chosen, answers_text)],
        target_ids=targets,
        token_target=token_targets,
        insert_target=insert_targets,
        reference_index=[k for k, _ in chosen],
        n_references=[len(refs) for refs in answers_ids],
        edit_distance=[d for _, d in chosen],
        n_replace=[c[0] for c in counts],
        n_delete=[c[1] for c in counts],
        n_insert=[c[2] for c in counts],
    )
    arrays = [pa.array(columns[f.name], f.type) if not isinstance(columns[f.name], pa.ChunkedArray)
              else columns[f.name].cast(f.type) for f in DRAFT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=DRAFT_SCHEMA)
