"""The README's `ray job submit` recipe, run as written against a `ray start --head` cluster.

The unit of truth is the README: the test starts its own head node the way the recipe does (a token
from `ray get-auth-token --generate`, `RAY_AUTH_MODE=token`, `ray start --head`), then submits
`jobs.generate` with the recipe's `--working-dir . --runtime-env cluster/runtime_env.yaml` and
`python -m jobs.generate --config jobs/configs/generate_cluster.yaml source=... checkpoint=... output=...`
from a client that passes the token the documented ways. Differences from the recipe, each needed
to run on a shared 2-core CPU machine without side effects:

- the head node gets its own `--temp-dir`, ports and `HOME` (so its `~/.ray/auth_token` is the test's,
  not the user's) and binds the dashboard to 127.0.0.1;
- a longer dashboard start-up timeout (Ray allows 60 s), for a loaded machine;
- `PIP_NO_INDEX=1` in the cluster's environment: the runtime env's pip step must not reach the
  network; it passes because every requirement is already in the venv Ray clones for the job;
- CPU overrides on the GPU config (one 1-CPU actor, no GPU, short drafts) and a tiny random model.

The cluster is stopped by its own process tree (found by a marker in its environment), never by a
global `ray stop`, so other Ray clusters on the machine survive.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import init_model
from medlm.tasks.toy import generate_problems, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv whose `ray` and `python` the recipe runs
MARKER = "MEDLM_JOB_SUBMIT_TEST"
N_ROWS = 6
RUN_ID = "job-submit"
AGENT_WAIT_S = 300  # "No available agent" right after `ray start` lasts tens of seconds, more under load
JOB_WAIT_S = 900  # ~2 min on a quiet machine (the venv clone for the pip runtime env alone is ~40 s);
# the bounds are wide because this machine's other jobs can leave a nice-19 test a fraction of a core
# generate_cluster.yaml is sized for GPU nodes; these make it a 2-CPU run of a few seconds
CPU_OVERRIDES = ["num_actors=1", "cpus_per_actor=1", "num_gpus_per_actor=0", "align_num_cpus=0",
                 "align_concurrency=1", "gen_len=48", "tokens_per_step=[8, 16]", "batch_size=4",
                 "tokens_per_forward=2048", "rows_per_file=4", "row_group_size=2", f"run_id={RUN_ID}"]
NO_TOKEN_MESSAGE = "Token authentication is enabled but no authentication token was found"


def _free_ports(n: int) -> list[int]:
    """Ports the kernel hands out now; held open together so the n are distinct."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_port_range(width: int) -> int:
    """First port of `width` free ports below the kernel's ephemeral range and above Ray's defaults."""
    for _ in range(50):
        base = random.randrange(20000, 32000 - width)
        try:
            for port in range(base, base + width):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {width} consecutive free ports found in 20000-32000")


