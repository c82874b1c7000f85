"""The Ray Serve app over real HTTP: native + OpenAI APIs, SSE, bad input, batching, overload, recovery.

One local Ray (2 CPUs) and one real ``serve.run`` of a tiny random checkpoint serve the whole module;
its limits are set low enough that a burst shows overload answered with 503. Texts from a random
model are gibberish, so tests check shapes, counts, determinism and status codes, never wording.
"""

import asyncio
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
import ray
import yaml
from ray import serve

from jobs import init_model
from jobs.serve import build_config, check_app_args
from medlm.checkpoint import load_checkpoint
from medlm.edits import apply_edits
from medlm.sampling import DecodeConfig, generate, strip_padding
from medlm.tokenizer import decode_response, special_ids, stdlib_corpus, train_tokenizer
from pipeline.serve import run_local
from pipeline.serve.api import MASK_PLACEHOLDER, ServeArgs, default_steps
from pipeline.serve.app import DEPLOYMENT_NAME, free_port
from pipeline.serve.batching import DecodeMerger
from pipeline.serve.replies import StepEvents

REPO = Path(__file__).resolve().parents[1]
TINY_BUDGET = {"max_new_tokens": 8, "mask_steps": 2, "edit_steps": 1}
APP_ARGS = {
    "max_batch_size": 16,
    "batch_wait_timeout_s": 0.1,  # wide enough that requests sent together share a batch
    "max_prompt_tokens": 96,
    "num_cpus": 0.5,
    "health_check_period_s": 1.0,  # notice a killed replica quickly
    "max_ongoing_requests": 16,  # 16 decoding or forming + 64 queued: 80 requests fit, more get 503
    "max_queued_requests": 64,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """`medlm init --preset tiny` with a tokenizer trained on a small slice (the server does not care
    which byte-level BPE it gets; the default one takes longer to train on a busy 2-core machine)."""
    root = tmp_path_factory.mktemp("serve")
    train_tokenizer(stdlib_corpus(max_files=6, max_chars=4000), vocab_size=512).save_pretrained(str(root / "tok"))
    assert init_model.cli(["--preset", "tiny", "--out", str(root / "ckpt"), "--tokenizer", str(root / "tok")]) == 0
    return root / "ckpt"


@pytest.fixture(scope="module")
def url(checkpoint) -> str:
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield run_local({"checkpoint": str(checkpoint), **APP_ARGS}, port=free_port())
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


def replica_id(client) -> str:
    r = client.get("/health")
    assert r.status_code == 200, r.text
    return r.json()["replica"]


def refine(client, **body) -> dict:
    r = client.post("/v1/refine", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def post_all(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=180) as c:
        return await asyncio.gather(*(c.post(path, json=b) for b in bodies))


def sse_events(client, path: str, body: dict) -> list:
    """Read a whole SSE stream; JSON events decoded, the closing ``[DONE]`` kept as a string."""
    events = []
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ---------------------------------------------------------------- configs (no Ray)


def test_serve_configs_match_the_app_arguments(checkpoint):
    cluster = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())
    (app,) = [a for a in cluster["applications"] if a["import_path"] == "pipeline.serve:build_app"]
    assert ServeArgs.parse(app["args"]).checkpoint == app["args"]["checkpoint"]
    assert [d["name"] for d in app["deployments"]] == [DEPLOYMENT_NAME]
    cfg = build_config(["--checkpoint", str(checkpoint), "app.max_batch_size=4"])
    assert cfg.host == "127.0.0.1" and check_app_args(cfg).max_batch_size == 4
    with pytest.raises(ValueError, match="max_batch_sise"):
        ServeArgs.parse({"checkpoint": "x", "max_batch_sise": 4})
    assert default_steps(64) == (16, 4) and default_steps(1) == (1, 1)


def test_merger_packs_batches_that_form_while_the_model_is_busy():
    """Sub-batches arriving during a decode go into the next decode together (up to the cap); a
    failing decode fails only its own requests."""
    calls = []

    def decode(jobs):
        calls.append(list(jobs))
        time.sleep(0.05)
        if "boom" in jobs:
            raise RuntimeError("boom")
        return [f"done {j}" for j in jobs]

    async def scenario():
        merger = DecodeMerger(decode, max_size=4)
        first = asyncio.ensure_future(merger.submit(["a"]))
        await asyncio.sleep(0.01)  # "a" is decoding now
        later = [asyncio.ensure_future(merger.submit(b)) for b in (["b", "c"], ["d"], ["e", "f"])]
        results = await asyncio.gather(first, *later)
        failing = await asyncio.gather(merger.submit(["boom"]), return_exceptions=True)
        return results, failing, await merger.submit(["g"])

    results, failing, after = asyncio.run(scenario())
    assert calls[:3] == [["a"], ["b", "c", "d", "e"], ["f"]]
    assert results == [["done a"], ["done b", "done c"], ["done d"], ["done e", "done f"]]
    assert isinstance(failing[0], RuntimeError) and after == ["done g"]


def test_step_callbacks_watch_a_decode_without_changing_it(checkpoint):
    """The mask-step callback ends on the draft; the edit labels it reports rebuild every step and add
    up to the result's counts; a batch decoded with callbacks equals each request decoded alone."""
    model, tok = load_checkpoint(checkpoint)
    sp = special_ids(tok)
    events = StepEvents(tok, sp)
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("Count to five.", "Why is the sky blue?", "Hi")]
    configs = [DecodeConfig(gen_len=12, mask_steps=4, edit_steps=3, seed=i, temperature=0.7 * (i % 2))
               for i in range(len(prompts))]
    masks, drafts, steps = {}, {}, {}

    def on_edit_step(i, step, ids, labels):
        before = steps[i][-1][1] if steps.get(i) else drafts[i]
        assert apply_edits(before, *labels, del_id=sp.delete) == ids
        steps.setdefault(i, []).append((events.edit_step(step, before, ids, labels), list(ids)))

    batched = generate(model, prompts, configs, sp,
                       on_mask_step=lambda i, step, ids: masks.setdefault(i, []).append((step, list(ids))),
                       on_draft=lambda i, ids: drafts.setdefault(i, list(ids)), on_edit_step=on_edit_step)
    for i, (prompt, cfg, result) in enumerate(zip(prompts, configs, batched)):
        alone, = generate(model, [prompt], cfg, sp)
        assert (alone.output_ids, alone.draft_ids, alone.nfe) == (result.output_ids, result.draft_ids, result.nfe)
        assert [step for step, _ in masks[i]] == list(range(1, result.mask_nfe + 1))
        assert strip_padding(masks[i][-1][1], sp) == result.draft_ids == drafts[i]
        last = events.mask_step(result.mask_nfe, masks[i][-1][1])
        assert last["masked"] == 0 and last["text"] == decode_response(tok, result.draft_ids)
        assert events.mask_step(1, [sp.mask] * 3)["text"] == MASK_PLACEHOLDER * 3
        counted = {k: sum(e["edits"][k] for e, _ in steps.get(i, [])) for k in ("replace", "delete", "insert")}
        assert counted == {"replace": result.n_replace, "delete": result.n_delete, "insert": result.n_insert}
        for event, _ in steps.get(i, []):
            marked = [seg["op"] for seg in event["segments"] if seg["op"] != "keep"]
            assert {k: marked.count(k) for k in counted} == event["edits"]
    assert steps, "no edit step changed anything: the callbacks went untested"


