"""The engine interface: what the server asks of any inference engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    stop: tuple[str, ...] = ()
    seed: int | None = None


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


class Engine(Protocol):
    """An inference engine: load once, then stream tokens for many requests."""

    model_name: str

    def load(self) -> None:
        """Load weights and tokenizer and warm up; blocks until the engine can serve."""

    @property
    def ready(self) -> bool:
        """True once load() finished."""

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Prompt token ids for chat messages, rendered with the model's chat template."""

    def encode_text(self, text: str) -> list[int]:
        """Prompt token ids for a plain completion prompt."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream TokenEvents; closing the iterator early cancels the request."""