def _marked(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker.encode() in f.read().split(b"\0")
    except OSError:
        return False


def _stop_tree(marker: str, temp_dir: str) -> list[str]:
    """Stop every process of this cluster, children first; returns what would not die.

    `ray start` daemonizes (its processes are re-parented to init) and renames helpers
    (`ray::DashboardAgent`, ...), so they are found by the marker in their environment or the
    temp dir on their command line, plus all their descendants.
    """
    import psutil

    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    roots = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid in me:
            continue
        if _marked(p.pid, marker) or any(temp_dir in a for a in (p.info["cmdline"] or [])):
            roots.append(p)
    depth: dict[int, tuple[int, psutil.Process]] = {}
    for r in roots:
        try:
            tree = [r, *r.children(recursive=True)]
        except psutil.Error:
            continue
        for p in tree:
            if p.pid in me:
                continue
            try:
                depth[p.pid] = (len(p.parents()), p)
            except psutil.Error:
                pass
    procs = [p for _, p in sorted(depth.values(), key=lambda dp: -dp[0])]  # deepest first
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=5)
    return [str(p.pid) for p in still]


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["nice", "-n", "19", *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def _clean_env() -> dict:
    """This process's environment without anything that would point Ray at another cluster or token."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", MARKER}}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # as with the venv activated
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@pytest.fixture(scope="module")
def head():
    """A `ray start --head` cluster started as the README's head-node recipe says, with its own everything."""
    ray_bin = str(BIN / "ray")
    if not os.access(ray_bin, os.X_OK):
        pytest.skip(f"no `ray` CLI next to {sys.executable}; run the tests with the project's venv python")
    base = tempfile.mkdtemp(prefix="medlm-js-", dir="/tmp")  # short: Unix socket paths are capped at ~107 bytes
    temp_dir, home = os.path.join(base, "ray"), os.path.join(base, "home")
    os.makedirs(home)
    marker = f"{MARKER}={uuid.uuid4().hex}"
    env = _clean_env()
    # Ray gives its dashboard 60 s to come up; at nice 19 on two busy cores it took longer
    env.update(HOME=home, PIP_NO_INDEX="1", OMP_NUM_THREADS="1", RAY_DASHBOARD_STARTUP_TIMEOUT_S="600")
    env[MARKER] = marker.split("=", 1)[1]
    info = {"base": Path(base), "home": home, "token_file": os.path.join(home, ".ray", "auth_token")}
    try:
        # the README's head-node lines: a token, then RAY_AUTH_MODE=token for ray start and the client
        gen = _run([ray_bin, "get-auth-token", "--generate"], env, timeout=300)
        assert gen.returncode == 0 and os.path.exists(info["token_file"]), _tail(gen)
        env["RAY_AUTH_MODE"] = "token"
        gcs, dash, client, agent_http, agent_grpc, metrics, nm, om, rte = _free_ports(9)
        workers = _free_port_range(200)
        start = _run([
            ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
            "--port", str(gcs), "--dashboard-port", str(dash), "--include-dashboard", "true",
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
            "--node-manager-port", str(nm), "--object-manager-port", str(om),
            "--runtime-env-agent-port", str(rte), "--min-worker-port", str(workers),
            "--max-worker-port", str(workers + 199), "--num-cpus", "2", "--temp-dir", temp_dir,
            "--disable-usage-stats",
        ], env, timeout=900)
        assert start.returncode == 0, f"ray start --head failed:\n{_tail(start)}"
        info.update(address=f"http://127.0.0.1:{dash}", head_env=env)
        yield info
    finally:
        survivors = _stop_tree(marker, temp_dir)
        shutil.rmtree(base, ignore_errors=True)
        if survivors:
            print(f"[test_job_submit] processes that would not stop: {survivors}", file=sys.stderr)


def _client_env(head, **auth: str) -> dict:
    """A job client on another machine: only RAY_ADDRESS and the given auth variables, the user's own HOME."""
    env = _clean_env()
    env["RAY_ADDRESS"] = head["address"]
    env.update(auth)
    return env


def _cluster_logs(head, n: int = 3000) -> str:
    """Tails of the head node's own logs: why a job failed is there, not in `ray job submit`'s output."""
    logs = head["base"] / "ray" / "session_latest" / "logs"
    parts = []
    for pattern in ("raylet.err", "raylet.out", "runtime_env_agent.log", "runtime_env_setup-*.log", "job-driver-*.log"):
        for f in sorted(logs.glob(pattern)):
            text = f.read_text(errors="replace")
            parts.append(f"--- {f.name} (last {n} chars)\n{text[-n:]}")
    return "\n".join(parts) or f"no logs under {logs}"


def _token(head) -> str:
    return Path(head["token_file"]).read_text().strip()


@pytest.mark.timeout(1500)  # includes starting the head node (the fixture), slow on two busy cores
def test_submit_without_token_mode_is_refused(head):
    """The README says the client needs RAY_AUTH_MODE=token: without it even a token in the env is not sent."""
    for auth in ({}, {"RAY_AUTH_TOKEN": _token(head)}, {"RAY_AUTH_TOKEN_PATH": head["token_file"]}):
        proc = _run([str(BIN / "ray"), "job", "submit", "--no-wait", "--", "true"], _client_env(head, **auth),
                    timeout=120)
        assert proc.returncode != 0, f"a submit with only {sorted(auth)} was accepted:\n{_tail(proc)}"
        assert NO_TOKEN_MESSAGE in proc.stdout + proc.stderr, _tail(proc)


def _submit_when_agent_ready(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """`ray job submit`, again while the head answers 500 "No available agent" (bounded)."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        proc = _run(cmd, env, timeout=JOB_WAIT_S)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or "No available agent" not in out or "submitted successfully" in out:
            return proc
        if time.monotonic() > deadline:
            pytest.fail(f"the job agent was not ready {AGENT_WAIT_S} s after ray start:\n{_tail(proc)}")
        print("[test_job_submit] no job agent yet; submitting again in 5 s", file=sys.stderr)
        time.sleep(5)


@pytest.mark.timeout(1800)  # agent wait + venv clone + job, on two shared cores
def test_generate_recipe_publishes_a_run(head):
    data = head["base"] / "data"
    checkpoint, output, source = data / "ckpt", data / "drafts", data / "sft.jsonl"
    assert init_model.cli(["--preset", "tiny", "--out", str(checkpoint)]) == 0
    problems = generate_problems(N_ROWS, seed=5)
    write_jsonl(problems, source)
    with open(source, "a") as f:
        f.write('{"question": "a row cut short"\n')  # rejected: read = written + rejected must still hold

    client = _client_env(head, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_token(head))
    submission_id = f"medlm-{uuid.uuid4().hex[:8]}"
    cmd = [str(BIN / "ray"), "job", "submit", "--submission-id", submission_id,
           "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
           "python", "-m", "jobs.generate", "--config", "jobs/configs/generate_cluster.yaml",
           f"source={source}", f"checkpoint={checkpoint}", f"output={output}", *CPU_OVERRIDES]
    t0 = time.monotonic()
    try:
        proc = _submit_when_agent_ready(cmd, client)
    except subprocess.TimeoutExpired as e:
        logs = _run([str(BIN / "ray"), "job", "logs", submission_id], client, timeout=60)
        pytest.fail(f"job {submission_id} did not finish in {JOB_WAIT_S} s; its log:\n{_tail(logs)}\n{e}\n"
                    f"{_cluster_logs(head)}")
    print(f"[test_job_submit] job {submission_id} took {time.monotonic() - t0:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, f"ray job submit failed:\n{_tail(proc, 8000)}\n{_cluster_logs(head)}"
    assert f"Job '{submission_id}' succeeded" in proc.stdout + proc.stderr, _tail(proc)

    run = output / "runs" / RUN_ID
    assert (run / "_SUCCESS").exists(), f"no _SUCCESS in {run}: {sorted(os.listdir(output))}"
    assert (output / "CURRENT").read_text().strip() == RUN_ID
    manifest = json.loads((run / "_manifest.json").read_text())
    rows = manifest["rows"]
    assert rows["read"] == rows["written"] + rows["rejected"] == N_ROWS + 1
    assert rows["written"] == N_ROWS and rows["rejected_by_reason"] == {"malformed_json": 1}
    assert sum(f["rows"] for f in manifest["files"]) == N_ROWS
    ids = []
    for entry in manifest["files"]:
        table = pq.read_table(run / entry["name"])
        assert table.num_rows == entry["rows"], entry["name"]
        ids += table.column("id").to_pylist()
    assert sorted(ids) == sorted(p.id for p in problems)

    # the other two documented ways to hand the client the token: a token file, and the head node's own
    for env in (_client_env(head, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=head["token_file"]),
                {**head["head_env"], "RAY_ADDRESS": head["address"]}):
        status = _run([str(BIN / "ray"), "job", "status", submission_id], env, timeout=120)
        assert status.returncode == 0 and f"Job '{submission_id}' succeeded" in status.stdout, _tail(status)
