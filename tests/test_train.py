"""Ray Train + DeepSpeed ZeRO training on two CPU workers with the tiny model.

One local Ray for the module; every training run is a real ``TorchTrainer`` fit (gloo, DeepSpeed
fp32 on CPU) of a few steps on generated toy problems and a small draft run written with the draft
pipeline's own shard helpers. Bad input is refused on the driver before any worker starts.

The three training tests are marked ``slow`` (five worker-group start-ups in all); the refusal tests
alone run with ``pytest -m "not slow" tests/test_train.py``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.config import ConfigError, load_config
from medlm.checkpoint import load_checkpoint, save_checkpoint
from medlm.edits import count_edits, edit_distance, edit_labels
from medlm.losses import mixture_loss
from medlm.modeling import MedlmForEditing
from medlm.packing import collate, mask_example
from medlm.sampling import DecodeConfig, generate
from medlm.tasks.toy import generate_problems, write_jsonl
from medlm.tokenizer import chat_prompt_ids, decode_response, load_tokenizer, response_ids, special_ids
from pipeline.common.io import write_json_atomic
from pipeline.drafts import shards
from pipeline.train.config import TrainConfig
from pipeline.train.data import DataError
from pipeline.train.driver import run_training
from pipeline.train.metrics import read_metrics
from pipeline.train.worker import FAIL_MARKER

GEN_LEN = 48  # toy responses are 31-46 tokens with the default tokenizer
MAX_LEN = 280  # three mask examples of prompt (40-45) + GEN_LEN fill a packed row
MIXED_MAX_LEN = 512  # mask (88-93 tokens) and edit (70-90) examples mix well into rows of 512


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def write_draft_run(run_dir: Path, checkpoint: Path, problems, *, version: str = shards.SCHEMA_VERSION,
                    drop_columns: tuple[str, ...] = (), success: bool = True) -> Path:
    """A draft run in the documented layout (Parquet part + manifest + _SUCCESS), drafts made by
    corrupting the reference (one replace, one delete, one duplicate) and labelled with medlm.edits."""
    tok = load_tokenizer(checkpoint)
    sp = special_ids(tok)
    rows = []
    for i, p in enumerate(problems):
        prompt = chat_prompt_ids(tok, prompt=p.question)
        target = response_ids(tok, p.answers[0])
        rng = random.Random(i)
        draft = list(target)
        j = rng.randrange(len(draft))
        draft[j] = draft[(j + 3) % len(draft)]
        del draft[rng.randrange(len(draft))]
        k = rng.randrange(len(draft))
        draft.insert(k, draft[k])
        tt, it = edit_labels(draft, target, del_id=sp.delete)
        n_rep, n_del, n_ins = count_edits(draft, tt, it, del_id=sp.delete)
        values = dict(id=p.id, source_format="question_answer", source_index=0, record_no=i + 1,
                      prompt_text=p.question, response_text=p.answers[0], prompt_ids=prompt, target_ids=target,
                      draft_ids=draft, token_target=tt, insert_target=it, tokens_per_step=4, mask_steps=12,
                      edit_steps=0, edit_steps_applied=0, draft_seed=i, start_mask_ratio=1.0, reference_index=0,
                      n_references=len(p.answers), edit_distance=edit_distance(draft, target),
                      n_replace=n_rep, n_delete=n_del, n_insert=n_ins)
        rows.append({name: values.get(name) for name in shards.DRAFT_SCHEMA.names})
    schema = shards.schema_with_metadata({"checkpoint_hash": "test"})
    meta = dict(schema.metadata)
    meta[f"{shards.METADATA_PREFIX}schema_version".encode()] = version.encode()
    table = pa.Table.from_pylist(rows, schema=schema.with_metadata(meta))
    table = table.drop_columns(list(drop_columns))
    run_dir.mkdir(parents=True)
    pq.write_table(table, run_dir / "part-00000-0.parquet", compression="zstd")
    files = shards.describe_parts(run_dir)
    manifest = {"schema_version": version, "run_id": run_dir.name, "files": files,
                "rows": {"read": len(rows), "written": len(rows), "rejected": 0, "rejected_by_reason": {}},
                "content_hash": "test"}
    write_json_atomic(run_dir / shards.MANIFEST, manifest)
    if success:
        (run_dir / shards.SUCCESS).write_text("")
    return run_dir


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from jobs.init_model import cli as init_cli

    root = tmp_path_factory.mktemp("train")
    checkpoint = root / "tiny"
    assert init_cli(["--preset", "tiny", "--out", str(checkpoint)]) == 0
    # tie the token head as the small preset does, so every ZeRO stage's resume and export see a shared tensor
    untied, tok = load_checkpoint(checkpoint)
    untied.config.tie_word_embeddings = True
    save_checkpoint(MedlmForEditing(untied.config), tok, checkpoint)
    problems = generate_problems(24, seed=0)
    toy = root / "toy.jsonl"
    write_jsonl(problems, toy)
    drafts = write_draft_run(root / "drafts" / "run-ok", checkpoint, problems[:16])
    return SimpleNamespace(root=root, checkpoint=checkpoint, toy=toy, drafts=drafts, problems=problems)


def tiny_config(ws, name: str, **overrides) -> TrainConfig:
    base = dict(run_name=name, storage_path=str(ws.root / "runs"), init_from=str(ws.checkpoint),
                objective="mask", sources=[str(ws.toy)], max_len=MAX_LEN, gen_len=GEN_LEN, max_steps=2,
                warmup_steps=1, lr=3e-3, min_lr=3e-4, log_every=1, checkpoint_every=2, num_workers=2,
                zero_stage=1, seed=0)
    return TrainConfig(**{**base, **overrides})


def train_records(result: dict) -> list[dict]:
    return [r for r in read_metrics(Path(result["metrics_path"])) if r.get("event") == "train"]


@pytest.fixture(scope="module")
def mask_run(ray_local, workspace):
    """ZeRO-2, mask objective, two micro-steps per step: a dozen steps on 24 toy rows (shared by two tests)."""
    cfg = tiny_config(workspace, "zero2-mask", zero_stage=2, grad_accum=2, max_steps=12, warmup_steps=2,
                      log_every=4, checkpoint_every=12)
    return run_training(cfg)


# ------------------------------------------------------------------ refused before training


def test_config_refusals_name_the_problem(ray_local, workspace, capsys):
    with pytest.raises(ConfigError, match="max_stepz"):
        load_config(None, ["max_stepz=3"], TrainConfig)
    from jobs.train import cli

    assert cli(["bogus_key=1"]) == 2
    assert "bogus_key" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs sources"):
        TrainConfig(objective="mask").check()
    with pytest.raises(ValueError, match="objective='nope'"):
        TrainConfig(objective="nope", sources=["x.jsonl"]).check()
    with pytest.raises(ValueError, match="zero_stage=4"):
        TrainConfig(sources=["x.jsonl"], zero_stage=4).check()
    missing = workspace.root / "no-such-checkpoint"
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint"):
        run_training(tiny_config(workspace, "missing-start", init_from=str(missing)))
    assert cli([f"init_from={missing}", f"sources=[{workspace.toy}]", f"storage_path={workspace.root / 'runs'}",
                "run_name=cli-missing", "preset=tiny"]) == 2
    assert "no-such-checkpoint" in capsys.readouterr().err


def test_bad_data_stops_before_training(ray_local, workspace):
    bad = workspace.root / "all-bad.jsonl"
    bad.write_bytes(b'{"question": "q", "answer": 5}\nnot json\n\xff\xfe\n')
    with pytest.raises(DataError, match="mask dataset is empty: 3 rows read"):
        run_training(tiny_config(workspace, "bad-empty", sources=[str(bad)]))
    rejects = [json.loads(line) for line in (workspace.root / "runs" / "bad-empty" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["invalid_utf8", "malformed_json", "non_string_field"]
    assert all(r["path"] == str(bad) for r in rejects)

    with pytest.raises(DataError, match=r"max_len=90 is shorter than a mask row: toy-train-\d+ \(\d+ tokens\)"):
        run_training(tiny_config(workspace, "bad-maxlen", max_len=90, gen_len=GEN_LEN))

    incomplete = write_draft_run(workspace.root / "drafts" / "run-incomplete", workspace.checkpoint,
                                 workspace.problems[:4], success=False)
    with pytest.raises(DataError, match="_SUCCESS"):
        run_training(tiny_config(workspace, "bad-incomplete", objective="edit", sources=[], draft_runs=[str(incomplete)]))
    old = write_draft_run(workspace.root / "drafts" / "run-v0", workspace.checkpoint, workspace.problems[:4],
                          version="medlm.drafts.v0")
    with pytest.raises(DataError, match="medlm.drafts.v0"):
        run_training(tiny_config(workspace, "bad-version", objective="edit", sources=[], draft_runs=[str(old)]))
    no_labels = write_draft_run(workspace.root / "drafts" / "run-nolabels", workspace.checkpoint,
                                workspace.problems[:4], drop_columns=("token_target",))
    with pytest.raises(DataError, match="lacks column.*token_target"):
        run_training(tiny_config(workspace, "bad-columns", objective="edit", sources=[], draft_runs=[str(no_labels)]))
    # bit rot: 64 bytes flipped in the middle of a part file (the manifest still lists its old sha256)
    rotten = write_draft_run(workspace.root / "drafts" / "run-rotten", workspace.checkpoint, workspace.problems[:4])
    part = rotten / "part-00000-0.parquet"
    blob = bytearray(part.read_bytes())
    middle = len(blob) // 2
    blob[middle:middle + 64] = bytes(b ^ 0xFF for b in blob[middle:middle + 64])
    part.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="part file part-00000-0.parquet does not match the sha256 in the manifest"):
        run_training(tiny_config(workspace, "bad-rotten", objective="edit", sources=[], draft_runs=[str(rotten)]))
    runs = workspace.root / "runs"
    assert not list(runs.glob("bad-*/checkpoint_*")), "a refused run must not have started training"


# ------------------------------------------------------------------ training runs


@pytest.mark.slow  # a Ray Train worker group start-up is 20-60 s on two shared cores
def test_zero2_mask_loss_decreases_on_fixed_set(mask_run, workspace):
    assert mask_run["steps"] == 12
    records = train_records(mask_run)
    assert [r["step"] for r in records] == [4, 8, 12]
    assert all(r["mask_seqs"] == 4 * 2 * 2 * 3 for r in records)  # steps x micro-steps x workers x rows of 3
    assert records[-1]["loss"] < records[0]["loss"]
    assert sum(r["packing_waste"] for r in records) / len(records) < 0.05
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in records)
    assert Path(mask_run["loss_plot"]).stat().st_size > 1000

    # the same fixed examples, scored by the starting weights and by the export
    tok = load_tokenizer(workspace.checkpoint)
    sp = special_ids(tok)
    examples = [mask_example(chat_prompt_ids(tok, prompt=p.question), response_ids(tok, p.answers[0]), sp,
                             random.Random(i), gen_len=GEN_LEN) for i, p in enumerate(workspace.problems[:8])]
    batch = collate(examples)
    losses = {}
    for name, path in (("start", workspace.checkpoint), ("trained", mask_run["export_dir"])):
        model, _ = load_checkpoint(path)
        with torch.no_grad():
            losses[name] = float(mixture_loss(model, batch)["mask_loss"])
    assert losses["trained"] < 0.85 * losses["start"], losses
    trained, _ = load_checkpoint(mask_run["export_dir"])
    assert trained.token_head.weight is trained.embed_tokens.weight  # the export keeps the head tied


@pytest.mark.slow  # a Ray Train worker group start-up is 20-60 s on two shared cores
def test_zero1_mixture_rerun_resumes_and_survives_a_worker_failure(ray_local, workspace):
    cfg = tiny_config(workspace, "zero1-mixture", objective="mixture", draft_runs=[str(workspace.drafts)],
                      mix_ratio=0.5, max_len=MIXED_MAX_LEN, max_steps=2, checkpoint_every=2, max_failures=1,
                      loss_weighting="me-dlm")
    first = run_training(cfg)
    assert first["steps"] == 2 and first["rows"] == {"mask": 24, "edit": 16}

    # same run name, more steps: resumes at step 2; the last worker raises once at step 3, before the
    # step-4 checkpoint, so Ray Train restarts the group from the step-2 checkpoint
    second = run_training(tiny_config(workspace, "zero1-mixture", objective="mixture",
                                      draft_runs=[str(workspace.drafts)], max_len=MIXED_MAX_LEN, max_steps=5,
                                      checkpoint_every=2, max_failures=1, fail_at_step=3, loss_weighting="me-dlm"))
    run_dir = Path(second["run_dir"])
    assert (run_dir / FAIL_MARKER).exists()
    events = read_metrics(run_dir / "metrics.jsonl")
    assert [e["step"] for e in events if e["event"] == "resume"] == [2, 2]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 3, 4, 5]
    assert second["steps"] == 5
    assert second["checkpoint"].endswith("checkpoint_step0000005")
    assert second["metrics"]["mask_loss"] > 0 and second["metrics"]["edit_loss"] > 0
    trained = [e for e in events if e["event"] == "train"]
    assert sum(e["packing_waste"] for e in trained) / len(trained) < 0.05
    assert all(e["mask_seqs"] > 0 for e in trained) and sum(e["edit_seqs"] for e in trained) > 0
    meta = json.loads((Path(second["export_dir"]) / "medlm_meta.json").read_text())
    assert meta["trained_steps"] == 5
    # the heads' history: the start's 0 plus every window the final weights learned from (the first step-3
    # window died with its attempt; the resume restored the count of the step-2 checkpoint)
    kept = trained[:2] + trained[3:]
    assert meta["edit_examples_seen"] == sum(e["edit_seqs"] for e in kept) > 0
    assert meta["mask_examples_seen"] > 0


@pytest.mark.slow  # a Ray Train worker group start-up is 20-60 s on two shared cores
def test_zero0_one_worker_as_the_demo_trains_resumes_and_exports(ray_local, workspace):
    """The demo's setup: one worker with both cores at ZeRO stage 0 (nothing to partition)."""
    one = dict(num_workers=1, cpus_per_worker=2, zero_stage=0, max_steps=2, checkpoint_every=2)
    first = run_training(tiny_config(workspace, "zero0-one-worker", **one))
    assert first["steps"] == 2
    second = run_training(tiny_config(workspace, "zero0-one-worker", **{**one, "max_steps": 4}))
    events = read_metrics(Path(second["run_dir"]) / "metrics.jsonl")
    assert [e["step"] for e in events if e["event"] == "resume"] == [2]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4]
    meta = json.loads((Path(second["export_dir"]) / "medlm_meta.json").read_text())
    assert meta["trained_steps"] == 4 and meta["zero_stage"] == 0 and meta["num_workers"] == 1
    assert meta["edit_examples_seen"] == 0 and meta["mask_examples_seen"] > 0  # mask-only: an untrained insertion head
    model, _ = load_checkpoint(second["export_dir"])
    start, _ = load_checkpoint(workspace.checkpoint)
    assert model.token_head.weight is model.embed_tokens.weight
    assert not torch.equal(model.embed_tokens.weight, start.embed_tokens.weight), "the export must hold trained weights"


