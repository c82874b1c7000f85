"""Object storage and node failures on a 3-node Ray cluster, against a moto S3 server on 127.0.0.1.

One ``ray.cluster_utils.Cluster`` (a head with no CPUs, two 1-CPU worker nodes) and one S3 server
are shared by every test here. The draft job reads its sources and checkpoint from S3 and writes
its run there; a second run loses a worker node mid-run and must finish with the same content hash;
a killed run must leave nothing a reader trusts. Training keeps its Ray Train checkpoints and export
on S3 and resumes from them when its worker's node is removed; Serve loads that export from S3.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import pytest
from s3_server import S3_ENV, create_bucket, list_keys, local_files_named, moto_server

from jobs import generate as generate_job
from jobs import init_model, inspect_run
from jobs import train as train_job
from medlm.tasks.toy import generate_problems, write_jsonl
from pipeline.common.storage import StorageError, location
from pipeline.drafts.job import CRASH_HOOK_ENV
from pipeline.drafts.plan import GenerateConfig, GenerateError, plan_run
from pipeline.drafts.shards import RunNotReady, current_run, open_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[1]
GENERATE_CONFIG = str(ROOT / "jobs" / "configs" / "generate.yaml")
BUCKET = "medlm-test"
N_ROWS = 24
DRAFT_ARGS = ["gen_len=48", "tokens_per_step=[8, 16]", "batch_size=2", "rows_per_file=2", "row_group_size=2",
              "num_actors=2"]
RUN_FILES = ("part-", "_manifest.json", "_SUCCESS", "CURRENT", "rejects.parquet")
MB = 1024 * 1024


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 endpoint, with the AWS_* variables a user would export (workers inherit them)."""
    log_dir = tmp_path_factory.mktemp("s3")
    env = pytest.MonkeyPatch()
    with moto_server(log_dir) as endpoint:
        for key, value in S3_ENV.items():
            env.setenv(key, value)
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("MEDLM_CACHE_DIR", str(log_dir / "cache"))  # downloaded checkpoints, and nothing else
        env.setenv("CI", "1")
        create_bucket(endpoint, BUCKET)
        try:
            yield endpoint
        finally:
            env.undo()


@pytest.fixture(scope="module")
def cluster(s3):
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * MB})
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=100 * MB)
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def inputs(s3, tmp_path_factory):
    """A tiny checkpoint and a toy source (with one bad row), uploaded to S3; local copies deleted."""
    work = tmp_path_factory.mktemp("s3-inputs")
    ckpt = work / "ckpt"
    assert init_model.cli(["--preset", "tiny", "--out", str(ckpt)]) == 0
    location(f"s3://{BUCKET}/models/tiny").upload_dir(ckpt, last=("config.json",))
    src = work / "toy.jsonl"
    write_jsonl(generate_problems(N_ROWS, seed=5), src)
    with open(src, "ab") as f:
        f.write(b'{"question": "no closing brace"\n')
    location(f"s3://{BUCKET}/src/toy.jsonl").write_bytes(src.read_bytes())
    return {"checkpoint": f"s3://{BUCKET}/models/tiny", "source": f"s3://{BUCKET}/src/", "local_checkpoint": ckpt}


def _generate(inputs, run_id: str, *extra: str) -> int:
    return generate_job.cli([
        "--config", GENERATE_CONFIG, "--source", inputs["source"], "--checkpoint", inputs["checkpoint"],
        "--output", f"s3://{BUCKET}/drafts", "--run-id", run_id, *DRAFT_ARGS, *extra,
    ])


@pytest.fixture(scope="module")
def clean_run(cluster, inputs):
    started = time.time()
    assert _generate(inputs, "clean") == 0
    return {"run": open_run(f"s3://{BUCKET}/drafts/runs/clean", verify_files=True), "started": started}


def test_draft_run_on_s3_is_published_with_manifest_and_success_last(clean_run, s3):
    run = clean_run["run"]
    assert run.num_rows == N_ROWS and run.manifest["rows"]["rejected"] == 1
    keys = list_keys(s3, BUCKET, "drafts/")
    names = {k.rsplit("/", 1)[-1] for k in keys}
    assert {"_manifest.json", "_SUCCESS", "rejects.parquet", "CURRENT"} <= names
    assert len([n for n in names if n.startswith("part-")]) == len(run.manifest["files"]) >= N_ROWS // 4
    assert not any(".tmp-" in k for k in keys), "object storage is written in place: no staging prefix"
    assert str(current_run(f"s3://{BUCKET}/drafts")) == f"s3://{BUCKET}/drafts/runs/clean"
    assert run.manifest["checkpoint"]["path"] == f"s3://{BUCKET}/models/tiny"
    assert run.manifest["sources"][0]["path"] == f"s3://{BUCKET}/src/toy.jsonl"
    assert run.rejects().column("reason").to_pylist() == ["malformed_json"]


