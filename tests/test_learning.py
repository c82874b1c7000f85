"""The method in miniature: a tiny model learns to repair corrupted sequences with parallel edits,
where one-step parallel mask decoding of the same sequences mixes their variants."""

import random

import pytest
import torch

from medlm.checkpoint import new_model
from medlm.edits import apply_edits, edit_labels
from medlm.packing import collate, edit_example, mask_example
from medlm.sampling import DecodeConfig, edit_refine, generate
from medlm.tokenizer import special_ids, train_tokenizer
from medlm.trainer import train_local

STEPS, LR, CHANGE_WEIGHT = 1500, 3e-3, 1.0
N_PROMPTS, BODY = 4, 6
MODEL_OVERRIDES: dict = {}
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "rock", "star"]


def corrupt(seq, rng, vocab_lo, vocab_hi, n_edits):
    x = list(seq)
    for _ in range(n_edits):
        op = rng.choice(["replace", "delete", "insert"])
        if op == "replace" and x:
            x[rng.randrange(len(x))] = rng.randrange(vocab_lo, vocab_hi)
        elif op == "delete" and len(x) > 1:
            del x[rng.randrange(len(x))]
        else:
            x.insert(rng.randrange(len(x) + 1), rng.randrange(vocab_lo, vocab_hi))
    return x


def train_tiny_editor():
    torch.manual_seed(0)
    rng = random.Random(0)
    tok = train_tokenizer([" ".join(WORDS) * 3], vocab_size=300)
    sp = special_ids(tok)
    word_ids = list(range(20, 60))  # plain token ids stand for words
    # a handful of prompts, each with TWO valid answers (a sequence and its two halves swapped): independent
    # per-position choices can mix them, which is what parallel decoding gets wrong
    data = []
    for k in range(N_PROMPTS):
        prompt = [sp.im_start, 100 + k, sp.im_end]
        body = rng.sample(word_ids, BODY)
        a = body + [sp.im_end]
        b = body[BODY // 2:] + body[:BODY // 2] + [sp.im_end]
        data.append((prompt, [a, b]))
    model = new_model("tiny", tok, seed=0, **MODEL_OVERRIDES)
    lo, hi = 6, len(tok)

    def next_batch(step):
        exs = []
        for prompt, answers in data:
            target = rng.choice(answers)
            exs.append(mask_example(prompt, target, sp, rng, gen_len=BODY + 2))
            draft = corrupt(target, rng, lo, hi, rng.randint(1, 3))
            clean = min(answers, key=lambda a: __import__("rapidfuzz").distance.Levenshtein.distance(draft, a))
            tt, it = edit_labels(draft, clean, del_id=sp.delete)
            exs.append(edit_example(prompt, draft, tt, it, sp))
        return collate(exs)

    history = train_local(model, next_batch, steps=STEPS, lr=LR, warmup=20, change_weight=CHANGE_WEIGHT)
    return model, tok, sp, data, history


@pytest.fixture(scope="module")
def trained():
    return train_tiny_editor()


def test_training_loss_falls(trained):
    _, _, _, _, history = trained
    first = sum(h["loss"] for h in history[:20]) / 20
    last = sum(h["loss"] for h in history[-20:]) / 20
    assert last < 0.3 * first


def test_edit_refinement_repairs_corruptions_and_beats_one_step_mask_decoding(trained):
    model, tok, sp, data, _ = trained
    rng = random.Random(123)
    repaired = total = 0
    prompts, drafts = [], []
    for prompt, answers in data:
        for _ in range(10):
            drafts.append(corrupt(rng.choice(answers), rng, 6, len(tok), rng.randint(1, 2)))
            prompts.append(prompt)
    cfg = DecodeConfig(gen_len=BODY + 2, mask_steps=1, edit_steps=8)
    states = edit_refine(model, prompts, drafts, [cfg] * len(prompts), sp)
    answers_of = {tuple(p): [tuple(a) for a in ans] for p, ans in data}
    for p, s in zip(prompts, states):
        total += 1
        repaired += tuple(s.response) in answers_of[tuple(p)]
    edit_exact = repaired / total

    one_step = generate(model, [p for p, _ in data] * 4, DecodeConfig(gen_len=BODY + 2, mask_steps=1), sp)
    mask_exact = sum(
        tuple(r.draft_ids) in answers_of[tuple(p)] for r, (p, _) in zip(one_step, data * 4)
    ) / len(one_step)
    print(f"edit refinement exact: {edit_exact:.2%}; one-step mask decoding valid: {mask_exact:.2%}")
    assert edit_exact >= 0.85
    assert mask_exact <= edit_exact - 0.2
