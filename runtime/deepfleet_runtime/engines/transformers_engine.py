"""The built-in engine: a transformers causal LM with our own decode loop (CPU and GPU).

One worker thread owns the model and runs requests one after another; each request streams its
tokens back to the event loop through an asyncio queue. Closing the stream cancels the request
between decode steps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator, Callable

from .base import GenerationRequest, TokenEvent
from .detokenize import IncrementalDecoder
from .loading import ModelLoadError, load_model_and_tokenizer
from .sampling import make_generator, sample_next_token

log = logging.getLogger(__name__)

__all__ = ["ModelLoadError", "TransformersEngine"]


class TransformersEngine:
    """Serves one model directory with transformers."""

    def __init__(self, model_name: str, model_dir: Path, device: str = "cpu", dtype: str = "float32",
                 keys_dir: Path | None = None):
        self.model_name = model_name
        self.model_dir = Path(model_dir)
        self.keys_dir = keys_dir
        self.device_name = device
        self.dtype_name = dtype
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._model = None
        self._tokenizer = None
        self._eos_ids: set[int] = set()
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def load(self) -> None:
        """Load tokenizer and weights (engines/loading.py), then run one warm-up step."""
        import torch

        self._model, self._tokenizer = load_model_and_tokenizer(self.model_dir, self.dtype_name,
                                                                self.device_name, self.keys_dir)
        self._eos_ids = _eos_token_ids(self._model, self._tokenizer)
        with torch.no_grad():
            self._model(input_ids=torch.tensor([[self._tokenizer.bos_token_id or 0]], device=self._device))
        self._ready.set()
        log.info("loaded %s from %s on %s", self.model_name, self.model_dir, self.device_name)

    @property
    def _device(self):
        return self._model.device

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return list(
            self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )

    def encode_text(self, text: str) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=True)
        bos = self._tokenizer.bos_token_id
        return ids if bos is None or ids[:1] == [bos] else [bos, *ids]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        loop.run_in_executor(self._executor, self._run_guarded, request, emit, cancelled)
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:
            cancelled.set()

    def _run_guarded(self, request: GenerationRequest, emit: Callable, cancelled: threading.Event) -> None:
        try:
            self._run(request, emit, cancelled)
        except BaseException as exc:  # surfaced to the awaiting request, never lost in the thread
            log.exception("generation %s failed", request.request_id)
            emit(exc)

    def _run(self, request: GenerationRequest, emit: Callable, cancelled: threading.Event) -> None:
        import torch

        params = request.sampling
        decoder = IncrementalDecoder(self._tokenizer, params.stop)
        generator = make_generator(params, self._device)
        with torch.no_grad():
            if cancelled.is_set():
                return
            output = self._model(
                input_ids=torch.tensor([request.prompt_token_ids], device=self._device), use_cache=True
            )
            for produced in range(1, params.max_tokens + 1):
                if cancelled.is_set():
                    return
                token = sample_next_token(output.logits[0, -1], params, generator)
                if token in self._eos_ids:
                    emit(TokenEvent(decoder.flush(), [token], "stop", produced))
                    return
                delta, stopped = decoder.push(token)
                if stopped:
                    emit(TokenEvent(delta, [token], "stop", produced))
                    return
                if produced == params.max_tokens:
                    emit(TokenEvent(delta + decoder.flush(), [token], "length", produced))
                    return
                emit(TokenEvent(delta, [token], None, produced))
                output = self._model(
                    input_ids=torch.tensor([[token]], device=self._device),
                    cache=output.cache,
                    use_cache=True,
                )


def _eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
