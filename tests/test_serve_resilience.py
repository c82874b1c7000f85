"""Serve under failure, over real HTTP: a SIGKILLed model replica and a rolling redeploy, both under load.

One local Ray (2 CPUs) and one app with 2 model replicas behind the ingress serve the whole module, in
order: a replica killed mid-load (nothing lost; replaced), a redeploy to a second checkpoint mid-load
(nothing lost; served by the new one afterwards), then an OpenAI stream cut by its replica's death.
Texts of a random model are gibberish: tests compare them between runs, never read them.
"""

import asyncio
import json
import os
import signal
import time

import httpx
import openai
import psutil
import pytest
import ray
from ray import serve

from jobs import init_model
from medlm.checkpoint import checkpoint_hash
from medlm.tokenizer import stdlib_corpus, train_tokenizer
from pipeline.serve import build_app, run_local
from pipeline.serve.app import DEPLOYMENT_NAME, free_port

APP_ARGS = {
    "num_replicas": 2,
    "num_cpus": 0.5,
    "torch_threads": 1,
    "max_batch_size": 16,
    "batch_wait_timeout_s": 0.05,
    "max_prompt_tokens": 96,
    "health_check_period_s": 1.0,
    "graceful_shutdown_timeout_s": 30,  # a replaced replica finishes what it holds (seconds here)
    "graceful_shutdown_wait_loop_s": 0.5,
}
# temperature > 0: the text depends on the seed, so "the same text" says the retry reused it
BUDGET = {"max_new_tokens": 48, "mask_steps": 24, "edit_steps": 4, "temperature": 0.8}
CLIENTS = 24  # odd-numbered clients stream
ROUNDS = 3  # requests per client in the kill test


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two `tiny` checkpoints (different init seeds, one tokenizer): the served one and the redeploy's."""
    root = tmp_path_factory.mktemp("resilience")
    train_tokenizer(stdlib_corpus(max_files=4, max_chars=3000), vocab_size=400).save_pretrained(str(root / "tok"))
    for name, seed in (("old", "1"), ("new", "2")):
        assert init_model.cli(["--preset", "tiny", "--out", str(root / name), "--tokenizer", str(root / "tok"),
                               "--seed", seed]) == 0
    return root / "old", root / "new"


@pytest.fixture(scope="module")
def url(checkpoints):
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield run_local({"checkpoint": str(checkpoints[0]), **APP_ARGS}, port=free_port())
    finally:
        serve.shutdown()
        ray.shutdown()


def replicas() -> dict[str, int]:
    """Model replica id -> its process id."""
    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if f"#{DEPLOYMENT_NAME}#" in a["name"]:
            try:
                actor = ray.get_actor(a["name"], namespace=a["namespace"])
                pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
            except (ValueError, ray.exceptions.RayError):
                continue  # a replica that is going away
            assert f"ServeReplica:medlm:{DEPLOYMENT_NAME}" in " ".join(psutil.Process(pid).cmdline()), pid
            out[a["name"].rsplit("#", 1)[1]] = pid
    return out


def body(i: int, stream: bool) -> dict:
    return {"prompt": f"Request {i}: count to {i % 7 + 2}.", "seed": 1000 + i, **BUDGET, "stream": stream}


async def one_request(c: httpx.AsyncClient, i: int, stream: bool, first_event: asyncio.Event) -> dict:
    """One /v1/refine call as a client sees it: status, reply or the stream's events, or the drop."""
    try:
        if not stream:
            r = await c.post("/v1/refine", json=body(i, False))
            return {"i": i, "stream": False, "status": r.status_code, "reply": r.json()}
        events, kinds = [], []
        async with c.stream("POST", "/v1/refine", json=body(i, True)) as r:
            if r.status_code != 200:
                return {"i": i, "stream": True, "status": r.status_code, "reply": json.loads(await r.aread())}
            kind = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: "):
                    data = line[len("data: "):]
                    events.append(data if data == "[DONE]" else json.loads(data))
                    kinds.append(kind)
                    kind = None
                    first_event.set()
        return {"i": i, "stream": True, "status": 200, "events": events, "sse_kinds": kinds}
    except (httpx.HTTPError, json.JSONDecodeError) as e:  # a dropped connection or a body that is not JSON
        return {"i": i, "stream": stream, "dropped": f"{type(e).__name__}: {e}"}