def test_source_tasks_fetch_the_tokenizer_but_not_the_weights(clean_run):
    """Normalising sources needs only the tokenizer: the CPU tasks' cached copy has no weight files."""
    from pipeline.common.storage import cache_dir

    copies = list((cache_dir() / "objects").glob("tiny-*-noweights"))
    assert copies, "the source tasks fetched no tokenizer-only copy"
    for copy in copies:
        names = {p.name for p in copy.iterdir()}
        assert "tokenizer.json" in names and not any(n.endswith(".safetensors") for n in names), names


def test_a_checkpoint_on_s3_is_checked_in_place_without_its_weights(inputs):
    """The driver-side check reads config.json and the safetensors headers from S3; the copy it keeps
    holds the config and tokenizer, never the weights."""
    from safetensors import safe_open

    from pipeline.common.checkpoints import check_checkpoint_at, safetensors_names

    light = check_checkpoint_at(inputs["checkpoint"])
    names = {p.name for p in light.iterdir()}
    assert "config.json" in names and "tokenizer.json" in names
    assert not any(n.endswith(".safetensors") for n in names), names
    local_weights = inputs["local_checkpoint"] / "model.safetensors"
    with safe_open(str(local_weights), framework="pt") as fh:
        expected = set(fh.keys())
    assert safetensors_names(location(f"{inputs['checkpoint']}/model.safetensors")) == expected
    assert "insert_head.weight" in expected


def test_inspect_reads_an_s3_run_and_names_a_bad_uri(clean_run, capsys):
    assert inspect_run.cli([f"s3://{BUCKET}/drafts"]) == 0
    out = capsys.readouterr().out
    assert f"rows: read {N_ROWS + 1} = written {N_ROWS} + rejected 1" in out
    assert clean_run["run"].content_hash in out
    assert inspect_run.cli(["s3://no-such-bucket/drafts"]) == 2
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err


def test_nothing_of_an_s3_run_is_written_to_local_disk(clean_run):
    roots = [Path(tempfile.gettempdir()), Path.cwd()]
    found = [p for p in local_files_named(roots, RUN_FILES, clean_run["started"])
             if "site-packages" not in str(p)]
    assert not found, f"an s3:// run wrote files to local disk: {found[:5]}"


def _remove_a_worker_node_once_parts_appear(cluster, s3, prefix: str, removed: threading.Event) -> None:
    """Remove one worker node (killing whatever runs there) as soon as a new part file is under ``prefix``:
    the parts there now (a killed run's) must be gone first, as a rerun deletes them before drafting."""
    victim = sorted(cluster.worker_nodes, key=lambda n: n.unique_id)[-1]
    old_parts_gone = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        has_parts = any("part-" in k for k in list_keys(s3, BUCKET, prefix))
        old_parts_gone = old_parts_gone or not has_parts
        if old_parts_gone and has_parts:
            cluster.remove_node(victim, allow_graceful=False)
            removed.set()
            return
        time.sleep(0.2)


def test_killed_run_is_refused_and_its_rerun_survives_a_lost_node_with_the_clean_hash(clean_run, cluster, inputs,
                                                                                       monkeypatch, s3):
    """A run killed after its first part file leaves nothing a reader trusts and CURRENT where it was;
    the rerun with the same id (which deletes the old ``_SUCCESS``-less parts) loses a worker node while
    drafting, and still finishes with exactly the rows of the clean run."""
    monkeypatch.setenv(CRASH_HOOK_ENV, "1")
    with pytest.raises(RuntimeError, match="test hook"):
        _generate(inputs, "killed")
    keys = list_keys(s3, BUCKET, "drafts/runs/killed/")
    assert any(k.rsplit("/", 1)[-1].startswith("part-") for k in keys)
    assert not any(k.endswith("_SUCCESS") for k in keys)
    with pytest.raises(RunNotReady, match="no _SUCCESS"):
        open_run(f"s3://{BUCKET}/drafts/runs/killed")
    assert str(current_run(f"s3://{BUCKET}/drafts")).endswith("/runs/clean"), "CURRENT must not move"
    monkeypatch.delenv(CRASH_HOOK_ENV)

    removed = threading.Event()
    watch = threading.Thread(target=_remove_a_worker_node_once_parts_appear,
                             args=(cluster, s3, "drafts/runs/killed/", removed), daemon=True)
    watch.start()
    try:
        assert _generate(inputs, "killed") == 0
    finally:
        watch.join(timeout=310)
    assert removed.is_set(), "the node was not removed while the rerun was drafting"
    rerun = open_run(f"s3://{BUCKET}/drafts/runs/killed", verify_files=True)
    assert rerun.content_hash == clean_run["run"].content_hash
    assert str(current_run(f"s3://{BUCKET}/drafts")).endswith("/runs/killed")
    cluster.add_node(num_cpus=1, object_store_memory=100 * MB)  # back to two workers for the next tests
    cluster.wait_for_nodes()


