"""ME-DLM on Ray Serve: one model per replica; concurrent requests decode as one packed batch.

``build_app(args)`` is the Serve import path (``pipeline.serve:build_app`` in cluster/serve.yaml).
Each replica loads the checkpoint once, checks and tokenizes requests on its event loop, and hands
them to a ``@serve.batch`` method that decodes every waiting request in one
:func:`medlm.sampling.generate` call: the sampler packs variable-length sequences without shared
padding and seeds each request on its own, so a request decodes the same alone or batched. The
forward passes run in a worker thread, so the event loop keeps accepting requests, answering health
checks and streaming the drafts and edit steps of running requests. Batches that ``@serve.batch``
forms while the model is busy are merged (up to ``max_batch_size`` requests) into the next decode
instead of queueing one behind another (:class:`DecodeMerger`): without that, 16 concurrent
clients were decoded in batches of 5 on average and most of the gain was lost.

The checkpoint is a local directory or an ``s3://`` URI (:mod:`pipeline.serve.checkpoint`): the
driver checks it, and each replica loads its own node's copy.

Clients reach these replicas through a thin ingress (:mod:`pipeline.serve.ingress`) that retries a
request whose replica died; with ``ingress: false`` the replicas face HTTP themselves. Either way the
routes are those of :mod:`pipeline.serve.routes` (request shapes in :mod:`pipeline.serve.api`, replies
in :mod:`pipeline.serve.replies`); this class is their backend (``info``, ``reply``, ``events``).
"""

import asyncio
import logging
import socket
import time
from typing import Optional

import torch
from ray import serve

from medlm.checkpoint import checkpoint_hash, device_and_dtype, load_checkpoint
from medlm.sampling import DecodeConfig, generate
from medlm.tokenizer import decode_response, special_ids
from pipeline.common.ray_connect import connect_ray
from pipeline.common.storage import local_copy
from pipeline.serve.api import ApiError, Limits, ServeArgs, decode_config, prompt_ids
from pipeline.serve.batching import ACCEPTED, DecodeJob, DecodeMerger, EventSink, JobResult, error_event, sse
from pipeline.serve.checkpoint import checked_checkpoint
from pipeline.serve.ingress import INGRESS_NAME, MedlmIngress
from pipeline.serve.replies import (
    Outcome,
    StepEvents,
    chat_chunk,
    chat_completion_reply,
    completion_chunk,
    completion_reply,
    new_id,
    refine_reply,
    usage_chunk,
)
from pipeline.serve.routes import make_api

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "MedlmServer"
UNHEALTHY_AFTER_FAILED_BATCHES = 3
MAX_BATCHES_IN_FLIGHT = 256  # batches handed to the merger at once; it decodes them max_batch_size at a time
GRACEFUL_SHUTDOWN_TIMEOUT_S = 60  # a replica being replaced finishes its requests for up to this long
GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 1.0

api = make_api()  # used when the model replicas face HTTP themselves (``ingress: false``)


# ---------------------------------------------------------------- the deployment


