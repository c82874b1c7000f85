"""Request batching of the serve app: decode jobs, the merger that runs one decode at a time, SSE framing.

Kept apart from the deployment (:mod:`pipeline.serve.app`) so the scheduling logic reads on its own:
``@serve.batch`` forms batches while the model is busy, and :class:`DecodeMerger` folds them into the
next decode instead of queueing one behind another.
"""

# No ``from __future__ import annotations``: see pipeline.serve.app.
import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional

from medlm.sampling import DecodeConfig, DecodeResult

logger = logging.getLogger("ray.serve")

LINGER_FRACTION = 0.25  # see DecodeMerger


# ---------------------------------------------------------------- batching


class EventSink:
    """Carries stream events from the decoding thread to the request's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, event: dict) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def drain(self, task: asyncio.Future) -> AsyncIterator[dict]:
        """Yield events until ``task`` is done and every event it produced has been read."""
        while not (task.done() and self.queue.empty()):
            getter = asyncio.ensure_future(self.queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()


@dataclass
class DecodeJob:
    prompt_ids: list[int]
    config: DecodeConfig
    events: Optional[EventSink] = None
    mask_step_events: bool = False  # stream every mask-diffusion step too (only with events)
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass
class JobResult:
    result: DecodeResult
    timing: dict


class DecodeMerger:
    """Runs one decode at a time in a worker thread; jobs that arrive while it runs wait in
    ``pending`` and go together into the next decode (at most ``max_size`` per decode).

    After a decode of n requests, the next one waits up to ``LINGER_FRACTION`` of that decode's
    time for n requests to gather: clients answered together come back spread over tens of
    milliseconds, and starting on the first few would leave the rest waiting a whole decode. A
    replica serving one request at a time never waits.
    """

    def __init__(self, decode, max_size: int):
        self.decode = decode  # list[DecodeJob] -> list[JobResult], blocking
        self.max_size = max_size
        self.pending: collections.deque = collections.deque()
        self.arrived = asyncio.Event()
        self.running = False
        self.failed_in_a_row = 0
        self.last_size = 1
        self.last_decode_s = 0.0

    async def submit(self, jobs: list[DecodeJob]) -> list[JobResult]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in jobs]
        self.pending.extend(zip(jobs, futures))
        self.arrived.set()
        if not self.running:
            self.running = True
            asyncio.ensure_future(self._drive())
        return list(await asyncio.gather(*futures))

    async def _linger(self) -> None:
        want = min(self.last_size, self.max_size)
        deadline = time.perf_counter() + LINGER_FRACTION * self.last_decode_s
        while len(self.pending) < want and (left := deadline - time.perf_counter()) > 0:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                break

    async def _drive(self) -> None:
        try:
            while self.pending:
                await self._linger()
                group = [self.pending.popleft() for _ in range(min(self.max_size, len(self.pending)))]
                started = time.perf_counter()
                try:
                    results = await asyncio.to_thread(self.decode, [job for job, _ in group])
                    self.failed_in_a_row = 0
                    self.last_size, self.last_decode_s = len(group), time.perf_counter() - started
                except Exception as e:  # every request of the decode gets the error, the replica lives on
                    self.failed_in_a_row += 1
                    logger.exception("a decode of %d requests failed", len(group))
                    results = [e] * len(group)
                for (_, future), result in zip(group, results):
                    if future.done():  # its request was cancelled (client went away)
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.running = False


def sse(payload) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def error_event(native: bool, body: dict) -> str:
    """An ``error`` event carrying the API's error body: for /v1/refine with ``"type": "error"`` beside
    it (as every native event has a type), for the OpenAI routes the body alone, which ``openai``
    clients raise as ``APIError``. The ``event:`` line names it for any SSE client."""
    payload = {"type": "error", **body} if native else body
    return f"event: error\n{sse(payload)}"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ACCEPTED = ":accepted"  # first item of a backend's event stream: the request passed its checks (never sent)