@pytest.mark.parametrize("uri, message", [
    ("gs://bucket/x", "scheme 'gs' is not supported"),
    ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
    ("s3:///x", "no bucket name"),
    ("s3://no-such-bucket/drafts", "bucket 'no-such-bucket' does not exist"),
])
def test_bad_output_uris_fail_before_any_work(s3, inputs, uri, message):
    cfg = GenerateConfig(source=inputs["source"], checkpoint=inputs["checkpoint"], output=uri)
    with pytest.raises(GenerateError, match=message):
        plan_run(cfg)
    with pytest.raises(StorageError, match=message):
        location(uri)


def test_missing_s3_source_and_checkpoint_fail_before_any_work(s3, inputs):
    with pytest.raises(GenerateError, match="does not exist"):
        plan_run(GenerateConfig(source=f"s3://{BUCKET}/nothing-here/", checkpoint=inputs["checkpoint"],
                                output=f"s3://{BUCKET}/out"))
    with pytest.raises(GenerateError, match="checkpoint"):
        plan_run(GenerateConfig(source=inputs["source"], checkpoint=f"s3://{BUCKET}/no-model",
                                output=f"s3://{BUCKET}/out"))


# ------------------------------------------------------------------ training on object storage

TRAIN_STEPS = 100
TRAIN_FILES = ("metrics.jsonl", "train_config.json", "rejects.jsonl", "loss.png", "toy-train-", "model.safetensors")


def _node_running_the_trainer(cluster):
    """The worker node whose CPU is taken (the head has none; the training worker holds one of two)."""
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()
    busy = [n for n in cluster.worker_nodes if free.get(n.node_id, {}).get("CPU", 0) < 1]
    return busy[0] if len(busy) == 1 else None


@pytest.fixture(scope="module")
def trained_on_s3(cluster, inputs, s3):
    """A mask run whose storage, start checkpoint, sources and export are all on S3; the node running
    its only worker is removed once Ray Train has committed the first checkpoint to S3 (its checkpoint
    manager's snapshot is there), and a fresh node joins as an autoscaler would bring one, so the run
    must resume from the S3 checkpoint on another node."""
    from pipeline.train.config import TrainConfig
    from pipeline.train.driver import run_training

    cfg = TrainConfig(
        run_name="node-lost", storage_path=f"s3://{BUCKET}/train", init_from=inputs["checkpoint"],
        objective="mask", sources=[inputs["source"]], max_len=280, gen_len=48, max_steps=TRAIN_STEPS,
        warmup_steps=1, lr=3e-3, min_lr=3e-4, log_every=10, checkpoint_every=20, num_workers=1,
        cpus_per_worker=1, zero_stage=2, max_failures=1, seed=0,
        deepspeed_overrides={"zero_optimization": {"reduce_bucket_size": 5_000_000, "allgather_bucket_size": 5_000_000}},
    )
    removed: dict = {}

    def remove_after_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not removed:
            if list_keys(s3, BUCKET, "train/node-lost/checkpoint_manager_snapshot.json"):
                victim = _node_running_the_trainer(cluster)
                if victim is not None:
                    cluster.remove_node(victim, allow_graceful=False)
                    removed["node"] = victim.node_id
                    cluster.add_node(num_cpus=1, object_store_memory=100 * MB)
                    return
            time.sleep(0.2)

    started = time.time()
    thread = threading.Thread(target=remove_after_first_checkpoint, daemon=True)
    thread.start()
    try:
        result = run_training(cfg)
    finally:
        thread.join(timeout=310)
    cluster.wait_for_nodes()
    return {"result": result, "removed": removed, "started": started}