@pytest.mark.slow  # a Ray Train worker group start-up is 20-60 s on two shared cores
def test_zero3_online_drafts_from_an_export_then_decode(mask_run, workspace):
    cfg = tiny_config(workspace, "zero3-online", objective="online", init_from=mask_run["export_dir"],
                      zero_stage=3, mix_ratio=0.5, max_steps=2, online_tokens_per_step=[8, 16],
                      online_commit_order="random")
    result = run_training(cfg)
    records = train_records(result)
    assert sum(r["drafts"] for r in records) > 0
    assert any(r.get("edit_loss") is not None for r in records)

    model, tok = load_checkpoint(result["export_dir"])
    start, _ = load_checkpoint(mask_run["export_dir"])
    assert not torch.equal(model.insert_head.weight, start.insert_head.weight), "ZeRO-3 export must hold trained weights"
    sp = special_ids(tok)
    prompt = chat_prompt_ids(tok, prompt=workspace.problems[0].question)
    decode = DecodeConfig(gen_len=GEN_LEN, mask_steps=12, edit_steps=2)
    out = generate(model, [prompt], decode, sp)[0]
    assert out.mask_nfe == 12 and 1 <= out.edit_nfe <= 2
    assert len(out.output_ids) <= GEN_LEN and all(0 <= t < model.config.vocab_size for t in out.output_ids)
    assert generate(model, [prompt], decode, sp)[0].output_ids == out.output_ids  # greedy decoding is repeatable
    assert isinstance(decode_response(tok, out.output_ids), str)