# ---------------------------------------------------------------- native API


def test_playground_page_is_served_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "v1/refine" in page and "stream_mask_steps" in page
    assert "http://" not in page and "https://" not in page and "//cdn" not in page  # nothing from the internet


def test_models_and_health(client):
    (model,) = client.get("/v1/models").json()["data"]
    assert model["id"] == "medlm" and model["limits"]["max_prompt_tokens"] == 96
    assert client.get("/health").json()["status"] == "ok"


def test_refine_reports_text_draft_steps_edits_and_defaults(client):
    out = refine(client, prompt="What is 3 + 4?", return_draft=True, seed=3)
    assert out["budget"] == {"max_new_tokens": 64, "mask_steps": 16, "edit_steps": 4, "threshold": None,
                             "max_edits_per_step": None, "temperature": 0.0, "seed": 3,
                             "remasking": "low_confidence", "cfg_scale": 0.0, "logits_eos_inf": False,
                             "confidence_eos_eot_inf": False, "stop_token_ids": []}
    assert isinstance(out["text"], str) and isinstance(out["draft"], str)
    nfe = out["nfe"]
    assert 1 <= nfe["mask"] <= 16 and 0 <= nfe["edit"] <= 4 and nfe["total"] == nfe["mask"] + nfe["edit"]
    assert set(out["edits"]) == {"replace", "delete", "insert"}
    assert 0 <= out["usage"]["completion_tokens"] <= 64
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert out["timing"]["total_s"] >= out["timing"]["mask_s"] > 0
    chat = refine(client, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                  **TINY_BUDGET)
    assert "draft" not in chat and chat["nfe"]["mask"] <= 2
    assert chat["usage"]["prompt_tokens"] > out["usage"]["prompt_tokens"] - 20