async def load(url: str, keep_going, during) -> list[dict]:
    """CLIENTS closed-loop clients (half streaming) while ``during(first_event)`` runs beside them;
    client c sends requests c, c + CLIENTS, ... while ``keep_going(round)``."""
    first_event = asyncio.Event()
    limits = httpx.Limits(max_connections=CLIENTS + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:

        async def client(n: int) -> list[dict]:
            out, k = [], 0
            while keep_going(k):
                out.append(await one_request(c, n + CLIENTS * k, n % 2 == 1, first_event))
                k += 1
            return out

        results, _ = await asyncio.gather(asyncio.gather(*(client(n) for n in range(CLIENTS))), during(first_event))
    return [r for rs in results for r in rs]


def check_no_loss(results: list[dict], may_cut: bool) -> tuple[dict, int]:
    """Every plain request answered 200, every stream ended by a final or an error event then [DONE],
    nothing dropped. Returns seed index -> text (plain replies and finished streams) and the cut count."""
    assert not [r for r in results if "dropped" in r], [r for r in results if "dropped" in r][:3]
    texts, cut = {}, 0
    for r in results:
        assert r["status"] == 200, r
        if not r["stream"]:
            texts[r["i"]] = r["reply"]["text"]
            assert r["reply"]["budget"]["seed"] == 1000 + r["i"]
            continue
        events = r["events"]
        assert events[-1] == "[DONE]", events[-3:]
        last = events[-2]
        if last["type"] == "final":
            texts[r["i"]] = last["text"]
        else:
            assert may_cut, f"stream {r['i']} was cut: {last}"
            assert last["type"] == "error" and r["sse_kinds"][-2] == "error", last
            assert last["error"]["type"] == "server_error" and last["error"]["code"] == "replica_lost", last
            assert len(events) >= 3, "a stream cut before its first event should have been retried"
            cut += 1
    return texts, cut


def undisturbed_texts(url: str, ids: list[int]) -> dict:
    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/refine", json=body(i, False)) for i in ids))

    replies = asyncio.run(run())
    assert [r.status_code for r in replies] == [200] * len(ids), [r.text for r in replies if r.status_code != 200][:2]
    return {i: r.json()["text"] for i, r in zip(ids, replies)}


def test_a_replica_sigkilled_mid_load_loses_no_request(url):
    """24 clients (12 streaming) x 3 requests; one model replica gets SIGKILL once streams are running.
    Plain requests all succeed with the text an undisturbed run of their seeds gives; streams finish
    or end with an error event; a replacement replica answers within 60 s."""
    before = replicas()
    assert len(before) == 2, before
    victim = sorted(before)[0]
    killed_at = []

    async def kill(first_event: asyncio.Event) -> None:
        await asyncio.wait_for(first_event.wait(), 60)
        await asyncio.sleep(0.3)  # both replicas hold decoding batches and streams by now
        os.kill(before[victim], signal.SIGKILL)
        killed_at.append(time.monotonic())

    results = asyncio.run(load(url, lambda k: k < ROUNDS, kill))
    assert len(results) == CLIENTS * ROUNDS and killed_at
    texts, cut = check_no_loss(results, may_cut=True)
    print(f"killed replica {victim}: {len(results)} requests, {cut} streams ended with an error event")

    new = None
    with httpx.Client(base_url=url, timeout=10) as c:
        while new is None and time.monotonic() - killed_at[0] < 60:
            r = c.get("/health")
            assert r.status_code == 200, r.text
            if r.json()["replica"] not in before:
                new = r.json()["replica"]
            else:
                time.sleep(0.2)
    assert new is not None, "no replacement replica answered within 60 s of the kill"
    print(f"replacement {new} answered {time.monotonic() - killed_at[0]:.1f} s after the kill")

    assert undisturbed_texts(url, sorted(texts)) == texts  # the same seeds decode the same texts, retried or not


def test_a_rolling_redeploy_under_load_fails_nothing(url, checkpoints):
    """The app is redeployed with another checkpoint while 24 clients keep sending: every request and
    stream finishes (old replicas drain), and afterwards /health reports the new checkpoint."""
    old_hash, new_hash = (checkpoint_hash(c) for c in checkpoints)
    assert old_hash != new_hash
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/health").json()["checkpoint_hash"] == old_hash
    done_at = []

    async def redeploy(first_event: asyncio.Event) -> None:
        await asyncio.wait_for(first_event.wait(), 60)
        app = build_app({"checkpoint": str(checkpoints[1]), **APP_ARGS})
        await asyncio.to_thread(serve.run, app, name="medlm", route_prefix="/")
        done_at.append(time.monotonic())

    # each client keeps sending until the redeploy is done (serve.run returns once the new replicas run)
    results = asyncio.run(load(url, lambda k: (not done_at) or k == 0, redeploy))
    assert done_at
    _, cut = check_no_loss(results, may_cut=False)
    assert cut == 0 and len(results) >= CLIENTS
    print(f"redeploy under load: {len(results)} requests, 0 failed")
    with httpx.Client(base_url=url, timeout=30) as c:
        hashes = {c.get("/health").json()["checkpoint_hash"] for _ in range(8)}
        assert hashes == {new_hash}, hashes
        after = c.post("/v1/refine", json=body(0, False))
        assert after.status_code == 200, after.text


def test_streams_cut_by_dying_replicas_end_with_an_error_event(url):
    """A native stream and an OpenAI chat stream have sent their first events when every model replica
    is SIGKILLed: the native one ends with an ``error`` event and [DONE]; the ``openai`` client raises
    APIError carrying the server's error body, not a connection or protocol error."""
    deadline = time.monotonic() + 30
    while len(pids := replicas()) != 2 and time.monotonic() < deadline:
        time.sleep(0.5)  # replicas replaced by the redeploy may still be stopping
    assert len(pids) == 2, pids
    long = {"max_new_tokens": 200, "mask_steps": 200, "edit_steps": 100, "temperature": 0.8}
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    with httpx.Client(base_url=url, timeout=60) as c, c.stream("POST", "/v1/refine", json={
            "prompt": "Count to a hundred.", "seed": 3, "stream": True, "stream_mask_steps": True, **long}) as native:
        lines = native.iter_lines()
        assert next(line for line in lines if line.startswith("data: ")).startswith('data: {"id"')  # a mask step
        chat = oa.chat.completions.create(
            model="medlm", messages=[{"role": "user", "content": "Count to a hundred."}], max_tokens=200, seed=4,
            temperature=0.8, stream=True, extra_body={"mask_steps": 200, "edit_steps": 100})
        chunks = iter(chat)
        assert next(chunks).choices[0].delta.role == "assistant"  # its replica is decoding now
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        rest = [line for line in lines if line]
    events = [json.loads(line[len("data: "):]) for line in rest[:-1] if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and rest[-3] == "event: error", rest[-3:]
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "replica_lost", events[-1]
    assert '"seed": 3' in events[-1]["error"]["message"]
    assert all(e["type"] in ("mask_step", "draft", "edit") for e in events[:-1])
    with pytest.raises(openai.APIError) as caught:
        for _ in chunks:
            pass
    assert not isinstance(caught.value, openai.APIConnectionError), caught.value
    assert caught.value.body["code"] == "replica_lost" and caught.value.body["type"] == "server_error"
    assert "stopped" in caught.value.message and '"seed": 4' in caught.value.message  # how to get the same text
