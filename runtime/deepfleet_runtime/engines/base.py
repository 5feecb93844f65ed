"""The engine interface: what the server asks of any inference engine.

load() once; then generate() submits a request and streams TokenEvents; cancel() (or closing the
stream) ends a request between steps; stats() reports load for /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


class EngineConfigError(ValueError):
    """An engine cannot start with this configuration; the message names the fix."""


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message names the path and the cause."""


class RequestFailed(RuntimeError):
    """The engine failed on this request (and only on it); the others keep being served."""


class EngineUnavailable(RuntimeError):
    """The engine cannot serve now: shutting down, or its device failed (the service restarts)."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep generating past the end-of-sequence token (benchmarks)
    presence_penalty: float = 0.0  # OpenAI's: minus this for every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: minus this times how often it was generated
    min_p: float = 0.0  # drop tokens less likely than min_p x the most likely one
    logprobs: int | None = None  # None: none; k: each token's logprob and its k most likely rivals

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model, with its most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams


@dataclass
class TokenEvent:
    """One step of a generation: new text (possibly empty), and the finish reason on the last."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    completion_tokens: int = 0  # total generated so far
    logprobs: list[TokenLogprob] | None = None  # per token of token_ids, when the request asked


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of an engine's load."""

    waiting: int = 0  # requests queued, not yet started
    running: int = 0  # requests in the running batch
    kv_cache_used_tokens: int = 0  # KV slots in use (padding included)
    kv_cache_capacity_tokens: int = 0  # 0 when the engine does not say
    weight_bytes: int = 0  # bytes of the loaded weights (after quantisation)


class Engine(Protocol):
    """An inference engine: load once, then stream tokens for many requests."""

    model_name: str
    parameters: frozenset[str]  # the schema's OPTIONAL_PARAMETERS this engine implements
    context_tokens: int | None  # the model's context window (prompt + output); None when unknown

    def load(self) -> None:
        """Load weights and tokenizer and warm up; blocks until the engine can serve."""

    @property
    def ready(self) -> bool:
        """True while the engine can serve (loaded, and for a supervised child: up)."""

    @property
    def reasoning_token_ids(self) -> tuple[int, int] | None:
        """Token ids of <think> and </think> when they are special tokens (decode to nothing), else None."""

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Prompt token ids for chat messages, rendered with the model's chat template."""

    def encode_text(self, text: str) -> list[int]:
        """Prompt token ids for a plain completion prompt."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Submit a request and stream its TokenEvents; closing the iterator early cancels it."""

    def cancel(self, request_id: str) -> None:
        """End a running or queued request at the next step (its stream ends with "cancelled")."""

    def stats(self) -> EngineStats:
        """Current load, for /metrics."""

    def close(self) -> None:
        """Release the model and any child process."""