class MedlmServer:
    """One model replica (deployment ``MedlmServer``): the backend of the routes, behind the ingress
    (``model_deployment``) or facing HTTP itself (``http_model_deployment``, ``ingress: false``)."""

    def __init__(self, args: dict):
        self.args = ServeArgs.parse(args)
        if self.args.torch_threads:
            torch.set_num_threads(self.args.torch_threads)
        device, dtype = device_and_dtype(self.args.device)
        checkpoint = local_copy(self.args.checkpoint)  # this node's copy: the path itself, or a cached download
        self.model, self.tokenizer = load_checkpoint(checkpoint, device=device, dtype=dtype)
        self.special = special_ids(self.tokenizer)
        self.step_events = StepEvents(self.tokenizer, self.special)
        self.limits = Limits.from_args(self.args, self.model.config.max_position_embeddings, self.model.config.vocab_size)
        self.checkpoint_hash = checkpoint_hash(checkpoint)
        self.created = int(time.time())
        self.merger = DecodeMerger(self._decode, self.args.max_batch_size)
        self.decode_batch.set_max_batch_size(self.args.max_batch_size)
        self.decode_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        # one tiny decode so the first real request does not pay for lazy initialisation
        generate(self.model, [[self.special.im_start]], DecodeConfig(gen_len=2, mask_steps=1, edit_steps=1), self.special)
        logger.info("medlm replica ready: %s (%s) on %s", self.args.model_name, self.checkpoint_hash, device)

    async def check_health(self) -> None:
        """Serve replaces a replica whose batches keep failing (e.g. a broken accelerator context)."""
        if self.merger.failed_in_a_row >= UNHEALTHY_AFTER_FAILED_BATCHES:
            raise RuntimeError(f"the last {self.merger.failed_in_a_row} decodes failed")

    # ------------------------------------------------------------ decoding

    # max_concurrent_batches: batches formed while the model is busy must reach the merger, not queue here
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, max_concurrent_batches=MAX_BATCHES_IN_FLIGHT)
    async def decode_batch(self, jobs: list[DecodeJob]) -> list[JobResult]:
        return await self.merger.submit(jobs)

    def _decode(self, jobs: list[DecodeJob]) -> list[JobResult]:
        started = time.perf_counter()
        streaming = any(j.events is not None for j in jobs)
        watching_masks = any(j.events is not None and j.mask_step_events for j in jobs)
        before_edit: dict[int, list[int]] = {}  # request index -> its response before the next edit step

        def on_mask_step(i: int, step: int, ids: list[int]) -> None:
            if jobs[i].events is not None and jobs[i].mask_step_events:
                jobs[i].events.put(self.step_events.mask_step(step, ids))

        def on_draft(i: int, ids: list[int]) -> None:
            if jobs[i].events is not None:
                before_edit[i] = ids
                jobs[i].events.put({"type": "draft", "text": decode_response(self.tokenizer, ids), "tokens": len(ids)})

        def on_edit_step(i: int, step: int, ids: list[int], labels) -> None:
            if jobs[i].events is not None:
                jobs[i].events.put(self.step_events.edit_step(step, before_edit[i], ids, labels))
                before_edit[i] = ids

        results = generate(
            self.model, [j.prompt_ids for j in jobs], [j.config for j in jobs], self.special,
            on_draft=on_draft if streaming else None, on_edit_step=on_edit_step if streaming else None,
            on_mask_step=on_mask_step if watching_masks else None,
        )
        n = len(jobs)
        # generate() reports each phase's time divided by the batch size; a request waits for all of it
        return [
            JobResult(r, {"queue_s": round(started - j.enqueued_at, 6), "mask_s": round(r.mask_time_s * n, 6),
                          "edit_s": round(r.edit_time_s * n, 6), "batch_size": n})
            for j, r in zip(jobs, results)
        ]

    async def _run(self, job: DecodeJob, t0: float, stops=()) -> Outcome:
        done = await self.decode_batch(job)
        return self._outcome(job, done, t0, stops)

    def _outcome(self, job: DecodeJob, done: JobResult, t0: float, stops=()) -> Outcome:
        timing = {**done.timing, "total_s": round(time.perf_counter() - t0, 6)}
        return Outcome.build(done.result, job.config, self.tokenizer, self.special, len(job.prompt_ids), timing, stops)

    def _check_model(self, name: Optional[str]) -> str:
        if name is not None and name != self.args.model_name:
            raise ApiError(404, f"model {name!r} is not served here; available: {self.args.model_name!r}",
                           "model", "model_not_found")
        return self.args.model_name

    def _prepare(self, route: str, req) -> tuple[DecodeJob, str, str, list[str]]:
        """Check a request against this model and its limits: (job, reply id, model name, stop strings)."""
        req.check()
        model = self._check_model(req.model)
        if route == "refine":
            ids = prompt_ids(self.tokenizer, self.limits, prompt=req.prompt, messages=req.messages)
            cfg = decode_config(req, req.max_new_tokens, len(ids), self.limits, "max_new_tokens")
            return DecodeJob(ids, cfg), new_id("refine"), model, []
        if route == "chat":
            ids = prompt_ids(self.tokenizer, self.limits, messages=req.messages)
            param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
            cfg = decode_config(req, req.new_tokens(), len(ids), self.limits, param)
            return DecodeJob(ids, cfg), new_id("chatcmpl"), model, req.stops()
        ids = prompt_ids(self.tokenizer, self.limits, prompt=req.prompt)
        cfg = decode_config(req, req.new_tokens(), len(ids), self.limits, "max_tokens")
        return DecodeJob(ids, cfg), new_id("cmpl"), model, req.stops()

    # ------------------------------------------------------------ the backend of pipeline.serve.routes
    # Called in-process when this replica faces HTTP, through a DeploymentHandle from the ingress otherwise.

    async def info(self) -> dict:
        return {"model": self.args.model_name, "checkpoint_hash": self.checkpoint_hash, "created": self.created,
                "max_batch_size": self.args.max_batch_size, "limits": self.limits.public(),
                "replica": serve.get_replica_context().replica_id.unique_id}

    async def reply(self, route: str, req):
        """The reply body, or the ApiError refusing the request (returned: it crosses the handle as a value)."""
        t0 = time.perf_counter()
        try:
            job, rid, model, stops = self._prepare(route, req)
        except ApiError as e:
            return e
        try:
            out = await self._run(job, t0, stops)
        except Exception as e:
            logger.exception("request %s failed", rid)
            return ApiError(500, f"decoding failed: {e}", None, "internal_error")
        if route == "refine":
            return refine_reply(rid, model, out, req.return_draft)
        return (chat_completion_reply if route == "chat" else completion_reply)(rid, model, out)

    async def events(self, route: str, req):
        """ApiError (refused) or ACCEPTED, then the SSE lines of the stream, ending with [DONE]."""
        t0 = time.perf_counter()
        try:
            job, rid, model, _ = self._prepare(route, req)
        except ApiError as e:
            yield e
            return
        yield ACCEPTED
        if route == "refine":
            job.events = EventSink()
            job.mask_step_events = req.stream_mask_steps
            stream = self._refine_events(rid, model, job, t0, req.return_draft)
        else:
            stream = self._openai_events(rid, model, job, t0, req, chat=route == "chat")
        async for line in stream:
            yield line

    async def _refine_events(self, rid: str, model: str, job: DecodeJob, t0: float, return_draft: bool):
        """SSE: optionally every mask step, the draft, every edit step that changed the response (with
        its operations), the full reply, [DONE]."""
        task = asyncio.ensure_future(self.decode_batch(job))
        try:
            async for event in job.events.drain(task):
                yield sse({"id": rid, **event})
            out = self._outcome(job, task.result(), t0)
            yield sse({"type": "final", **refine_reply(rid, model, out, return_draft)})
        except Exception as e:  # headers are sent already: report in-band
            logger.exception("stream %s failed", rid)
            yield error_event(True, ApiError(500, f"decoding failed: {e}", None, "internal_error").body())
        yield sse("[DONE]")

    async def _openai_events(self, rid: str, model: str, job: DecodeJob, t0: float, req, chat: bool):
        """OpenAI chunks. Edits rewrite earlier text, which append-only deltas cannot express, so the
        text arrives as one delta once refinement ends; /v1/refine streams the intermediate steps."""
        created = int(time.time())
        usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(content: Optional[str], finish: Optional[str] = None, role: bool = False) -> dict:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({"content": content} if content else {})
                return chat_chunk(rid, model, created, delta, finish, usage)
            return completion_chunk(rid, model, created, content or "", finish, usage)

        if chat:
            yield sse(chunk(None, role=True))  # headers and the role go out before decoding starts
        try:
            out = await self._run(job, t0, req.stops())
            if out.text:
                yield sse(chunk(out.text))
            yield sse(chunk(None, out.finish_reason))
            if usage:
                yield sse(usage_chunk(rid, model, created, "chat.completion.chunk" if chat else "text_completion", out))
        except Exception as e:
            logger.exception("stream %s failed", rid)
            yield error_event(False, ApiError(500, f"decoding failed: {e}", None, "internal_error").body())
        yield sse("[DONE]")


