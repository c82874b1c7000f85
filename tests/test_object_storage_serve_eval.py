"""Evaluation and Serve with ``s3://`` checkpoints and outputs, on a 3-node Ray cluster against a moto
S3 server on 127.0.0.1.

The cluster is a head with no CPUs and two 1-CPU worker nodes, each with its own checkpoint cache
(``MEDLM_CACHE_DIR``), so a copy in a node's cache shows that the replica or actor there fetched the
checkpoint from S3 itself rather than using a path of the driver's. Bad URIs are tried first, before
the cluster exists: the jobs must refuse them (exit 2, naming the problem) without starting Ray.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve
from s3_server import S3_ENV, create_bucket, list_keys, local_files_named, moto_server
from trained_heads import train_edit_head

from jobs import evaluate as eval_job
from jobs import init_model
from jobs import serve as serve_job
from medlm.checkpoint import checkpoint_hash
from medlm.evaluation import Budget
from pipeline.common.storage import location
from pipeline.eval import run_eval
from pipeline.serve import run_local
from pipeline.serve.app import free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

BUCKET = "medlm-serve-eval"
CHECKPOINT = f"s3://{BUCKET}/models/tiny"
MB = 1024 * 1024
BUDGETS = [Budget(4, 0, "s3eval_mask4", 16), Budget(2, 2, "s3eval_mask2_edit2", 16)]  # labels unique to this file
EVAL_FILES = ("samples_s3eval_", "table.md", "accuracy_vs_nfe.png", "summary.json")
BAD_URIS = [
    ("gs://bucket/x", "scheme 'gs' is not supported"),
    ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
    ("s3://no-such-bucket/x", "bucket 'no-such-bucket' does not exist"),
]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 endpoint and the AWS_* variables a user would export; the driver's own cache dir."""
    root = tmp_path_factory.mktemp("s3")
    env = pytest.MonkeyPatch()
    with moto_server(root) as endpoint:
        for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "CI": "1",
                           "MEDLM_CACHE_DIR": str(root / "cache-driver")}.items():
            env.setenv(key, value)
        create_bucket(endpoint, BUCKET)
        try:
            yield {"endpoint": endpoint, "root": root}
        finally:
            env.undo()


@pytest.fixture(scope="module")
def checkpoint(s3):
    """`medlm init --preset tiny`, uploaded to S3 (config.json last); returns its local hash."""
    local = s3["root"] / "ckpt"
    assert init_model.cli(["--preset", "tiny", "--out", str(local)]) == 0
    train_edit_head(local)  # the edit budget is refused from an insertion head that never saw an edit label
    location(CHECKPOINT).upload_dir(local, last=("config.json",))
    return checkpoint_hash(local)