def test_a_request_without_seed_gets_one_and_the_reply_says_which(client):
    """The seed is drawn on arrival (so a retry decodes the same text) and echoed: sent back, it
    reproduces the reply."""
    body = {"prompt": "Pick a word.", "temperature": 1.0, **TINY_BUDGET}
    first, second = refine(client, **body), refine(client, **body)
    seed = first["budget"]["seed"]
    assert isinstance(seed, int) and seed != second["budget"]["seed"]
    assert refine(client, **body, seed=seed)["text"] == first["text"]


def test_refine_stream_shows_draft_then_each_edit_then_final(client):
    body = {"prompt": "Count to five.", "max_new_tokens": 16, "mask_steps": 4, "edit_steps": 3, "seed": 5}
    events = sse_events(client, "/v1/refine", {**body, "stream": True})
    assert events[-1] == "[DONE]"
    kinds = [e["type"] for e in events[:-1]]
    assert kinds[0] == "draft" and kinds[-1] == "final" and set(kinds[1:-1]) <= {"edit"}
    final = events[-2]
    edits = [e for e in events if isinstance(e, dict) and e["type"] == "edit"]
    assert [e["step"] for e in edits] == list(range(1, len(edits) + 1))
    assert len(edits) <= final["nfe"]["edit"] <= 3
    assert final["text"] == (edits[-1]["text"] if edits else events[0]["text"])
    assert final["text"] == refine(client, **body)["text"]  # streaming changes nothing
    assert all(e["type"] != "mask_step" for e in events[:-1])  # mask steps only when asked for


def test_refine_stream_mask_steps_come_first_and_end_on_the_draft(client):
    body = {"prompt": "Count to five.", "max_new_tokens": 16, "mask_steps": 5, "edit_steps": 3, "seed": 5,
            "return_draft": True}
    events = sse_events(client, "/v1/refine", {**body, "stream": True, "stream_mask_steps": True})
    assert events[-1] == "[DONE]"
    kinds = [e["type"] for e in events[:-1]]
    n_mask = kinds.index("draft")
    assert kinds == ["mask_step"] * n_mask + ["draft"] + ["edit"] * (len(kinds) - n_mask - 2) + ["final"]
    masks, draft, edits, final = events[:n_mask], events[n_mask], events[n_mask + 1:-2], events[-2]
    assert [e["step"] for e in masks] == list(range(1, final["nfe"]["mask"] + 1)) and n_mask >= 1
    assert [e["masked"] for e in masks] == [12, 9, 6, 3, 0]  # ceil(masked left / steps left) per step
    assert masks[-1]["text"] == draft["text"] == final["draft"]
    assert {k: sum(e["edits"][k] for e in edits) for k in final["edits"]} == final["edits"]
    plain = refine(client, **body)
    assert {k: v for k, v in final.items() if k not in ("type", "id", "timing")} == \
        {k: v for k, v in plain.items() if k not in ("id", "timing")}  # the reply itself is unchanged


# ---------------------------------------------------------------- OpenAI-compatible API


