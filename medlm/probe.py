"""A seconds-long probe of what a masked-diffusion model has learned about the toy task's numbers.

Why: the training loss of the toy task falls quickly while the model learns the phrasing, then
sits on a plateau while numbers are still noise. Loss alone cannot tell a run that is about to
learn numbers from one that never will. The probe masks numbers in fully written valid answers
and asks for them back, in one forward pass:

* ``copy``  -- a number copied from the question (an operand): attention to the prompt;
* ``arith`` -- a number computed in the answer (a step's result): arithmetic facts;
* ``word``  -- a non-number token, masked alone: the phrasing.

Every occurrence of the probed number in the answer is masked at once, so a result cannot be
copied from where the next step reuses it. Numbers that are both an operand and a result are
skipped (their category is ambiguous).
"""

from __future__ import annotations

import random
import re
from typing import Sequence

import torch

from medlm.tokenizer import chat_prompt_ids, response_ids, special_ids

_DIGITS = re.compile(r"\d+")
CATEGORIES = ("copy", "arith", "word")


def _probe_items(tokenizer, problem, gen_len: int, rng: random.Random, words_per_problem: int):
    """(category, input ids, masked positions, expected ids) for one problem's probes."""
    sp = special_ids(tokenizer)
    prompt = chat_prompt_ids(tokenizer, problem.question)
    answer = problem.answers[rng.randrange(len(problem.answers))]
    resp = response_ids(tokenizer, answer)
    if len(resp) > gen_len:
        return []
    resp = resp + [sp.pad] * (gen_len - len(resp))
    text = [tokenizer.decode([t]).strip() for t in resp]
    numeric = [i for i, w in enumerate(text) if w.isdigit()]
    results = {text[i] for i in numeric if i > 0 and text[i - 1] in ("=", "####")}
    operands = set(_DIGITS.findall(problem.question))
    items = []
    for value in sorted({text[i] for i in numeric}):
        if (value in results) == (value in operands):
            continue
        positions = [i for i in numeric if text[i] == value]
        items.append(("arith" if value in results else "copy", prompt, resp, positions))
    words = [i for i, w in enumerate(text) if w and not w.isdigit() and resp[i] != sp.pad]
    for i in rng.sample(words, min(words_per_problem, len(words))):
        items.append(("word", prompt, resp, [i]))
    out = []
    for cat, p, r, pos in items:
        masked = list(r)
        for j in pos:
            masked[j] = sp.mask
        out.append((cat, p + masked, [len(p) + j for j in pos], [r[j] for j in pos]))
    return out


@torch.no_grad()
def number_probe(model, tokenizer, problems: Sequence, *, gen_len: int, seed: int = 0,
                 words_per_problem: int = 2, batch_size: int = 64) -> dict:
    """Share of probes answered exactly (argmax at every masked position), per category.

    Returns ``{"copy": acc, "arith": acc, "word": acc, "n": {category: count}}``; an accuracy is
    None when no probe of that category exists.
    """
    rng = random.Random(seed)
    items = [it for p in problems for it in _probe_items(tokenizer, p, gen_len, rng, words_per_problem)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = {c: 0 for c in CATEGORIES}
    counts = {c: 0 for c in CATEGORIES}
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            flat: list[int] = []
            index: list[int] = []
            expected: list[list[int]] = []
            offset = 0
            cu = [0]
            for _, ids, positions, want in chunk:
                flat.extend(ids)
                index.extend(offset + j for j in positions)
                expected.append(want)
                offset += len(ids)
                cu.append(offset)
            out = model(torch.tensor(flat, device=device), cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=device),
                        logits_index=torch.tensor(index, device=device), return_insert=False)
            pred = out.token_logits.argmax(-1).tolist()
            k = 0
            for (cat, _, positions, _), want in zip(chunk, expected):
                got = pred[k:k + len(positions)]
                k += len(positions)
                counts[cat] += 1
                hits[cat] += int(got == want)
    finally:
        model.train(was_training)
    result: dict[str, object] = {c: (hits[c] / counts[c] if counts[c] else None) for c in CATEGORIES}
    result["n"] = counts
    return result
