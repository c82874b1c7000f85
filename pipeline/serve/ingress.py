"""The thin ingress in front of the model replicas: a request whose replica dies is tried again.

Serve's own router only retries a request that no replica has accepted yet; once a replica holding
a request dies, its caller gets ``ActorDiedError`` and, behind the HTTP proxy, the client got a bare
5xx or a cut stream. This deployment faces HTTP (the routes of :mod:`pipeline.serve.routes`), holds
no model, and calls the model deployment (:class:`pipeline.serve.app.MedlmServer`) through a
DeploymentHandle:

* a plain request whose replica is lost is sent again, up to ``max_retries`` more times. It carries
  its seed (one is assigned on arrival when the client sent none), and a seeded request decodes the
  same text alone or batched on any replica, so the client gets the reply it would have got. Only a
  request that got no answer is retried; when every try is lost the client gets a 503 with the API's
  error body;
* a stream is retried the same way until it has sent its first event; after that a lost replica
  ends it with an SSE ``error`` event carrying the API's error body, then ``[DONE]``;
* the model deployment's queue limit (``max_queued_requests``) answers 503 with the error body.

A redeploy (new checkpoint or settings) is Serve's rolling update: replicas being replaced take no
new requests and finish the ones they hold within ``graceful_shutdown_timeout_s``.
"""

from __future__ import annotations

import logging

from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from pipeline.serve.api import ApiError
from pipeline.serve.batching import ACCEPTED, error_event, sse
from pipeline.serve.routes import make_api

logger = logging.getLogger("ray.serve")

INGRESS_NAME = "MedlmIngress"
# every HTTP request waits here while the model deployment holds or queues it; its queue limit
# (max_queued_requests, answered with 503 here) is the one that bounds the work
INGRESS_MAX_ONGOING_REQUESTS = 4096

front = make_api()


def replica_lost(e: BaseException) -> bool:
    """The model replica holding the request died or became unreachable (not a refusal or a bug)."""
    return isinstance(e, RayActorError) or (isinstance(e, RayTaskError) and isinstance(e.cause, RayActorError))


def overloaded(e: BackPressureError) -> ApiError:
    return ApiError(503, f"the server is at capacity ({e}); try again shortly", None, "overloaded")


def lost(tries: int) -> ApiError:
    return ApiError(503, f"the model replica serving this request stopped, {tries} time{'s' * (tries > 1)}; "
                    "try again", None, "replica_lost")


@serve.deployment(
    name=INGRESS_NAME,
    max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
    # its code only awaits the model: it runs on the replica's own event loop, with the router beside it,
    # instead of Serve's default of handing every request to a second thread and loop (CPU per request)
    ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}}},
    graceful_shutdown_timeout_s=60,
    graceful_shutdown_wait_loop_s=1.0,
)
@serve.ingress(front)
class MedlmIngress:
    def __init__(self, model: DeploymentHandle, max_retries: int):
        self.model = model
        self.tries = 1 + max_retries

    # ------------------------------------------------------------ the backend of pipeline.serve.routes

    async def info(self) -> dict:
        for attempt in range(1, self.tries + 1):
            try:
                return await self.model.info.remote()
            except BackPressureError as e:
                raise overloaded(e) from None
            except Exception as e:
                if not replica_lost(e) or attempt == self.tries:
                    raise
        raise AssertionError("unreachable")

    async def reply(self, route: str, req):
        for attempt in range(1, self.tries + 1):
            try:
                return await self.model.reply.remote(route, req)
            except BackPressureError as e:
                return overloaded(e)
            except Exception as e:
                if not replica_lost(e):
                    raise
                logger.warning("%s request lost its replica (try %d of %d): %s", route, attempt, self.tries, e)
        return lost(self.tries)

    async def events(self, route: str, req):
        """The model's event stream, tried again while it has sent nothing; see the module docstring."""
        native = route == "refine"
        accepted = sent = False
        for attempt in range(1, self.tries + 1):
            stream = self.model.options(stream=True).events.remote(route, req)
            try:
                async for item in stream:
                    if item == ACCEPTED and not sent:
                        if not accepted:
                            accepted = True
                            yield item
                        continue
                    if isinstance(item, ApiError):  # refused: only ever as the first item
                        yield item if not accepted else error_event(native, item.body())
                        return
                    sent = True
                    yield item
                return
            except BackPressureError as e:
                failure = overloaded(e)
            except Exception as e:
                if not replica_lost(e):
                    logger.exception("%s stream failed", route)
                    failure = ApiError(500, f"internal error: {type(e).__name__}: {e}", None, "internal_error")
                elif not sent and attempt < self.tries:
                    logger.warning("%s stream lost its replica before its first event (try %d of %d): %s",
                                   route, attempt, self.tries, e)
                    continue
                else:
                    failure = lost(attempt) if not sent else ApiError(
                        503, "the model replica serving this stream stopped after it had sent events; send the "
                        f"request again with \"seed\": {req.seed} to get the same text", None, "replica_lost")
            finally:
                stream.cancel()  # a no-op once it has finished; stops the work when the client went away
            if not accepted:
                yield failure  # before any event: a plain 5xx reply with the error body
            else:
                yield error_event(native, failure.body())
                yield sse("[DONE]")
            return
