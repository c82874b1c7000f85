"""Give a test checkpoint an insertion head that has really seen edit labels, in seconds.

Drafting with intermediate edits is refused from a checkpoint whose insertion head was never trained on
edits (``medlm_meta.json``: ``edit_examples_seen`` = 0). Tests that exercise that path train a tiny
checkpoint's heads for a few plain-loop steps on edit examples (toy references with one token deleted,
replaced or duplicated, labelled by ``medlm.edits.label_draft``) and record the count honestly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from medlm.checkpoint import EDIT_EXAMPLES_SEEN, META_FILE, load_checkpoint, read_meta, save_checkpoint
from medlm.edits import label_draft
from medlm.packing import collate, edit_example
from medlm.tasks.toy import generate_problems
from medlm.tokenizer import chat_prompt_ids, response_ids, special_ids
from medlm.trainer import train_local


def corrupted(ref: list[int], rng: random.Random, vocab: int) -> list[int]:
    """The reference with one token deleted, replaced or duplicated."""
    draft = list(ref)
    i = rng.randrange(len(draft))
    kind = rng.choice(("delete", "replace", "duplicate"))
    if kind == "delete" and len(draft) > 1:
        del draft[i]
    elif kind == "replace":
        draft[i] = rng.randrange(vocab)
    else:
        draft.insert(i, draft[i])
    return draft


def train_edit_head(checkpoint: str | Path, steps: int = 3, rows: int = 4, seed: int = 0) -> int:
    """Train ``checkpoint`` in place for ``steps`` edit steps; returns the edit examples it now records."""
    model, tok = load_checkpoint(checkpoint)
    sp = special_ids(tok)
    rng = random.Random(seed)
    problems = generate_problems(rows * steps, seed=seed)
    examples = []
    for p in problems:
        prompt, ref = chat_prompt_ids(tok, p.question), response_ids(tok, p.answers[0])
        draft = corrupted(ref, rng, len(tok))
        labels = label_draft(draft, [ref], del_id=sp.delete)
        examples.append(edit_example(prompt, draft, labels.token_target, labels.insert_target, sp))
    train_local(model, lambda step: collate(examples[step * rows:(step + 1) * rows]), steps=steps, lr=1e-3, warmup=0)
    meta = read_meta(checkpoint) or {}
    meta[EDIT_EXAMPLES_SEEN] = int(meta.get(EDIT_EXAMPLES_SEEN) or 0) + len(examples)
    save_checkpoint(model, tok, checkpoint, extra=meta)
    assert json.loads((Path(checkpoint) / META_FILE).read_text())[EDIT_EXAMPLES_SEEN] == meta[EDIT_EXAMPLES_SEEN]
    return meta[EDIT_EXAMPLES_SEEN]
