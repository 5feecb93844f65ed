"""An engine that replays scripted token ids through a real tokenizer and the real decoder.

The server, the reasoning split and the detokenizer see exactly what a model's tokens would give
them; only the choice of tokens is fixed, so tests can make a random-weight model "say" `</think>`.
"""

from __future__ import annotations

import asyncio

from deepfleet_runtime.engines.base import GenerationRequest
from deepfleet_runtime.engines.detokenize import IncrementalDecoder
from deepfleet_runtime.engines.hf_tokens import chat_prompt_ids, text_prompt_ids, think_token_ids
from deepfleet_runtime.engines.scheduler import Sequence


class ScriptedEngine:
    """Serves `model_name`; every request generates `script` (token ids), one event per token."""

    def __init__(self, model_name: str, tokenizer, script: list[int], context_tokens: int = 4096):
        self.model_name, self.tokenizer, self.script = model_name, tokenizer, script
        self.context_tokens = context_tokens
        self.ready = True
        self.submitted: list[GenerationRequest] = []  # what reached the engine

    @property
    def reasoning_token_ids(self):
        return think_token_ids(self.tokenizer)

    def load(self) -> None:
        pass

    def encode_chat(self, messages):
        return chat_prompt_ids(self.tokenizer, messages)

    def encode_text(self, text):
        return text_prompt_ids(self.tokenizer, text)

    async def generate(self, request: GenerationRequest):
        self.submitted.append(request)
        sequence = Sequence(request, IncrementalDecoder(self.tokenizer, request.sampling.stop),
                            asyncio.get_running_loop(), asyncio.Queue(), frozenset({self.tokenizer.eos_token_id}))
        for token in self.script:
            event = sequence.accept(token)
            yield event
            if event.finish_reason:
                return

    def cancel(self, request_id):
        pass

    def stats(self):
        from deepfleet_runtime.engines.base import EngineStats
        return EngineStats()

    def close(self):
        pass