def test_openai_client_chat_completions_and_models(url):
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in oa.models.list().data] == ["medlm"]
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    extra = {"mask_steps": 4, "edit_steps": 2}
    chat = oa.chat.completions.create(model="medlm", messages=msgs, max_tokens=12, seed=1, temperature=0,
                                      extra_body=extra)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 0
    assert chat.model_extra["medlm"]["nfe"]["mask"] <= 4
    stream = oa.chat.completions.create(model="medlm", messages=msgs, max_tokens=12, seed=1, extra_body=extra,
                                        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.total_tokens == chat.usage.total_tokens
    done = oa.completions.create(model="medlm", prompt="Say hi", max_tokens=8, seed=2, extra_body=extra)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 8
    streamed = "".join(c.choices[0].text for c in oa.completions.create(
        model="medlm", prompt="Say hi", max_tokens=8, seed=2, extra_body=extra, stream=True))
    assert streamed == done.choices[0].text
    with pytest.raises(openai.NotFoundError, match="not served here"):
        oa.chat.completions.create(model="gpt-4o", messages=msgs)
    with pytest.raises(openai.BadRequestError, match="edit_steps"):
        oa.chat.completions.create(model="medlm", messages=msgs, extra_body={"edit_steps": -1})
    # LLaDA's decoding options ride in extra_body too, and are echoed back
    llada = {**extra, "remasking": "random", "cfg_scale": 1.0, "confidence_eos_eot_inf": True}
    guided = oa.chat.completions.create(model="medlm", messages=msgs, max_tokens=12, seed=1, temperature=0.5,
                                        extra_body=llada)
    assert {k: guided.model_extra["medlm"]["budget"][k] for k in ("remasking", "cfg_scale", "confidence_eos_eot_inf")} \
        == {"remasking": "random", "cfg_scale": 1.0, "confidence_eos_eot_inf": True}
    with pytest.raises(openai.BadRequestError, match="cfg_scale"):
        oa.chat.completions.create(model="medlm", messages=msgs, extra_body={"cfg_scale": -2})


# ---------------------------------------------------------------- bad input: 4xx naming the field, no crash

LONG_WORDS = " ".join(f"word{i}" for i in range(200))  # > 96 prompt tokens, < 96 * 32 characters
CHAT = "/v1/chat/completions"
BAD_INPUTS = [
    ("/v1/refine", '{"prompt": "hi", ', 400, "body"),
    ("/v1/refine", "[1, 2]", 400, "body"),
    ("/v1/refine", {"prompt": "hi", "max_new_token": 8}, 400, "max_new_token"),
    ("/v1/refine", {"prompt": "hi", "max_new_tokens": "8"}, 400, "max_new_tokens"),
    ("/v1/refine", {"prompt": "hi", "stream": "yes"}, 400, "stream"),
    ("/v1/refine", {"prompt": "hi", "stream_mask_steps": True}, 400, "stream_mask_steps"),
    ("/v1/refine", {"prompt": "hi", "stream": True, "stream_mask_steps": 1}, 400, "stream_mask_steps"),
    ("/v1/refine", {"prompt": 42}, 400, "prompt"),
    ("/v1/refine", {"prompt": ""}, 400, "prompt"),
    ("/v1/refine", {"prompt": "   \n"}, 400, "prompt"),
    ("/v1/refine", {}, 400, "prompt"),
    ("/v1/refine", {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, 400, "messages"),
    ("/v1/refine", {"prompt": LONG_WORDS}, 400, "prompt"),
    ("/v1/refine", {"prompt": "x" * 10_000}, 400, "prompt"),
    ("/v1/refine", {"prompt": "hi", "max_new_tokens": 250}, 400, "max_new_tokens"),
    ("/v1/refine", {"prompt": "hi", "max_new_tokens": 0}, 400, "max_new_tokens"),
    ("/v1/refine", {"prompt": "hi", "mask_steps": -1}, 400, "mask_steps"),
    ("/v1/refine", {"prompt": "hi", "edit_steps": -2}, 400, "edit_steps"),
    ("/v1/refine", {"prompt": "hi", "mask_steps": 10**9}, 400, "mask_steps"),
    ("/v1/refine", {"prompt": "hi", "edit_steps": 10**6}, 400, "edit_steps"),
    ("/v1/refine", {"prompt": "hi", "threshold": 1.5}, 400, "threshold"),
    ("/v1/refine", {"prompt": "hi", "seed": -1}, 400, "seed"),
    ("/v1/refine", {"prompt": "hi", "temperature": 9}, 400, "temperature"),
    ("/v1/refine", {"prompt": "hi", "remasking": "top_k"}, 400, "remasking"),
    ("/v1/refine", {"prompt": "hi", "cfg_scale": -1}, 400, "cfg_scale"),
    ("/v1/refine", {"prompt": "hi", "stop_token_ids": [10**6]}, 400, "stop_token_ids"),
    (CHAT, {"model": "medlm", "messages": [{"role": "user", "content": "hi"}], "remasking": "x"}, 400, "remasking"),
    ("/v1/refine", {"prompt": "hi", "model": "gpt-4"}, 404, "model"),
    (CHAT, {"model": "medlm"}, 400, "messages"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    (CHAT, {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    (CHAT, {"model": "medlm", "messages": []}, 400, "messages"),
    (CHAT, {"model": "medlm", "messages": [{"role": "user", "content": ""}]}, 400, "messages"),
    (CHAT, {"model": "medlm", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    (CHAT, {"model": "medlm", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    (CHAT, {"model": "medlm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, 400, "max_tokens"),
    (CHAT, {"model": "medlm", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "logprobs"),
    ("/v1/completions", {"model": "medlm", "prompt": ["a", "b"]}, 400, "prompt"),
]


def test_bad_input_gets_4xx_naming_the_field_and_the_replica_survives(client):
    before = replica_id(client)
    for path, body, status, param in BAD_INPUTS:
        if isinstance(body, str):
            r = client.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            r = client.post(path, json=body)
        assert r.status_code == status, (path, body, r.text)
        err = r.json()["error"]
        assert err["param"] == param, (body, err)
        assert err["message"] and err["type"] == "invalid_request_error"
    assert client.get("/v1/refine").status_code == 405
    assert client.get("/v2/nothing").json()["error"]["code"] == "not_found"
    assert client.post("/v1/refine", content=b'{"prompt": "hi"}').json()["error"]["param"] == "body"  # no JSON type
    assert replica_id(client) == before  # nothing crashed or restarted the replica
    assert refine(client, prompt="still fine?", **TINY_BUDGET)["nfe"]["mask"] <= 2


# ---------------------------------------------------------------- batching


def test_seeded_request_returns_the_same_text_alone_or_batched(url, client):
    target = {"prompt": "Name three colours.", "max_new_tokens": 24, "mask_steps": 6, "edit_steps": 3,
              "seed": 7, "temperature": 0.9}
    alone = refine(client, **target)
    others = [{"prompt": f"Question {i}: " + "why " * i, "max_new_tokens": 8 + 4 * i, "mask_steps": 2 + i,
               "edit_steps": i % 3, "seed": i, "temperature": 0.5 * (i % 2)} for i in range(7)]
    replies = asyncio.run(post_all(url, "/v1/refine", [target] + others))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    batched = replies[0].json()
    assert batched["timing"]["batch_size"] >= 2, "the target request was not batched with others"
    assert batched["text"] == alone["text"]
    assert batched["nfe"] == alone["nfe"] and batched["edits"] == alone["edits"]


def test_llada_options_keep_a_seeded_request_the_same_alone_or_batched(url, client):
    """Random remasking, guidance (an extra packed sequence), EOS options and stop ids: still batch-invariant."""
    options = [{"remasking": "random", "temperature": 0.8}, {"cfg_scale": 2.0, "temperature": 0.6},
               {"logits_eos_inf": True, "confidence_eos_eot_inf": True, "stop_token_ids": [7]}]
    bodies = [{"prompt": f"Item {i}: colours", "max_new_tokens": 16, "mask_steps": 4, "edit_steps": 1,
               "seed": 30 + i, **options[i % 3]} for i in range(6)]
    alone = [refine(client, **b) for b in bodies[:3]]
    replies = asyncio.run(post_all(url, "/v1/refine", bodies))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    batched = [r.json() for r in replies[:3]]
    assert max(b["timing"]["batch_size"] for b in batched) >= 2, "no request was batched with others"
    for a, b in zip(alone, batched):
        assert (a["text"], a["nfe"], a["edits"], a["finish_reason"]) == (b["text"], b["nfe"], b["edits"], b["finish_reason"])


def test_64_concurrent_requests_all_succeed_in_batches(url):
    bodies = [{"prompt": f"Request number {i}", "seed": i, **TINY_BUDGET} for i in range(64)]
    replies = asyncio.run(post_all(url, "/v1/refine", bodies))
    assert [r.status_code for r in replies] == [200] * 64, [r.text for r in replies if r.status_code != 200][:3]
    outs = [r.json() for r in replies]
    assert all(o["nfe"]["mask"] <= 2 and o["usage"]["completion_tokens"] <= 8 for o in outs)
    assert max(o["timing"]["batch_size"] for o in outs) > 1


def test_overload_is_answered_with_503_not_a_pile_up(url, client):
    """160 requests at once against room for 80 (16 ongoing + 64 queued): the rest are turned away
    at once with 503, everything admitted is answered, nothing fails otherwise."""
    body = {"prompt": "a longer one", "max_new_tokens": 64, "mask_steps": 16, "edit_steps": 4}
    replies = asyncio.run(post_all(url, "/v1/refine", [body] * 160))
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    # how many are turned away depends on how fast admitted ones finish while the burst still
    # arrives (28 of 160 on an idle 2-core machine, more under load): some must be, none may fail
    assert codes.count(503) >= 1 and codes.count(200) >= 16, (codes.count(200), codes.count(503))
    assert {r.json()["error"]["code"] for r in replies if r.status_code == 503} == {"overloaded"}  # with a body
    assert refine(client, prompt="after the storm", **TINY_BUDGET)["nfe"]["mask"] <= 2


# ---------------------------------------------------------------- recovery (last: it replaces the replica)


def test_a_killed_replica_is_replaced_and_the_service_answers_again(client):
    before = replica_id(client)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].endswith(f"medlm#{DEPLOYMENT_NAME}#{before}")]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    deadline, after = time.monotonic() + 90, None
    while time.monotonic() < deadline:
        try:
            r = client.get("/health", timeout=5)
            if r.status_code == 200 and r.json()["replica"] != before:
                after = r.json()["replica"]
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    assert after is not None, "no new replica answered within 90 s"
    assert refine(client, prompt="back again?", **TINY_BUDGET)["timing"]["batch_size"] >= 1
