"""The Ray Data draft pipeline end to end on a local 2-CPU Ray and a tiny random checkpoint.

One small source directory (a JSONL file with good and bad rows, invalid UTF-8 written as raw
bytes, and a Parquet file) goes through four pipeline executions shared by all tests: a 2-actor run,
a 1-actor run killed on purpose after its first part file and then finished by a rerun (its content
hash must equal the 2-actor run's), and a ``--from-run`` regeneration with another checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trained_heads import train_edit_head

from jobs import generate as generate_job
from jobs import init_model, inspect_run
from medlm.checkpoint import checkpoint_hash
from medlm.edits import apply_edits, count_edits, edit_distance, edit_labels
from medlm.tasks.toy import generate_problems, write_jsonl
from medlm.tokenizer import load_tokenizer, response_ids, special_ids, tokenizer_hash
from pipeline.common.io import file_sha256
from pipeline.drafts.job import CRASH_HOOK_ENV
from pipeline.drafts.recipe import DraftRecipe, row_recipe
from pipeline.drafts.shards import (
    DRAFT_SCHEMA,
    SCHEMA_VERSION,
    RunNotReady,
    content_hash,
    current_run,
    open_run,
    read_run,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "jobs" / "configs" / "generate.yaml")
GEN_LEN = 48
N_TOY = 8
RECIPE_OVERRIDES = ["gen_len=48", "tokens_per_step=[8, 16]", "intermediate_prob=0.5", "max_intermediate_edit_steps=2"]
EXECUTION_OVERRIDES = ["batch_size=3", "rows_per_file=4", "row_group_size=2"]
EXPECTED_REJECTS = {
    "malformed_json": 1,
    "invalid_utf8": 1,
    "empty_response": 1,
    "non_string_field": 1,
    "missing_field": 2,
    "too_long": 1,
    "duplicate_id": 1,
}
EXPECTED_WRITTEN = N_TOY + 2 + 2  # toy rows, history + text rows (JSONL), two good Parquet rows


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def checkpoints(work) -> tuple[Path, Path]:
    first, second = work / "ckpt", work / "ckpt-newer"
    assert init_model.cli(["--preset", "tiny", "--out", str(first)]) == 0
    assert init_model.cli(["--preset", "tiny", "--out", str(second), "--tokenizer", str(first), "--seed", "1"]) == 0
    # the recipe asks for intermediate edits, which only a checkpoint whose insertion head saw edit labels may make
    for ckpt in (first, second):
        assert train_edit_head(ckpt) > 0
    return first, second


@pytest.fixture(scope="module")
def problems():
    return generate_problems(N_TOY, seed=3)


@pytest.fixture(scope="module")
def source_dir(work, problems) -> Path:
    src = work / "src"
    src.mkdir()
    jsonl = src / "a.jsonl"
    write_jsonl(problems, jsonl)
    with open(jsonl, "ab") as f:
        f.write(b'{"question": "no closing brace"\n')
        f.write(b'{"question": "bad \xff\xfe bytes", "answer": "x"}\n')
        f.write(b"\n")  # blank lines are not rows
        for row in (
            {"question": "q", "answer": "   "},
            {"question": 5, "answer": "a"},
            {"prompt": "only a prompt"},
            {"prompt": "long", "response": "word " * 200},
            {"history": [{"role": "user", "content": "Hello"}], "response": "Hi there."},
            {"text": "def f(x):\n    return x + 1\n"},
        ):
            f.write(json.dumps(row).encode() + b"\n")
    rows = [
        {"id": "pq-1", "prompt": "Say yes.", "response": "yes", "history": None},
        {"id": problems[1].id, "prompt": "a duplicate id", "response": "dup", "history": None},
        {"id": "pq-3", "prompt": "missing response", "response": None, "history": None},
        {"id": "pq-4", "prompt": None, "response": "Fine.",
         "history": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How are you?"}]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), src / "b.parquet")
    return src


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    env = pytest.MonkeyPatch()
    env.setenv("CI", "1")  # Ray Data progress bars off in test logs
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        env.undo()


def _generate(*args: str) -> int:
    return generate_job.cli([*args])


@pytest.fixture(scope="module")
def out_dir(work) -> Path:
    return work / "out"


@pytest.fixture(scope="module")
def two_actor_run(ray_cluster, checkpoints, source_dir, out_dir) -> Path:
    rc = _generate(
        "--config", CONFIG, "--source", str(source_dir), "--checkpoint", str(checkpoints[0]),
        "--output", str(out_dir), "--run-id", "two-actors",
        *RECIPE_OVERRIDES, *EXECUTION_OVERRIDES, "num_actors=2",
    )
    assert rc == 0
    return out_dir / "runs" / "two-actors"


def test_schema_and_provenance_metadata(two_actor_run, checkpoints):
    files = sorted(two_actor_run.glob("part-*.parquet"))
    assert len(files) >= 2, "rows_per_file=4 should split 12 rows over several files"
    tok = load_tokenizer(checkpoints[0])
    for f in files:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        assert schema.remove_metadata().equals(DRAFT_SCHEMA)
        for name in ("prompt_ids", "target_ids", "draft_ids", "token_target", "insert_target"):
            assert schema.field(name).type == pa.list_(pa.int32())
        meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
        assert meta["medlm.schema_version"] == SCHEMA_VERSION
        assert meta["medlm.checkpoint_hash"] == checkpoint_hash(checkpoints[0])
        assert meta["medlm.tokenizer_hash"] == tokenizer_hash(tok)
        assert meta["medlm.seed"] == "0"
        assert json.loads(meta["medlm.config"])["gen_len"] == GEN_LEN
        assert json.loads(meta["medlm.recipe"])["tokens_per_step"] == [8, 16]
        assert meta["medlm.git_revision"]
        assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    drafts = pl.read_parquet(files)
    assert drafts.height == EXPECTED_WRITTEN
    assert drafts.get_column("id").n_unique() == drafts.height
    assert set(drafts.get_column("source_format")) == {"question_answer", "history", "text", "prompt_response"}


def test_manifest_reconciles_and_rejects_have_reasons(two_actor_run, source_dir, out_dir):
    run = open_run(two_actor_run, verify_files=True)
    rows = run.manifest["rows"]
    assert rows["read"] == rows["written"] + rows["rejected"] == EXPECTED_WRITTEN + sum(EXPECTED_REJECTS.values())
    assert rows["written"] == EXPECTED_WRITTEN
    assert rows["rejected_by_reason"] == EXPECTED_REJECTS
    assert sum(f["rows"] for f in run.manifest["files"]) == rows["written"]
    for entry, f in zip(run.manifest["files"], run.files):
        assert file_sha256(f) == entry["sha256"]
    assert content_hash(run.files) == run.content_hash
    assert [Path(s["path"]).name for s in run.manifest["sources"]] == ["a.jsonl", "b.parquet"]
    assert Path(current_run(out_dir)) == two_actor_run

    rejects = pl.from_arrow(run.rejects())
    assert dict(rejects.group_by("reason").len().iter_rows()) == EXPECTED_REJECTS
    utf8 = rejects.filter(pl.col("reason") == "invalid_utf8").row(0, named=True)
    assert utf8["record_no"] == 10 and utf8["source_path"].endswith("a.jsonl") and "\\xff" in utf8["raw"]
    dup = rejects.filter(pl.col("reason") == "duplicate_id").row(0, named=True)
    assert dup["source_index"] == 1 and dup["record_no"] == 2 and "record 2" in dup["detail"]
    kept = read_run(two_actor_run, columns=["id", "source_index", "record_no"]).to_pylist()
    assert {"id": dup["id"], "source_index": 0, "record_no": 2} in kept, "the first copy of a duplicate id is kept"
    assert rejects.filter(pl.col("reason") == "too_long").row(0, named=True)["detail"].endswith(f"maximum {GEN_LEN}")


def test_labels_in_shards_rederive_from_medlm_edits(two_actor_run, checkpoints, problems):
    tok = load_tokenizer(checkpoints[0])
    sp = special_ids(tok)
    recipe = DraftRecipe(gen_len=GEN_LEN, tokens_per_step=(8, 16), intermediate_prob=0.5, max_intermediate_edit_steps=2)
    by_id = {p.id: p for p in problems}
    rows = read_run(two_actor_run).to_pylist()
    assert any(r["edit_steps"] > 0 for r in rows) and any(r["edit_steps"] == 0 for r in rows)
    for r in rows:
        token_target, insert_target = edit_labels(r["draft_ids"], r["target_ids"], del_id=sp.delete)
        assert (r["token_target"], r["insert_target"]) == (token_target, insert_target)
        assert (r["n_replace"], r["n_delete"], r["n_insert"]) == count_edits(
            r["draft_ids"], token_target, insert_target, del_id=sp.delete)
        assert r["edit_distance"] == edit_distance(r["draft_ids"], r["target_ids"])
        if r["edit_distance"]:
            stepped = apply_edits(r["draft_ids"], token_target, insert_target, del_id=sp.delete)
            assert edit_distance(stepped, r["target_ids"]) < r["edit_distance"]
        assert r["target_ids"] == response_ids(tok, r["response_text"])
        assert len(r["draft_ids"]) <= GEN_LEN
        expected = row_recipe(recipe, r["id"])
        assert (r["tokens_per_step"], r["mask_steps"], r["edit_steps"], r["draft_seed"]) == (
            expected.tokens_per_step, expected.mask_steps, expected.edit_steps, expected.draft_seed)
        assert r["mask_steps"] == math.ceil(GEN_LEN / r["tokens_per_step"])
        if r["id"] in by_id:  # toy rows: the label target is the closest of all valid solutions
            references = [response_ids(tok, a) for a in by_id[r["id"]].answers]
            assert r["n_references"] == len(references) > 1
            assert r["edit_distance"] == min(edit_distance(r["draft_ids"], ref) for ref in references)
            assert r["response_text"] == by_id[r["id"]].answers[r["reference_index"]]


def test_interrupted_run_is_invisible_then_finished_with_one_actor_and_same_hash(
    two_actor_run, checkpoints, source_dir, out_dir, monkeypatch
):
    args = ["--config", CONFIG, "--source", str(source_dir), "--checkpoint", str(checkpoints[0]),
            "--output", str(out_dir), "--run-id", "one-actor", *RECIPE_OVERRIDES, *EXECUTION_OVERRIDES,
            "num_actors=1"]
    monkeypatch.setenv(CRASH_HOOK_ENV, "1")
    with pytest.raises(RuntimeError, match="test hook"):
        _generate(*args)
    runs = out_dir / "runs"
    assert not (runs / "one-actor").exists()
    [staging] = list(runs.glob("one-actor.tmp-*"))
    assert list(staging.glob("part-*.parquet")) and not (staging / "_SUCCESS").exists()
    with pytest.raises(RunNotReady, match="no _SUCCESS"):
        open_run(staging)
    assert Path(current_run(out_dir)) == two_actor_run, "CURRENT must not move to an interrupted run"

    monkeypatch.delenv(CRASH_HOOK_ENV)
    assert _generate(*args) == 0
    assert not list(runs.glob("one-actor.tmp-*")), "the rerun clears the killed run's staging"
    finished = open_run(runs / "one-actor", verify_files=True)
    assert finished.content_hash == open_run(two_actor_run).content_hash, "1 and 2 actors must give the same rows"
    assert Path(current_run(out_dir)) == runs / "one-actor"


def test_complete_run_is_reused_unless_forced(two_actor_run, checkpoints, source_dir, out_dir, capsys):
    before = (two_actor_run / "_manifest.json").read_text()
    rc = _generate("--config", CONFIG, "--source", str(source_dir), "--checkpoint", str(checkpoints[0]),
                   "--output", str(out_dir), "--run-id", "two-actors", *RECIPE_OVERRIDES, "num_actors=1")
    assert rc == 0
    assert "already complete; reusing it" in capsys.readouterr().out
    assert (two_actor_run / "_manifest.json").read_text() == before
    assert Path(current_run(out_dir)) == two_actor_run


def test_from_run_regenerates_same_rows_and_recipe_with_newer_checkpoint(two_actor_run, checkpoints, out_dir):
    assert _generate("--from-run", str(two_actor_run), "--checkpoint", str(checkpoints[1]), "num_actors=1") == 0
    new_dir = Path(current_run(out_dir))
    assert new_dir != two_actor_run and new_dir.parent == two_actor_run.parent
    old, new = open_run(two_actor_run), open_run(new_dir)
    assert new.manifest["recipe"] == old.manifest["recipe"]
    assert new.manifest["sources"] == old.manifest["sources"]
    assert new.manifest["checkpoint"]["hash"] == checkpoint_hash(checkpoints[1]) != old.manifest["checkpoint"]["hash"]
    assert new.manifest["derived_from"]["run_id"] == "two-actors"
    assert new.manifest["rows"] == old.manifest["rows"]
    old_rows = {r["id"]: r for r in old.to_arrow(["id", "tokens_per_step", "edit_steps", "draft_ids"]).to_pylist()}
    new_rows = {r["id"]: r for r in new.to_arrow(["id", "tokens_per_step", "edit_steps", "draft_ids"]).to_pylist()}
    assert old_rows.keys() == new_rows.keys()
    assert all(old_rows[i]["tokens_per_step"] == new_rows[i]["tokens_per_step"] for i in old_rows)
    assert any(old_rows[i]["draft_ids"] != new_rows[i]["draft_ids"] for i in old_rows), "a new model drafts anew"
    assert new.content_hash != old.content_hash


def test_inspect_prints_polars_summary(two_actor_run, out_dir, capsys):
    assert inspect_run.cli([str(out_dir)]) == 0, "an output directory means its CURRENT run"
    assert capsys.readouterr().out.startswith(f"run {current_run(out_dir).name} ")
    assert inspect_run.cli([str(two_actor_run)]) == 0
    out = capsys.readouterr().out
    assert f"written {EXPECTED_WRITTEN} + rejected {sum(EXPECTED_REJECTS.values())}" in out
    for title in ("lengths (tokens)", "edit distance draft -> reference", "one-step label mix", "recipe mix",
                  "rejects by reason"):
        assert title in out
    assert "| duplicate_id" in out and "| missing_field    | 2" in out


def _fail(capsys, *args: str) -> str:
    assert _generate(*args) == 2
    return capsys.readouterr().err


def test_fail_fast_before_any_work(work, checkpoints, source_dir, capsys):
    out = work / "never"
    good = ["--source", str(source_dir), "--checkpoint", str(checkpoints[0]), "--output", str(out)]
    err = _fail(capsys, "--source", str(source_dir), "--checkpoint", str(work / "nope"), "--output", str(out))
    assert "checkpoint" in err and str(work / "nope") in err
    err = _fail(capsys, "--source", str(work / "missing.jsonl"), "--checkpoint", str(checkpoints[0]), "--output", str(out))
    assert "missing.jsonl does not exist" in err
    (work / "notes.txt").write_text("x")
    err = _fail(capsys, "--source", str(work / "notes.txt"), "--checkpoint", str(checkpoints[0]), "--output", str(out))
    assert "'.txt'" in err and ".jsonl" in err
    err = _fail(capsys, "--source", str(source_dir), "--checkpoint", str(checkpoints[0]),
                "--output", str(work / "notes.txt" / "out"))
    assert "is not writable" in err
    assert "unknown config key 'num_actor'" in _fail(capsys, *good, "num_actor=2")
    assert "tokens_per_step values must be integers >= 1, got 0" in _fail(capsys, *good, "tokens_per_step=[0, 4]")
    assert "max_response_len" in _fail(capsys, *good, "gen_len=32", "max_response_len=64")
    assert "draft_start must be one of masked, partial, got 'half'" in _fail(capsys, *good, "draft_start=half")
    assert "commit_order must be one of" in _fail(capsys, *good, "commit_order=lifo")
    assert "cfg_scale must be a finite number >= 0, got -1" in _fail(capsys, *good, "cfg_scale=-1")
    assert "stop_ids: token id 99999 is outside the vocabulary [0, 1024)" in _fail(capsys, *good, "stop_ids=[99999]")
    # a fresh `medlm init` checkpoint's insertion head never saw an edit label: no intermediate edits from it
    untrained = work / "ckpt-untrained"
    assert init_model.cli(["--preset", "tiny", "--out", str(untrained), "--tokenizer", str(checkpoints[0])]) == 0
    err = _fail(capsys, "--source", str(source_dir), "--checkpoint", str(untrained), "--output", str(out),
                "intermediate_prob=0.25")
    assert "intermediate_prob=0.25 asks for edit steps" in err and "edit_examples_seen=0" in err
    assert not out.exists() or not any((out / "runs").iterdir()), "nothing may be written before the checks pass"


def test_open_run_refuses_other_schema_versions(two_actor_run, tmp_path, capsys):
    fake = tmp_path / "old-run"
    fake.mkdir()
    manifest = json.loads((two_actor_run / "_manifest.json").read_text())
    (fake / "_manifest.json").write_text(json.dumps({**manifest, "schema_version": "medlm.drafts.v0"}))
    (fake / "_SUCCESS").write_text("")
    with pytest.raises(RunNotReady, match="medlm.drafts.v0"):
        open_run(fake)
    assert inspect_run.cli([str(fake)]) == 2
    assert "schema version 'medlm.drafts.v0'" in capsys.readouterr().err