@pytest.fixture(scope="module")
def cluster(s3, checkpoint):
    """Head with no CPUs + two 1-CPU workers, each caching downloads in its own directory."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * MB})
    caches = [s3["root"] / f"cache-node{i}" for i in range(2)]
    for cache in caches:
        c.add_node(num_cpus=1, object_store_memory=100 * MB, env_vars={"MEDLM_CACHE_DIR": str(cache)})
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    try:
        yield {"cluster": c, "caches": caches}
    finally:
        ray.shutdown()
        c.shutdown()


def fetched_into(cache: Path) -> bool:
    return any((cache / "objects").glob("tiny-*/config.json"))


# ------------------------------------------------------------------ refused before Ray starts


@pytest.mark.parametrize("uri, message", BAD_URIS + [(f"s3://{BUCKET}/no-model", "no-model does not exist")])
def test_eval_and_serve_refuse_a_bad_checkpoint_uri_before_ray_starts(s3, uri, message, capsys):
    assert not ray.is_initialized(), "these tests run before the cluster fixture"
    assert eval_job.cli([f"checkpoint={uri}", f"out_dir=s3://{BUCKET}/eval/refused", "n_samples=2"]) == 2
    err = capsys.readouterr().err
    assert f"medlm eval: checkpoint: {uri}" in err and message in err
    assert serve_job.cli(["--checkpoint", uri, "--port", "0"]) == 2
    out = capsys.readouterr().out
    assert "[medlm serve] error:" in out and message in out
    assert not ray.is_initialized()
    assert not list_keys(s3["endpoint"], BUCKET, "eval/refused")


@pytest.mark.parametrize("uri, message", BAD_URIS)
def test_eval_refuses_a_bad_out_dir_uri_before_ray_starts(s3, checkpoint, uri, message, capsys):
    assert not ray.is_initialized(), "these tests run before the cluster fixture"
    assert eval_job.cli([f"checkpoint={CHECKPOINT}", f"out_dir={uri}", "n_samples=2"]) == 2
    err = capsys.readouterr().err
    assert f"medlm eval: out_dir: {uri}" in err and message in err
    assert not ray.is_initialized()


# ------------------------------------------------------------------ Serve on the cluster


def driver_weight_copies(s3) -> set[Path]:
    return set((s3["root"] / "cache-driver" / "objects").glob("tiny-*/*.safetensors"))


def test_serve_replica_loads_its_checkpoint_from_s3_and_answers_http(s3, cluster, checkpoint):
    caches = cluster["caches"]
    shutil.rmtree(s3["root"] / "cache-driver", ignore_errors=True)  # eval's refusal tests above cached the weights
    assert not any(fetched_into(c) for c in caches)
    try:
        url = run_local({"checkpoint": CHECKPOINT, "num_cpus": 0.5}, port=free_port())
        with httpx.Client(base_url=url, timeout=120) as client:
            r = client.post("/v1/refine", json={"prompt": "What is 3 + 4?", "max_new_tokens": 8,
                                                "mask_steps": 2, "edit_steps": 1})
            assert r.status_code == 200, r.text
            assert isinstance(r.json()["text"], str)
            health = client.get("/health").json()
        assert health["checkpoint_hash"] == checkpoint
    finally:
        serve.shutdown()
    assert sum(fetched_into(c) for c in caches) == 1, "the one replica fetched the checkpoint on its own node"
    assert not driver_weight_copies(s3), "the driver checks an s3:// checkpoint in place, fetching no weights"


# ------------------------------------------------------------------ evaluation on the cluster


@pytest.fixture(scope="module")
def eval_run(s3, cluster, checkpoint):
    """One run_eval, s3:// in and out, two actors (one per worker node), into a prefix that holds an
    earlier run's summary and a samples file of a budget this run does not evaluate."""
    out = f"s3://{BUCKET}/eval/run"
    location(f"{out}/summary.json").write_text("{}")
    location(f"{out}/samples_s3eval_old.jsonl").write_text("{}\n")
    started = time.time()
    summary = run_eval(CHECKPOINT, "toy", BUDGETS, n_samples=2, batch_size=2, num_actors=2, out_dir=out, seed=1)
    return {"summary": summary, "out": out, "started": started}


def test_eval_publishes_every_file_on_s3_with_the_uri_as_provenance(eval_run, s3, checkpoint):
    out = eval_run["out"]
    keys = [k for k in list_keys(s3["endpoint"], BUCKET, "eval/run/") if not k.endswith("/")]  # pyarrow's
    # directory marker, left when a prefix's last object is deleted, is not a file
    assert sorted(k.rsplit("/", 1)[-1] for k in keys) == sorted(
        ["accuracy_vs_nfe.png", "samples_s3eval_mask2_edit2.jsonl", "samples_s3eval_mask4.jsonl", "summary.json",
         "table.md"]), "the stale samples file is gone and no probe or temporary object is left"
    summary = location(f"{out}/summary.json").read_json()
    assert summary["checkpoint"] == CHECKPOINT and summary["checkpoint_hash"] == checkpoint
    assert [r["label"] for r in summary["rows"]] == [b.label for b in BUDGETS]
    assert eval_run["summary"]["out_dir"] == out
    for b in BUDGETS:
        records = [json.loads(line) for line in location(f"{out}/samples_{b.label}.jsonl").read_text().splitlines()]
        assert [r["budget"] for r in records] == [b.label] * 2 and all(r["error"] is None for r in records)
    assert location(f"{out}/accuracy_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert location(f"{out}/table.md").read_text() == eval_run["summary"]["table_markdown"]


def test_eval_actors_fetch_the_checkpoint_on_their_own_nodes(eval_run, cluster):
    assert all(fetched_into(c) for c in cluster["caches"]), "each worker node holds its own copy"


def test_eval_on_s3_writes_nothing_to_local_disk(eval_run):
    roots = [Path(tempfile.gettempdir()), Path.cwd()]
    found = [p for p in local_files_named(roots, EVAL_FILES, eval_run["started"]) if "site-packages" not in str(p)]
    assert not found, f"an s3:// evaluation wrote files to local disk: {found[:5]}"
