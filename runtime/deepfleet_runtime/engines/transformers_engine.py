"""The built-in engine: a transformers causal LM under our own iteration-level scheduler.

One worker thread owns the model. Each iteration it drops cancelled rows, prefills the requests
the scheduler admits (together, left-padded) and merges them into the running batch, then runs one
decode step for every row; rows leave as soon as they finish (continuous batching). Each request
samples with its own parameters and seed, so its output does not depend on its batch mates.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..config import MemorySection, SchedulerSection
from ..quantize import QuantizationPlan, weight_bytes
from .base import EngineStats, EngineUnavailable, ModelLoadError, RequestFailed
from .failures import device_broken
from .hf_tokens import chat_prompt_ids, text_prompt_ids, think_token_ids
from .loading import load_model_and_tokenizer
from .scheduler import BatchScheduler, ScheduledEngine, Sequence

log = logging.getLogger(__name__)


class TransformersEngine(ScheduledEngine):
    """Serves one transformers model directory with continuous batching."""

    parameters = frozenset({"presence_penalty", "frequency_penalty", "min_p", "logprobs", "top_logprobs"})

    def __init__(self, model_name: str, model_dir: Path, device: str = "cpu", dtype: str = "float32",
                 quantization: QuantizationPlan = QuantizationPlan("none", "none"),
                 scheduler: SchedulerSection = SchedulerSection(), memory: MemorySection = MemorySection(),
                 keys_dir: Path | None = None):
        super().__init__()
        self.model_name = model_name
        self.model_dir = Path(model_dir)
        self.keys_dir = keys_dir  # model keys, for an encrypted release
        self.device_name = device
        self.dtype_name = dtype
        self.quantization = quantization
        self._scheduler_config = scheduler
        self._memory = memory
        self._model = None
        self._batch = None  # PaddedBatch of the running rows
        self._weight_bytes = 0
        self.failure: str | None = None  # why the engine stopped for good (a device failure)
        self.on_fatal = None  # called with `failure` once the engine stopped for good

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model(self):
        return self._model

    @property
    def context_tokens(self) -> int | None:
        """The model's context window: max_position_embeddings of its config."""
        return getattr(self._model.config, "max_position_embeddings", None) if self._model else None

    @property
    def reasoning_token_ids(self) -> tuple[int, int] | None:
        return think_token_ids(self._tokenizer) if self._tokenizer else None

    def load(self) -> None:
        """Load (and quantise) the weights, size the KV cache, warm up, start the worker."""
        model, tokenizer = load_model_and_tokenizer(self.model_dir, self.dtype_name, self.device_name,
                                                    self.quantization, self.keys_dir)
        self.start(model, tokenizer)

    def start(self, model, tokenizer) -> None:
        """Serve an already loaded model (load() calls this; so do benchmarks that build weights in memory)."""
        import torch

        self._model, self._tokenizer = model, tokenizer
        self._eos_ids = frozenset(_eos_token_ids(self._model, self._tokenizer))
        self._weight_bytes = weight_bytes(self._model)
        kv_tokens = self._scheduler_config.kv_cache_tokens or self._derived_kv_tokens()
        self._scheduler = BatchScheduler(self._scheduler_config.max_batch_size,
                                         self._scheduler_config.max_batch_tokens, kv_tokens)
        with torch.no_grad():
            self._model(input_ids=torch.tensor([[self._tokenizer.bos_token_id or 0]], device=self._device))
        self._worker = threading.Thread(target=self._serve_forever, name="engine", daemon=True)
        self._worker.start()
        self._ready.set()
        log.info("serving %s on %s (%s/%s): %.1f MB of weights, KV cache %d tokens",
                 self.model_name, self._device, self.quantization.mode, self.quantization.method,
                 self._weight_bytes / 1e6, kv_tokens)

    @property
    def _device(self):
        return self._model.device

    def _derived_kv_tokens(self) -> int:
        """KV slots that fit the memory budget: GPU memory fraction, or memory.cpu_kv_cache_bytes."""
        import torch

        from ..planner import kv_bytes_per_token

        element = torch.empty((), dtype=self._model.dtype).element_size()
        per_token = kv_bytes_per_token(self._model.config.to_dict(), element)
        if self._device.type == "cuda":
            total = torch.cuda.get_device_properties(self._device).total_memory
            budget = total * self._memory.gpu_memory_fraction - torch.cuda.memory_allocated(self._device)
            budget -= 0.1 * total  # activations and allocator slack
        else:
            budget = self._memory.cpu_kv_cache_bytes
        if budget < per_token * 256:
            raise ModelLoadError(f"only {budget / 2**20:.0f} MiB are left for the KV cache after the weights; "
                                 "raise memory.gpu_memory_fraction (inventory: runtime_gpu_memory_fraction), "
                                 "quantise (quantization.mode int8/int4: runtime_quantization) or set "
                                 "scheduler.kv_cache_tokens (runtime_kv_cache_tokens)")
        return int(budget // per_token)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return chat_prompt_ids(self._tokenizer, messages)

    def encode_text(self, text: str) -> list[int]:
        return text_prompt_ids(self._tokenizer, text)

    def stats(self) -> EngineStats:
        return self._scheduler.stats(self._weight_bytes) if self._scheduler else EngineStats()

    # --- the worker thread --------------------------------------------------------------------------

    def _serve_forever(self) -> None:
        import torch

        scheduler = self._scheduler
        while not scheduler.closed:
            if not scheduler.wait_for_work():
                continue
            try:
                with torch.no_grad():
                    self._step()
            except Exception as exc:
                if device_broken(exc):
                    self._device_failed(exc)
                    return
                # a decode step cannot be split by row: its rows fail, the engine keeps serving
                log.exception("decode step failed")
                failure = RequestFailed(f"the engine failed on this request: {exc}")
                scheduler.publish([(s, failure) for s in scheduler.running])
                scheduler.running, self._batch = [], None
                scheduler.kv_used_tokens = 0

    def _device_failed(self, exc: Exception) -> None:
        """The device is unusable: stop serving, fail every request, ask for a restart."""
        log.critical("the device failed (%s); the engine stops and the service must restart", exc)
        self.failure = f"the device failed ({exc}); the service restarts"
        self._ready.clear()
        self._scheduler.close(self.failure)
        if self.on_fatal is not None:
            self.on_fatal(self.failure)
        self._scheduler.fail_all(EngineUnavailable(self.failure))
        self._batch = None

    def _step(self) -> None:
        scheduler = self._scheduler
        cancelled = [(s, s.cancelled_event()) for s in scheduler.take_cancelled()]
        scheduler.publish(cancelled)
        self._drop_finished()
        joining = scheduler.admit()
        if joining:
            events: list = []
            self._join(joining, events)
            scheduler.publish(events)  # first tokens go out before the next decode step
            self._drop_finished()
        if scheduler.running:
            events = []
            self._decode(events)
            scheduler.publish(events)
            self._drop_finished()
        scheduler.kv_used_tokens = self._batch.rows * self._batch.columns if self._batch else 0

    def _join(self, joining: list[Sequence], events: list) -> None:
        """Prefill `joining` together; should that fail, each alone, so only the culprits fail."""
        try:
            batch, sampled = self._prefill(joining)
        except Exception as exc:
            if device_broken(exc):
                self._scheduler.running.extend(joining)  # so that they fail with the others
                raise
            if len(joining) > 1:
                for sequence in joining:
                    self._join([sequence], events)
                return
            log.warning("prefill of %s failed: %s", joining[0].request_id, exc)
            joining[0].finished = True
            events.append((joining[0], RequestFailed(f"the engine failed on this request: {exc}")))
            return
        self._scheduler.running.extend(joining)
        self._accept(joining, sampled, events)
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.merge(batch)

    def _prefill(self, joining: list[Sequence]):
        """(PaddedBatch of `joining`, their sampled first tokens); touches nothing shared."""
        import torch
        from transformers import DynamicCache

        from .padded_batch import PaddedBatch
        from .sampling import make_generator

        for sequence in joining:
            sequence.generator = make_generator(sequence.request.sampling, self._device)
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        ids, mask, positions = PaddedBatch.left_padded_inputs(
            [s.request.prompt_token_ids for s in joining], pad, self._device)
        output = self._model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             cache=DynamicCache(config=self._model.config), use_cache=True, logits_to_keep=1)
        sampled = self._sample(output.logits[:, -1], joining)
        tokens = torch.tensor([token for token, _, _ in sampled], device=self._device)
        batch = PaddedBatch(output.cache, mask, mask.sum(dim=1), tokens)
        batch.zero_padding()
        return batch, sampled

    @staticmethod
    def _accept(sequences: list[Sequence], sampled: list, events: list) -> None:
        for sequence, (token, logprob, failure) in zip(sequences, sampled):
            if failure is None:
                events.append((sequence, sequence.accept(token, logprob)))
            else:
                sequence.finished = True
                events.append((sequence, failure))

    def _decode(self, events: list) -> None:
        import torch

        batch = self._batch
        ids, mask, positions = batch.decode_inputs()
        output = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=batch.cache,
                             use_cache=True)
        running = self._scheduler.running
        sampled = self._sample(output.logits[:, -1], running)
        batch.next_tokens = torch.tensor([token for token, _, _ in sampled], device=self._device)
        self._accept(running, sampled, events)

    def _drop_finished(self) -> None:
        running = self._scheduler.running
        keep = [i for i, s in enumerate(running) if not s.finished]
        if len(keep) == len(running):
            return
        self._scheduler.running = [running[i] for i in keep]
        if keep:
            self._batch.keep(keep)
        else:
            self._batch = None

    def _sample(self, logits, sequences: list[Sequence]) -> list[tuple[int, object, Exception | None]]:
        """(next token, its TokenLogprob or None, the row's failure or None) per row: one argmax for
        the plain greedy rows, per-row penalties and sampling for the others, logprobs for the rows
        that asked. A row whose sampling fails (NaN probabilities) fails alone."""
        import torch

        from .sampling import apply_penalties, sample_next_token, token_logprob

        tokens = torch.argmax(logits, dim=-1).tolist()
        results = []
        for row, sequence in enumerate(sequences):
            params = sequence.request.sampling
            try:
                if params.temperature > 0 or params.penalised:
                    row_logits = logits[row]
                    if params.penalised:
                        if sequence.counts is None:
                            sequence.counts = torch.zeros(logits.shape[-1], device=logits.device)
                        row_logits = apply_penalties(row_logits, sequence.counts, params)
                    tokens[row] = sample_next_token(row_logits, params, sequence.generator)
                if sequence.counts is not None:
                    sequence.counts[tokens[row]] += 1
                logprob = None
                if params.logprobs is not None:
                    logprob = token_logprob(logits[row], tokens[row], params.logprobs, self._token_text)
            except RuntimeError as exc:
                if device_broken(exc):
                    raise
                log.warning("sampling for %s failed: %s", sequence.request_id, exc)
                results.append((0, None, RequestFailed(f"the engine failed on this request: {exc}")))
                continue
            results.append((tokens[row], logprob, None))
        return results

    def _token_text(self, token: int) -> str:
        return self._tokenizer.decode([token])


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
