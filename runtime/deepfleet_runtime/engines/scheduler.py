"""Iteration-level scheduling: requests join the running batch between steps and leave when done.

The scheduler owns no model. It holds the queue of submitted sequences, decides which join the
batch at the next step (batch size, prefill tokens per step and the KV budget), applies each
sequence's finish rules (end of sequence, stop strings, max_tokens, cancellation) to the tokens
an engine produces, and delivers TokenEvents to the asyncio side in one hop per step.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator

from .base import EngineStats, EngineUnavailable, GenerationRequest, TokenEvent
from .detokenize import IncrementalDecoder


SHUTTING_DOWN = "the server is shutting down; retry (a gateway sends it to another replica)"


class CapacityError(ValueError):
    """A request can never fit the KV cache; the message names the sizes and the fix."""


@dataclass(eq=False)
class Sequence:
    """One request inside the engine: its stream, its text state and how far it got."""

    request: GenerationRequest
    decoder: IncrementalDecoder
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    eos_ids: frozenset[int]
    generator: object = None  # the engine's per-request RNG, when the request has a seed
    counts: object = None  # the engine's per-token counts of generated tokens, for penalties
    slot: int | None = None  # the engine's KV cache slot while running
    cached: int = 0  # tokens of this sequence in the KV cache
    next_token: int | None = None  # sampled, not yet fed to the model (None while the prompt is prefilled)
    produced: int = 0
    finished: bool = False
    cancelled: bool = False
    first_event: bool = field(default=True, repr=False)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_left(self) -> int:
        """Prompt tokens not yet in the KV cache."""
        return len(self.request.prompt_token_ids) - self.cached

    @property
    def reserved_tokens(self) -> int:
        """KV slots this sequence may need at most (prompt + every token it may generate)."""
        return len(self.request.prompt_token_ids) + self.request.sampling.max_tokens

    def accept(self, token: int, logprob=None) -> TokenEvent:
        """Apply one generated token (with its TokenLogprob when the request asked for logprobs);
        the event says whether (and why) the sequence finished."""
        params = self.request.sampling
        self.produced += 1
        logprobs = None if logprob is None else [logprob]
        if token in self.eos_ids and not params.ignore_eos:
            self.finished = True
            return TokenEvent(self.decoder.flush(), [token], "stop", self.produced, logprobs)
        delta, stopped = self.decoder.push(token)
        if stopped:
            self.finished = True
            return TokenEvent(delta, [token], "stop", self.produced, logprobs)
        if self.produced >= params.max_tokens:
            self.finished = True
            return TokenEvent(delta + self.decoder.flush(), [token], "length", self.produced, logprobs)
        return TokenEvent(delta, [token], None, self.produced, logprobs)

    def cancelled_event(self) -> TokenEvent:
        self.finished = True
        return TokenEvent("", [], "cancelled", self.produced)


class BatchScheduler:
    """Thread-safe queue + admission policy for an engine's running batch."""

    def __init__(self, max_batch_size: int, max_batch_tokens: int, kv_cache_tokens: int):
        if max_batch_size < 1 or max_batch_tokens < 1 or kv_cache_tokens < 1:
            raise ValueError("scheduler sizes must be positive")
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.kv_cache_tokens = kv_cache_tokens
        self.running: list[Sequence] = []
        self.kv_used_tokens = 0  # set by the engine after each step (KV slots it holds allocated)
        self._waiting: deque[Sequence] = deque()
        self._cancel_ids: set[str] = set()
        self._wake = threading.Condition()
        self._closed = False
        self._closed_reason = SHUTTING_DOWN

    def check_fits(self, request: GenerationRequest) -> None:
        """Raise CapacityError when the request alone exceeds the KV cache."""
        need = len(request.prompt_token_ids) + request.sampling.max_tokens
        if need > self.kv_cache_tokens:
            raise CapacityError(
                f"the prompt ({len(request.prompt_token_ids)} tokens) plus max_tokens "
                f"({request.sampling.max_tokens}) needs {need} KV slots; the cache holds "
                f"{self.kv_cache_tokens}: lower max_tokens or raise scheduler.kv_cache_tokens")

    async def stream(self, request: GenerationRequest, tokenizer, eos_ids: frozenset[int]
                     ) -> AsyncIterator[TokenEvent]:
        """Submit `request` and yield its events; leaving early (client gone) cancels it."""
        if self._closed:
            raise EngineUnavailable(self._closed_reason)
        self.check_fits(request)
        sequence = Sequence(request, IncrementalDecoder(tokenizer, request.sampling.stop),
                            asyncio.get_running_loop(), asyncio.Queue(), eos_ids)
        self.submit(sequence)
        finished = False
        try:
            while not finished:
                event = await sequence.queue.get()
                if isinstance(event, BaseException):
                    finished = True
                    raise event
                finished = bool(event.finish_reason)
                yield event
        finally:
            if not finished:
                self.cancel(request.request_id)

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            self._waiting.append(sequence)
            self._wake.notify()

    def cancel(self, request_id: str) -> None:
        with self._wake:
            self._cancel_ids.add(request_id)
            self._wake.notify()

    def close(self, reason: str = "") -> None:
        """Stop taking requests (new ones get EngineUnavailable with `reason`); the worker stops."""
        with self._wake:
            self._closed = True
            self._closed_reason = reason or self._closed_reason
            self._wake.notify_all()

    def fail_all(self, error: BaseException) -> None:
        """End every running and queued stream with `error` (after the worker stopped)."""
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        running, self.running = self.running, []
        self.kv_used_tokens = 0
        self.publish([(sequence, error) for sequence in running + waiting])

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_for_work(self, timeout: float = 1.0) -> bool:
        """Block until something is running, waiting or to be cancelled; False on timeout or close."""
        with self._wake:
            if not (self.running or self._waiting or self._cancel_ids or self._closed):
                self._wake.wait(timeout)
            return bool(self.running or self._waiting or self._cancel_ids) and not self._closed

    def take_cancelled(self) -> list[Sequence]:
        """Sequences cancelled since the last step: queued ones are removed here, running ones returned."""
        with self._wake:
            ids, self._cancel_ids = self._cancel_ids, set()
            if not ids:
                return []
            queued = [s for s in self._waiting if s.request_id in ids]
            self._waiting = deque(s for s in self._waiting if s.request_id not in ids)
        for sequence in queued:
            self.publish([(sequence, sequence.cancelled_event())])
        return [s for s in self.running if s.request_id in ids]

    def admit(self, budget: int | None = None, prefilling: bool = False, kv_fits=None) -> list[Sequence]:
        """Waiting sequences that join the batch at this step, in arrival order.

        A sequence joins while the batch has room, the KV cache can hold every row's reservation
        (prompt + max_tokens): `kv_fits(rows, longest reservation)`, by default rows x longest
        <= kv_cache_tokens; and its prompt fits the step's `budget` of prompt tokens (default
        max_batch_tokens). A longer prompt joins only a step that prefills nothing else
        (`prefilling` says whether one already does): the engine prefills it in chunks.
        """
        budget = self.max_batch_tokens if budget is None else budget
        kv_fits = kv_fits or (lambda rows, longest: rows * longest <= self.kv_cache_tokens)
        admitted: list[Sequence] = []
        longest = max((s.reserved_tokens for s in self.running), default=0)
        with self._wake:
            while self._waiting and len(self.running) + len(admitted) < self.max_batch_size:
                candidate = self._waiting[0]
                prompt = len(candidate.request.prompt_token_ids)
                if prompt > budget and (admitted or prefilling):
                    break
                rows = len(self.running) + len(admitted) + 1
                if not kv_fits(rows, max(longest, candidate.reserved_tokens)):
                    break
                self._waiting.popleft()
                admitted.append(candidate)
                budget = max(0, budget - prompt)
                longest = max(longest, candidate.reserved_tokens)
        return admitted

    def stats(self, weight_bytes: int = 0) -> EngineStats:
        return EngineStats(waiting=len(self._waiting), running=len(self.running),
                           kv_cache_used_tokens=self.kv_used_tokens,
                           kv_cache_capacity_tokens=self.kv_cache_tokens, weight_bytes=weight_bytes)

    @staticmethod
    def publish(events: list[tuple[Sequence, TokenEvent | BaseException]]) -> None:
        """Deliver a step's events: one thread hop per event loop, not one per token."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for sequence, event in events:
            by_loop.setdefault(sequence.loop, []).append((sequence.queue, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the client's loop is gone; nobody is listening
                pass


def _put_all(items) -> None:
    for queue, event in items:
        queue.put_nowait(event)


class ScheduledEngine:
    """The protocol methods of an engine whose worker thread drains a BatchScheduler."""

    _scheduler: BatchScheduler | None = None
    _worker: threading.Thread | None = None
    _tokenizer = None
    _eos_ids: frozenset[int] = frozenset()

    def __init__(self):
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        return self._scheduler.stream(request, self._tokenizer, self._eos_ids)

    def cancel(self, request_id: str) -> None:
        if self._scheduler:
            self._scheduler.cancel(request_id)

    def close(self) -> None:
        """Stop serving; every stream still open ends with EngineUnavailable."""
        if self._scheduler:
            self._scheduler.close()
        if self._worker:
            self._worker.join(timeout=30)
        if self._scheduler:
            self._scheduler.fail_all(EngineUnavailable(SHUTTING_DOWN))
        self._ready.clear()
