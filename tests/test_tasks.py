"""Tests for medlm.tasks: the toy generator, answer graders, the sandbox, HumanEval, the registry."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medlm.tasks import get_task
from medlm.tasks.graders import answers_match, extract_answer
from medlm.tasks.sandbox import BOUNDARIES, available_boundaries, run_sandboxed
from medlm.tasks.toy import (
    MAX_NUMBER,
    ToyProblem,
    check_solution,
    closest_reference,
    corpus_text,
    generate_problems,
    is_valid_solution,
    vocabulary,
    write_jsonl,
)

GSM8K_TEST = Path(__file__).resolve().parents[1].parent / "shared/data/gsm8k/test.jsonl"
STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@pytest.fixture(scope="module")
def train() -> list[ToyProblem]:
    return generate_problems(1000, seed=7, split="train")


@pytest.fixture(scope="module")
def test_split() -> list[ToyProblem]:
    return generate_problems(300, seed=7, split="test")


# --------------------------------------------------------------------------- toy generator


def test_generation_is_deterministic_per_index():
    a = generate_problems(30, seed=3)
    assert a == generate_problems(30, seed=3)
    assert a[:10] == generate_problems(10, seed=3)  # problem i depends on (seed, split, i) only
    assert a != generate_problems(30, seed=4)
    assert [p.id for p in a[:2]] == ["toy-train-000000", "toy-train-000001"]
    assert generate_problems(1, seed=3, split="test")[0].id == "toy-test-000000"
    with pytest.raises(ValueError, match="unknown split"):
        generate_problems(1, seed=0, split="dev")


def _content_key(p: ToyProblem) -> tuple:
    """Kind and operands read back from the question text, commutative pairs sorted."""
    n = [int(x) for x in re.findall(r"\d+", p.question)]
    if "bags" in p.question:  # D bags of E; gives A and B
        return ("give", tuple(sorted(n[0:2])), tuple(sorted(n[2:4])))
    if "finds" in p.question:  # A, finds B, gives C, D packs of E
        return ("trade", tuple(sorted(n[0:2])), n[2], tuple(sorted(n[3:5])))
    return ("buy", tuple(sorted(n[0:2])), tuple(sorted(n[2:4])))  # A, buys B, D boxes of E


def test_train_and_test_are_disjoint_by_content(train, test_split):
    train_keys = {_content_key(p) for p in train}
    test_keys = {_content_key(p) for p in test_split}
    assert not train_keys & test_keys
    assert not {p.question for p in train} & {p.question for p in test_split}
    assert len(test_keys) > 100  # varied, not a few repeats (operands 2..7: about 190 test keys in all)


def test_every_variant_is_valid_consistent_and_step_dependent(train):
    kinds = set()
    for p in train[:200]:
        kinds.add(_content_key(p)[0])
        assert len(p.answers) >= 6 and len(set(p.answers)) == len(p.answers)
        for answer in p.answers:
            assert is_valid_solution(p, answer)
            assert check_solution(p, answer) == {"final_correct": True, "valid": True, "skeleton_valid": True}
            assert answer.rstrip().endswith(f"#### {p.final}")
            assert 25 <= len(answer.split()) <= 45
            steps = STEP.findall(answer)
            assert len(steps) >= 3
            for a, op, b, c in steps:
                assert OPS[op](int(a), int(b)) == int(c)
                assert 0 < int(c) <= MAX_NUMBER
            # the final step combines results written earlier, not numbers of the question
            written = {c for _, _, _, c in steps[:-1]}
            assert {steps[-1][0], steps[-1][2]} <= written
            assert int(steps[-1][3]) == p.final
    assert kinds == {"buy", "give", "trade"}


def test_variants_differ_in_operand_order_step_order_and_wording(train):
    p = next(q for q in train if "buys" in q.question and len(set(re.findall(r"\d+", q.question))) == 4
             and len(re.findall(r"\d+", q.question)) == 4)
    a, b, d, e = re.findall(r"\d+", p.question)
    joined = "\n".join(p.answers)
    assert f"{a} + {b} =" in joined and f"{b} + {a} =" in joined
    assert f"{d} * {e} =" in joined and f"{e} * {d} =" in joined
    first_steps = {STEP.search(ans).group(2) for ans in p.answers}
    assert first_steps == {"+", "*"}  # the independent steps appear in either order
    assert len({ans.split()[0] for ans in p.answers}) >= 3  # several wordings


def test_whitespace_does_not_matter_but_words_do(train):
    p = train[0]
    assert is_valid_solution(p, "  " + p.answers[1].replace(" ", "\n  ") + "\n")
    assert not is_valid_solution(p, p.answers[0].replace(".", "", 1))
    assert not is_valid_solution(p, "")


def test_mixing_two_valid_variants_is_invalid(train):
    """"3 + 7 = 10" and "7 + 3 = 10" mixed token by token give "7 + 7 = 10": invalid."""

    def numbers(q):
        return re.findall(r"\d+", q.question)

    p = next(q for q in train if len(set(numbers(q))) == len(numbers(q)))  # all operands distinct
    for answer in p.answers:
        a, op, b, c = STEP.search(answer).groups()
        mixed = answer.replace(f"{a} {op} {b} = {c}", f"{b} {op} {b} = {c}", 1)
        assert mixed != answer
        # a number mixed in is invalid, but the phrasing (numbers ignored) is still one of the valid ones
        assert check_solution(p, mixed) == {"final_correct": True, "valid": False, "skeleton_valid": True}
    reworded = p.answers[0].replace(" = ", " equals ", 1)  # right numbers, a phrasing no variant has
    assert check_solution(p, reworded) == {"final_correct": True, "valid": False, "skeleton_valid": False}
    wrong_final = p.answers[0].replace(f"#### {p.final}", f"#### {p.final + 1}")
    assert check_solution(p, wrong_final) == {"final_correct": False, "valid": False, "skeleton_valid": True}


def test_closest_reference_picks_the_variant_the_draft_came_from(train):
    p = train[5]
    for i in (0, 3, len(p.answers) - 1):
        words = p.answers[i].split()
        assert closest_reference(p, p.answers[i]) == p.answers[i]
        words[2] = "banana"  # one corrupted word: the source variant is still nearest
        assert closest_reference(p, " ".join(words)) == p.answers[i]
    shortest = min(len(a.split()) for a in p.answers)  # an empty draft is nearest the shortest
    assert closest_reference(p, "") == next(a for a in p.answers if len(a.split()) == shortest)


def test_write_jsonl_rows(tmp_path, train):
    path = tmp_path / "toy" / "train.jsonl"
    assert write_jsonl(train[:20], path) == 20
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["id"] == train[0].id and rows[0]["question"] == train[0].question
    assert rows[0]["answer"] == train[0].answers[0]
    assert rows[0]["answers"] == list(train[0].answers)
    with pytest.raises(ValueError):
        write_jsonl(train[:1], tmp_path / "x.jsonl", fmt="parquet")


def test_corpus_and_vocabulary_cover_every_generated_word(train, test_split):
    vocab = set(vocabulary())
    texts = list(corpus_text(20, seed=1))
    assert set(texts[0].split()) == vocab
    assert len(texts) == 1 + sum(len(p.answers) for p in generate_problems(20, seed=1))
    for p in train[:200] + test_split[:200]:
        assert set(p.question.split()) <= vocab
        for answer in p.answers:
            assert set(answer.split()) <= vocab
    assert len(vocab) < 200  # small enough for a tiny word-level model


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), index=st.integers(0, 40), split=st.sampled_from(["train", "test"]))
def test_any_problem_has_consistent_variants(seed, index, split):
    p = generate_problems(index + 1, seed=seed, split=split)[index]
    assert p.id == f"toy-{split}-{index:06d}"
    finals = {extract_answer(a) for a in p.answers}
    assert finals == {str(p.final)}
    assert all(is_valid_solution(p, a) for a in p.answers)


# --------------------------------------------------------------------------- graders


def test_gsm8k_reference_answers_extract_and_match():
    if not GSM8K_TEST.is_file():
        pytest.skip(f"GSM8K test set not found at {GSM8K_TEST}")
    rows = [json.loads(line) for line in GSM8K_TEST.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1319
    for row in rows:
        ref = extract_answer(row["answer"])
        assert ref is not None and re.fullmatch(r"-?\d+(\.\d+)?", ref), row["answer"][-40:]
        value = int(float(ref))
        assert answers_match(ref, str(value))
        assert answers_match(f"{value:,}", ref) and answers_match(f"${value}.00", ref)
        assert answers_match(extract_answer(f"So the total is \\boxed{{{value}}}."), ref)
        assert answers_match(extract_answer(f"She pays {value + 3} - 3 = {value} dollars."), ref)
        assert not answers_match(str(value + 1), ref)
        assert not answers_match(extract_answer(f"#### {value - 1:,}"), ref)
        assert not answers_match(extract_answer(f"{value} apples, so \\boxed{{{value * 10 + 1}}}"), ref)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("#### 1,234", "1234"),
        ("blah\n#### $1,234.", "1234"),
        ("#### -7", "-7"),
        ("#### 18\nanything after 99", "18"),
        ("The answer is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}} and later \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("nested \\boxed{2^{10}} ok", "2^{10}"),
        ("We get 3 apples, then 12.5 pears.", "12.5"),
        ("totals 1,000,000 dollars", "1000000"),
        ("a list 1, 2, 3", "3"),
        ("no digits here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer_on_tricky_strings(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "pred, ref, same",
    [
        ("1,000", "1000", True),
        ("3.0", "3", True),
        ("$18", "18", True),
        ("18.", "18", True),
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "0.50", True),
        ("-4", "4", False),
        ("17", "18", False),
        (None, "1", False),
        ("x+1", "x + 1", True),
        ("seven", "7", False),
    ],
)
def test_answers_match(pred, ref, same):
    assert answers_match(pred, ref) is same


# --------------------------------------------------------------------------- sandbox and HumanEval
# These run behind the strongest OS boundary the machine offers, or none (allow_unisolated): what they
# check holds either way. tests/test_sandbox.py runs under each boundary in turn.


@pytest.fixture(scope="module")
def humaneval():
    from medlm.tasks.humaneval import load_humaneval

    return load_humaneval()


def test_humaneval_loads_all_problems(humaneval):
    assert len(humaneval) == 164
    assert set(humaneval[0]) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    assert humaneval[0]["task_id"] == "HumanEval/0"


def test_canonical_humaneval_solutions_pass(humaneval):
    from medlm.tasks.humaneval import check_completion

    for problem in humaneval[:5]:
        result = check_completion(problem, problem["canonical_solution"], timeout_s=15, allow_unisolated=True)
        assert result.passed, (problem["task_id"], result.reason, result.stderr[-500:])
        assert result.reason == "passed"


def test_wrong_humaneval_completion_fails(humaneval):
    from medlm.tasks.humaneval import check_completion

    result = check_completion(humaneval[0], "    return None\n", timeout_s=15, allow_unisolated=True)
    assert not result.passed and result.reason.startswith("failed: AssertionError")
    # a completion that exits before the tests run must not pass
    result = check_completion(humaneval[0], "    pass\nimport sys\nsys.exit(0)\n", timeout_s=15, allow_unisolated=True)
    assert not result.passed and "exited before the end" in result.reason


def test_sandbox_runs_ordinary_code_with_a_private_writable_directory():
    code = ("import math, collections\nopen('note.txt', 'w').write('hi')\n"
            "print(open('note.txt').read(), math.gcd(12, 18))")
    result = run_sandboxed(code, timeout_s=15, allow_unisolated=True)
    assert result.passed and result.stdout == "hi 6\n"


HOSTILE = {
    "infinite loop": ("while True:\n    pass\n", "timeout"),
    "huge allocation": ("x = bytearray(1 << 40)\n", "memory"),
    "unbounded growth": ("chunks = []\nwhile True:\n    chunks.append(bytes(10**7))\n", "memory"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()\n", "forbidden: os.fork"),
    "fork, exception swallowed": ("import os\ntry:\n    os.fork()\nexcept BaseException:\n    pass\n", "forbidden: os.fork"),
    "subprocess": ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])\n", "forbidden: subprocess"),
    "os.system": ("import os\nos.system('echo hi')\n", "forbidden: os.system"),
    "kill the parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", "forbidden: os.kill"),
    "rmtree": ("import shutil\nshutil.rmtree('/tmp/medlm-nothing-here')\n", "forbidden: shutil.rmtree"),
    "ctypes": ("import ctypes\nctypes.CDLL(None).fork()\n", "forbidden: import ctypes"),
    "network": ("import socket\nsocket.create_connection(('127.0.0.1', 8265))\n", "forbidden: import socket"),
    "read parent environ": ("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())\n", "forbidden: open() reading"),
    "relative escape": ("open('../../medlm_sandbox_rel_escape', 'w').write('x')\n", "forbidden: open() writing"),
    "os._exit(0) before the end": ("import os\nos._exit(0)\nassert False\n", "failed: exited before the end"),
    "big file": ("open('big', 'w').write('x' * 3_000_000)\n", "failed: OSError: [Errno 27] File too large"),
    "posix.system": ("import posix\nposix.system('echo hi')\n", "forbidden: posix.system"),
    "posix.fork": ("import posix\nposix.fork()\n", "forbidden: posix.fork"),
    "_io.FileIO outside": ("import _io\n_io.FileIO('/tmp/medlm_sandbox_fileio', 'w')\n", "forbidden: FileIO writing"),
    "posix.unlink outside": ("import posix\nposix.unlink('/tmp/medlm-nothing-here')\n", "forbidden: posix.unlink"),
}


@pytest.mark.parametrize("boundary", [*BOUNDARIES, "none"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_code_fails_with_a_clear_reason(name, boundary):
    """The in-process guards give the same reasons behind every OS boundary (tests/test_sandbox.py
    shows the boundaries hold by themselves)."""
    problem = available_boundaries().get(boundary)
    if problem is not None:
        pytest.skip(f"sandbox boundary {boundary!r} not available on this machine: {problem}")
    code, reason = HOSTILE[name]
    # only the hang is meant to time out; the others get room for a loaded CI machine
    timeout = 2 if reason == "timeout" else 15
    result = run_sandboxed(code, timeout_s=timeout, memory_mb=128, boundary=boundary)
    assert not result.passed and result.boundary == boundary
    assert result.reason.startswith(reason), (result.reason, result.stderr[-500:])
    assert result.duration_s < timeout + 2


def test_sandbox_cannot_write_outside_its_directory():
    target = Path("/tmp/medlm_sandbox_escape_test")
    target.unlink(missing_ok=True)
    for code in (
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        f"from pathlib import Path\nPath({str(target)!r}).write_text('x')",
        f"import os\nos.chdir('/tmp')\nopen({target.name!r}, 'w').write('x')",
    ):
        result = run_sandboxed(code, timeout_s=15, allow_unisolated=True)
        assert result.reason.startswith("forbidden:"), (code, result.reason)
        assert not target.exists()


def test_sandbox_hides_the_parent_environment(monkeypatch):
    monkeypatch.setenv("MEDLM_TEST_SECRET", "hunter2-do-not-leak")
    code = "import os\nprint(sorted(os.environ.items()))\nassert 'MEDLM_TEST_SECRET' not in os.environ\n"
    result = run_sandboxed(code, timeout_s=15, allow_unisolated=True)
    assert result.passed, result.reason
    assert "hunter2" not in result.stdout + result.stderr
    assert "'PATH'" in result.stdout
    assert os.environ["MEDLM_TEST_SECRET"] == "hunter2-do-not-leak"  # the parent is untouched


def test_sandbox_output_is_bounded():
    result = run_sandboxed("while True:\n    print('x' * 1000)\n", timeout_s=15, max_output_chars=5000,
                           allow_unisolated=True)
    assert not result.passed and "File too large" in result.reason
    assert len(result.stdout) <= 5000


# --------------------------------------------------------------------------- registry


def test_registry_knows_three_tasks_and_names_them_on_error():
    for name in ("toy", "gsm8k", "humaneval"):
        assert get_task(name).name == name
    with pytest.raises(ValueError, match=r"unknown task 'mbpp'.*gsm8k.*humaneval.*toy"):
        get_task("mbpp")


def test_registry_graders():
    toy = get_task("toy")
    p = toy.load(3, seed=1)[2]
    assert p.id == "toy-test-000002"
    assert toy.grade(p, p.answers[-1]) == {"correct": True, "final_correct": True, "valid": True, "skeleton_valid": True}
    assert toy.grade(p, "#### 0")["correct"] is False
    row = {"question": "q", "answer": "2 + 2 = 4\n#### 4"}
    assert get_task("gsm8k").grade(row, "so \\boxed{4}")["correct"]
    assert not get_task("gsm8k").grade(row, "the answer is 5")["correct"]


def test_gsm8k_loader_reads_the_folder_the_user_names(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDLM_GSM8K_DIR", raising=False)
    monkeypatch.delenv("MEDLM_GSM8K", raising=False)
    with pytest.raises(FileNotFoundError, match="GSM8K is not shipped.*MEDLM_GSM8K=hub.*MEDLM_GSM8K=PATH"):
        get_task("gsm8k").load(split="test")
    if not GSM8K_TEST.is_file():
        pytest.skip(f"GSM8K test set not found at {GSM8K_TEST}")
    monkeypatch.setenv("MEDLM_GSM8K_DIR", str(GSM8K_TEST.parent))
    rows = get_task("gsm8k").load(split="test", limit=5)
    assert [r["id"] for r in rows] == [f"gsm8k-test-{i:06d}" for i in range(5)]
    monkeypatch.setenv("MEDLM_GSM8K_DIR", str(GSM8K_TEST.parent / "missing"))
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        get_task("gsm8k").load(split="test")
    monkeypatch.setenv("MEDLM_GSM8K_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no test.jsonl or test.parquet"):
        get_task("gsm8k").load(split="test")