_MODEL_OPTIONS = dict(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=32,  # 2 x max_batch_size: one batch decoding, the next one forming
    max_queued_requests=256,  # beyond this the caller answers 503 instead of queueing without bound
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_TIMEOUT_S,
    graceful_shutdown_wait_loop_s=GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
)
# Serve allows one FastAPI deployment per app: the model carries the routes only when it faces HTTP
model_deployment = serve.deployment(**_MODEL_OPTIONS)(MedlmServer)
http_model_deployment = serve.deployment(**_MODEL_OPTIONS)(serve.ingress(api)(MedlmServer))


# ---------------------------------------------------------------- entry points


def build_app(args: ServeArgs) -> serve.Application:
    """Serve import path: a typed application builder (``checkpoint`` required).

    Serve parses a config file's ``args:`` into :class:`pipeline.serve.api.ServeArgs` once, from this
    annotation, before calling it; ``medlm serve`` passes the ``ServeArgs`` it parsed; a plain dict is
    parsed here. Deployment options given in ``args`` override the code defaults; a Serve config
    file's ``deployments:`` section overrides both. With ``ingress`` (the default) the app is the
    ingress ``MedlmIngress`` holding a handle to the model deployment ``MedlmServer``.
    """
    parsed = ServeArgs.parse(args)
    options = {k: getattr(parsed, k) for k in ("num_replicas", "max_ongoing_requests", "max_queued_requests",
                                                "health_check_period_s", "health_check_timeout_s")
               if getattr(parsed, k) is not None}
    drain = {k: getattr(parsed, k) for k in ("graceful_shutdown_timeout_s", "graceful_shutdown_wait_loop_s")
             if getattr(parsed, k) is not None}
    actor = {k: getattr(parsed, k) for k in ("num_cpus", "num_gpus") if getattr(parsed, k) is not None}
    if actor:
        options["ray_actor_options"] = actor
    if not parsed.ingress:
        return http_model_deployment.options(**options, **drain).bind(parsed.model_dump())
    # the ingress logs each HTTP request; a second access-log line per request from the model costs CPU
    model = model_deployment.options(**options, **drain, logging_config={"enable_access_log": False}) \
        .bind(parsed.model_dump())
    return MedlmIngress.options(name=INGRESS_NAME, **drain).bind(model, parsed.max_retries)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_local(args: ServeArgs | dict, host: str = "127.0.0.1", port: int = 8000, app_name: str = "medlm",
              route_prefix: str = "/") -> str:
    """Start Serve's HTTP proxy on ``host:port`` (``port=0``: a free one), deploy the app, wait until
    it answers, and return its base URL. Connects to the running Ray (or ``RAY_ADDRESS``), else
    starts a local one."""
    parsed = ServeArgs.parse(args)
    # fail here, by name, before any replica tries; replicas get the resolved path or the s3:// URI
    parsed = parsed.model_copy(update={"checkpoint": checked_checkpoint(parsed.checkpoint)})
    connect_ray()
    port = port or free_port(host)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(parsed), name=app_name, route_prefix=route_prefix)
    prefix = "" if route_prefix == "/" else route_prefix.rstrip("/")
    return f"http://{host}:{port}{prefix}"
