"""An offline GSM8K-like task whose every problem has several valid written solutions.

Why: parallel masked decoding fails by *mixing* answers that are each valid
("3 + 7 = 10" and "7 + 3 = 10" become "7 + 7 = 10"). To see that failure, and an
editor repairing it, a task needs (1) several valid phrasings per problem:
independent steps in either order, operands of ``+`` and ``*`` either way round, a
few wording styles; (2) a final answer that depends on the written steps, so a
broken step shows up; (3) small numbers and vocabulary so a tiny model can learn
it on a CPU. Validity of a whole answer is exact: it must equal one phrasing.

Why operands are small (2..7, factors 2..4, results at most 30): every number is one token, so a small model
learns arithmetic fact by fact. With operands up to 20 there are thousands of facts and a test
problem's facts are often never seen in training; then the held-out score measures whether the
model invents arithmetic, not how it decodes. With these ranges the split still holds out whole
operand combinations, but every fact a test problem needs occurs in a few thousand training
problems, so the held-out score measures the decoding method: mixing of valid variants.

Texts are space-separated words with punctuation as its own word ("apples ."),
so a word-level tokenizer sees exactly the words counted here (solutions are
29-44 words). A newline precedes the GSM8K-style ``#### <answer>`` line;
comparisons ignore the kind and amount of whitespace.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

from medlm.edits import closest_reference as _closest
from medlm.tasks.graders import answers_match, extract_answer

__all__ = [
    "ToyProblem",
    "generate_problems",
    "is_valid_solution",
    "check_solution",
    "closest_reference",
    "write_jsonl",
    "corpus_text",
    "vocabulary",
    "split_of",
]

SPLITS = ("train", "valid", "test")
# of 10 hash buckets of operand tuples: 0-1 hold the test split (20%), 2 the validation split (10%,
# for probes during training), the rest training
_SPLIT_BUCKETS = {0: "test", 1: "test", 2: "valid"}
MAX_NUMBER = 30  # no number in any text exceeds this (every number is one token)

NAMES = (("Tom", "He", "he"), ("Ben", "He", "he"), ("Sam", "He", "he"), ("Leo", "He", "he"),
         ("Ann", "She", "she"), ("Mia", "She", "she"), ("Eva", "She", "she"), ("Zoe", "She", "she"))
ITEMS = ("apples", "pens", "cards", "eggs", "books", "shells")


@dataclass(frozen=True)
class ToyProblem:
    """One word problem; ``answers`` holds every valid solution, ``answers[0]`` the canonical one."""

    id: str
    question: str
    answers: tuple[str, ...]
    final: int


# --- problem kinds ---------------------------------------------------------
# Each kind: a question template, numbered steps, and 2-4 wording styles. A step is
# (name, operator, left, right, depends_on); left/right name operands or earlier steps.
# Steps whose dependencies allow it may be written in any order; "+" and "*" operands
# may be written either way round. Style templates use {x} (expression) and {v} (value).


@dataclass(frozen=True)
class _Step:
    name: str
    op: str
    left: str
    right: str

    def deps(self) -> set[str]:
        return {self.left, self.right}


@dataclass(frozen=True)
class _Kind:
    name: str
    question: str
    steps: tuple[_Step, ...]  # in canonical (question) order; the last one is the answer
    styles: tuple[dict[str, str], ...]  # step name -> sentence template
    ranges: tuple[tuple[str, int, int], ...] = (("A", 2, 7), ("B", 2, 7), ("D", 2, 4), ("E", 2, 4))

    def draw(self, rng: random.Random) -> dict[str, int]:
        while True:  # rejection sampling keeps every intermediate value in 1..MAX_NUMBER
            nums = {letter: rng.randint(lo, hi) for letter, lo, hi in self.ranges}
            values = _evaluate(self.steps, nums)
            if all(0 < v <= MAX_NUMBER for v in values.values()):
                return nums


_KINDS = (
    _Kind(
        name="buy",
        question="{Name} has {A} {items} . {He} buys {B} more {items} and {D} boxes with "
                 "{E} {items} in each box . How many {items} does {Name} have now ?",
        steps=(_Step("loose", "+", "A", "B"), _Step("boxed", "*", "D", "E"),
               _Step("total", "+", "loose", "boxed")),
        styles=(
            {"loose": "{Name} has {x} = {v} {items} before the boxes .",
             "boxed": "The boxes hold {x} = {v} {items} .",
             "total": "So {Name} has {x} = {v} {items} now ."},
            {"loose": "Without the boxes there are {x} = {v} {items} .",
             "boxed": "In the boxes there are {x} = {v} {items} .",
             "total": "In total there are {x} = {v} {items} ."},
            {"loose": "{He} has {x} = {v} loose {items} .",
             "boxed": "{He} gets {x} = {v} {items} from the boxes .",
             "total": "Now {he} has {x} = {v} {items} ."},
            {"loose": "Loose {items} : {x} = {v} .",
             "boxed": "Boxed {items} : {x} = {v} .",
             "total": "All {items} : {x} = {v} ."},
        ),
    ),
    _Kind(
        name="give",
        question="{Name} has {D} bags with {E} {items} in each bag . {He} gives {A} {items} "
                 "to a friend and {B} {items} to a neighbor . How many {items} does {Name} have left ?",
        steps=(_Step("bagged", "*", "D", "E"), _Step("given", "+", "A", "B"),
               _Step("left", "-", "bagged", "given")),
        styles=(
            {"bagged": "{Name} has {x} = {v} {items} in the bags .",
             "given": "{He} gives away {x} = {v} {items} .",
             "left": "So {Name} has {x} = {v} {items} left ."},
            {"bagged": "The bags hold {x} = {v} {items} .",
             "given": "The friend and the neighbor get {x} = {v} {items} .",
             "left": "That leaves {x} = {v} {items} ."},
            {"bagged": "Bagged {items} : {x} = {v} .",
             "given": "Given {items} : {x} = {v} .",
             "left": "Left {items} : {x} = {v} ."},
        ),
        ranges=(("A", 2, 7), ("B", 2, 7), ("D", 2, 4), ("E", 3, 6)),
    ),
    _Kind(
        name="trade",
        question="{Name} has {A} {items} and finds {B} more . {He} gives away {C} {items} and "
                 "buys {D} packs with {E} {items} in each pack . How many {items} does {Name} have now ?",
        steps=(_Step("found", "+", "A", "B"), _Step("kept", "-", "found", "C"),
               _Step("packed", "*", "D", "E"), _Step("total", "+", "kept", "packed")),
        styles=(
            {"found": "{Name} has {x} = {v} {items} after finding more .",
             "kept": "{He} keeps {x} = {v} {items} .",
             "packed": "The packs hold {x} = {v} {items} .",
             "total": "So {Name} has {x} = {v} {items} now ."},
            {"found": "With the found {items} : {x} = {v} .",
             "kept": "After giving : {x} = {v} .",
             "packed": "From the packs : {x} = {v} .",
             "total": "Now : {x} = {v} {items} ."},
        ),
        ranges=(("A", 2, 7), ("B", 2, 7), ("C", 1, 5), ("D", 2, 4), ("E", 2, 4)),
    ),
)

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _evaluate(steps: Iterable[_Step], nums: dict[str, int]) -> dict[str, int]:
    values = dict(nums)
    for step in steps:
        values[step.name] = _OPS[step.op](values[step.left], values[step.right])
    return {s.name: values[s.name] for s in steps}


def _orders(steps: tuple[_Step, ...]) -> list[tuple[_Step, ...]]:
    """Every order of the steps that respects dependencies, canonical order first."""
    names = {s.name for s in steps}
    valid = []
    for perm in itertools.permutations(steps):
        seen: set[str] = set()
        ok = True
        for step in perm:
            if (step.deps() & names) - seen:
                ok = False
                break
            seen.add(step.name)
        if ok and perm[-1] is steps[-1]:  # the answer step stays last
            valid.append(perm)
    return valid  # permutations() yields the identity first, so canonical leads


def _plans(steps: tuple[_Step, ...]) -> list[tuple[tuple[str, bool], ...]]:
    """Every way to write the steps: an order, and for each ``+``/``*`` step whether its
    operands are swapped; each plan is a sequence of (step name, swapped). Canonical first."""
    commutative = [s.name for s in steps if s.op in "+*"]
    plans = []
    for order in _orders(steps):
        for flips in itertools.product((False, True), repeat=len(commutative)):
            swapped = {name for name, f in zip(commutative, flips) if f}
            plans.append(tuple((s.name, s.name in swapped) for s in order))
    return plans


_PLANS = {kind.name: _plans(kind.steps) for kind in _KINDS}


def _solutions(kind: _Kind, nums: dict[str, int], words: dict[str, str]) -> tuple[str, ...]:
    values = {**nums, **_evaluate(kind.steps, nums)}
    ending = f"\n#### {values[kind.steps[-1].name]}"
    out: dict[str, None] = {}  # ordered set: duplicates arise when both operands are equal
    for style in kind.styles:
        sentence = {}  # (step name, operands swapped) -> the written step
        for step in kind.steps:
            a, b = values[step.left], values[step.right]
            for swap in (False, True) if step.op in "+*" else (False,):
                expr = f"{b} {step.op} {a}" if swap else f"{a} {step.op} {b}"
                sentence[step.name, swap] = style[step.name].format(x=expr, v=values[step.name], **words)
        for plan in _PLANS[kind.name]:
            out[" ".join([sentence[key] for key in plan]) + ending] = None
    return tuple(out)


def _content_key(kind: _Kind, nums: dict[str, int]) -> tuple:
    """What makes two problems 'the same' for the split: kind and operands, with the
    operands of each commutative step sorted (so "3, 7" and "7, 3" fall on one side)."""
    parts: list = [kind.name]
    for step in kind.steps:
        operands = [nums[x] for x in (step.left, step.right) if x in nums]
        parts.append(tuple(sorted(operands)) if step.op in "+*" else tuple(operands))
    return tuple(parts)


def split_of(key: tuple) -> str:
    """'test', 'valid' or 'train' from a stable hash of a content key (never Python's salted hash)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return _SPLIT_BUCKETS.get(int.from_bytes(digest, "big") % 10, "train")


def _make_problem(rng: random.Random, split: str, index: int) -> ToyProblem:
    while True:
        kind = rng.choice(_KINDS)
        nums = kind.draw(rng)
        if split_of(_content_key(kind, nums)) == split:
            break
    name, he_cap, he = rng.choice(NAMES)
    words = {"Name": name, "He": he_cap, "he": he, "items": rng.choice(ITEMS)}
    question = kind.question.format(**words, **nums)
    answers = _solutions(kind, nums, words)
    final = _evaluate(kind.steps, nums)[kind.steps[-1].name]
    return ToyProblem(id=f"toy-{split}-{index:06d}", question=question, answers=answers, final=final)


def generate_problems(n: int, *, seed: int, split: str = "train") -> list[ToyProblem]:
    """``n`` problems of ``split``; problem ``i`` depends only on (seed, split, i).

    Train, valid and test are disjoint by content: a problem's side is fixed by a hash of
    its kind and operands, so test problems use operand combinations never trained on.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return [_make_problem(random.Random(f"medlm-toy|{seed}|{split}|{i}"), split, i) for i in range(n)]


def _norm(text: str) -> str:
    return " ".join(text.split())


@lru_cache(maxsize=4096)
def _normalized(answers: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_norm(a) for a in answers)


_NUMBER = re.compile(r"\d+")


def skeleton(text: str) -> str:
    """The text with every number replaced by ``#``: the phrasing, numbers ignored."""
    return _NUMBER.sub("#", _norm(text))


@lru_cache(maxsize=4096)
def _skeletons(answers: tuple[str, ...]) -> frozenset[str]:
    return frozenset(skeleton(a) for a in answers)


def is_valid_solution(problem: ToyProblem, text: str) -> bool:
    """True when ``text`` is, up to whitespace, exactly one of the problem's phrasings."""
    return _norm(text) in _normalized(problem.answers)


def check_solution(problem: ToyProblem, text: str) -> dict[str, bool]:
    """``final_correct``: the extracted final number is right; ``valid``: the whole text is;
    ``skeleton_valid``: the text is a valid phrasing once numbers are ignored. Why the third:
    it tells variant mixing (a broken phrasing) apart from number errors (a right phrasing with a
    wrong copy or sum)."""
    return {"final_correct": answers_match(extract_answer(text), str(problem.final)),
            "valid": is_valid_solution(problem, text),
            "skeleton_valid": skeleton(text) in _skeletons(problem.answers)}


def closest_reference(problem: ToyProblem, draft_text: str) -> str:
    """The valid phrasing nearest to ``draft_text`` in word-level Levenshtein distance.

    The rule of ``medlm.edits.closest_reference`` (why: see ``medlm.edits``) over words instead of
    token ids; ties go to the earlier variant, so the choice is deterministic.
    """
    k, _ = _closest(draft_text.split(), [ref.split() for ref in problem.answers])
    return problem.answers[k]


def problems_jsonl(problems: Iterable[ToyProblem]) -> str:
    """The pipeline's source rows ``{id, question, answer, answers, final}``, one JSON object a line."""
    lines = []
    for p in problems:
        row = {"id": p.id, "question": p.question, "answer": p.answers[0], "answers": list(p.answers), "final": p.final}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


def write_jsonl(problems: Iterable[ToyProblem], path: str | Path, fmt: str = "question_answer") -> int:
    """Write :func:`problems_jsonl` to ``path``; returns the row count."""
    if fmt != "question_answer":
        raise ValueError(f"unknown format {fmt!r}; known: question_answer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = problems_jsonl(problems)
    path.write_text(text, encoding="utf-8")
    return text.count("\n")


def vocabulary() -> list[str]:
    """Every word any generated text can contain, sorted (numbers 0..MAX_NUMBER included)."""
    words = {str(n) for n in range(MAX_NUMBER + 1)} | {"####", "+", "-", "*", "="}
    fill = {k: "0" for k in "ABCDE"} | {"x": "0", "v": "0"}  # numbers were added above
    for kind in _KINDS:
        for template in (kind.question, *(t for s in kind.styles for t in s.values())):
            for name, he_cap, he in NAMES:
                for item in ITEMS:
                    words.update(template.format(Name=name, He=he_cap, he=he, items=item, **fill).split())
    return sorted(words)


def corpus_text(n: int, seed: int) -> Iterator[str]:
    """Texts for training a tokenizer: the full vocabulary once, then question + each
    solution variant of ``n`` training problems (so rare numbers are never out of vocabulary)."""
    yield " ".join(vocabulary())
    for problem in generate_problems(n, seed=seed, split="train"):
        for answer in problem.answers:
            yield f"{problem.question}\n{answer}"