def test_training_resumes_from_its_s3_checkpoint_when_its_node_is_removed(trained_on_s3, s3):
    from pipeline.train.metrics import read_metrics

    result = trained_on_s3["result"]
    assert trained_on_s3["removed"], "the worker's node was not removed while training"
    assert result["run_dir"] == f"s3://{BUCKET}/train/node-lost"
    assert result["steps"] == TRAIN_STEPS
    events = read_metrics(result["metrics_path"])
    resumes = [e for e in events if e["event"] == "resume"]
    assert len(resumes) == 1 and 20 <= resumes[0]["step"] < TRAIN_STEPS, [(e["event"], e["step"]) for e in events]
    assert resumes[0]["checkpoint"].startswith(f"{BUCKET}/train/node-lost/checkpoint_"), resumes[0]
    after = events[events.index(resumes[0]) + 1:]
    steps_after = [e["step"] for e in after if e["event"] == "train"]
    assert steps_after and min(steps_after) > resumes[0]["step"], "the restarted worker began again from step 0"
    assert steps_after[-1] == TRAIN_STEPS
    assert result["rows"] == {"mask": N_ROWS} and result["rejected"] == {"malformed_json": 1}


def test_training_export_on_s3_is_a_checkpoint_serve_and_drafting_can_load(trained_on_s3, s3):
    from medlm.checkpoint import check_checkpoint_dir, load_checkpoint
    from pipeline.common.storage import local_copy

    export = trained_on_s3["result"]["export_dir"]
    assert export == f"s3://{BUCKET}/train/node-lost/export"
    keys = list_keys(s3, BUCKET, "train/node-lost/export/")
    assert {"config.json", "medlm_meta.json"} <= {k.rsplit("/", 1)[-1] for k in keys}
    local = check_checkpoint_dir(local_copy(export))
    model, _ = load_checkpoint(local)
    assert json.loads((local / "medlm_meta.json").read_text())["trained_steps"] == TRAIN_STEPS
    assert sum(p.numel() for p in model.parameters()) > 0


def test_regeneration_plans_from_an_s3_run_with_the_newer_s3_checkpoint(clean_run, trained_on_s3):
    """``--from-run`` on object storage: the old run's sources and recipe, the trained export as the
    newer checkpoint, the same output prefix, provenance back to the old run (planned, not drafted:
    drafting itself is the clean run above)."""
    from pipeline.drafts.plan import config_from_run

    old = clean_run["run"]
    plan = plan_run(config_from_run(str(old.run_dir), {"checkpoint": trained_on_s3["result"]["export_dir"]}))
    assert plan.layout.output.uri == f"s3://{BUCKET}/drafts"
    assert [s.path for s in plan.sources] == [f"s3://{BUCKET}/src/toy.jsonl"]
    assert plan.checkpoint_uri == f"s3://{BUCKET}/train/node-lost/export"
    assert plan.checkpoint_hash != old.manifest["checkpoint"]["hash"] and plan.run_id != old.run_id
    assert plan.derived_from == {"run_id": "clean", "checkpoint_hash": old.manifest["checkpoint"]["hash"],
                                 "content_hash": old.content_hash}


def test_nothing_of_an_s3_training_run_is_written_to_local_disk(trained_on_s3):
    """Only the start checkpoint's cached copies (MEDLM_CACHE_DIR, under pytest's folders) may be local."""
    roots = [Path(tempfile.gettempdir()), Path.cwd()]
    found = [p for p in local_files_named(roots, TRAIN_FILES, trained_on_s3["started"])
             if "site-packages" not in str(p) and "pytest-of-" not in str(p)]
    assert not found, f"an s3:// training run wrote files to local disk: {found[:5]}"


@pytest.mark.parametrize("key, uri, message", [
    ("storage_path", "gs://bucket/train", "scheme 'gs' is not supported"),
    ("storage_path", "s3://no-such-bucket/train", "bucket 'no-such-bucket' does not exist"),
    ("export_dir", "s3://Bad_Bucket/export", "not a valid S3 bucket name"),
    ("init_from", f"s3://{BUCKET}/no-model", f"s3://{BUCKET}/no-model does not exist"),
])
def test_bad_training_uris_fail_before_any_work(s3, inputs, capsys, key, uri, message):
    overrides = {"init_from": inputs["checkpoint"], "storage_path": f"s3://{BUCKET}/refused", key: uri}
    argv = [f"{k}={v}" for k, v in overrides.items()] + [f"sources=[{inputs['source']}]", "toy_problems=0"]
    assert train_job.cli(argv) == 2
    err = capsys.readouterr().err
    assert "refused before training" in err and message in err, err
    assert not list_keys(s3, BUCKET, "refused/"), "a refused run wrote to the bucket"