def test_mask_examples_draw_every_valid_phrasing_reproducibly():
    """Regression: mask examples once always used the first reference, so a task with several valid
    answers trained a unimodal base model. Each example now draws one phrasing from (seed, row, epoch)."""
    from medlm.packing import ExampleStream
    from pipeline.train.batches import MaskRows

    sp = SimpleNamespace(mask=0, delete=1, pad=2, im_start=3, im_end=4, eos=5, no_insert=2)
    answers = [[10 + k, 20 + k, 4] for k in range(4)]  # four valid phrasings of one problem
    table = pa.table({"id": ["p0"], "prompt_ids": pa.array([[3, 7, 4]], pa.list_(pa.int32())),
                      "answers_ids": pa.array([answers], pa.list_(pa.list_(pa.int32())))})

    def targets(seed: int) -> list[tuple]:
        stream = ExampleStream("mask", sp, gen_len=4, mix_ratio=0.0, seed=seed, rank=0, mask_rows=MaskRows(table))
        out = []
        for _ in range(40):  # one row: one example per epoch
            ex = next(stream)
            labels = ex["token_labels"][3:]
            out.append(tuple(ex["input_ids"][3 + j] if lab == -100 else lab for j, lab in enumerate(labels)))
        return out

    drawn = targets(seed=0)
    assert {t[:3] for t in drawn} == {tuple(a) for a in answers}  # every phrasing is trained on
    assert targets(seed=0) == drawn  # the same (seed, row, epoch) draws the same phrasing
