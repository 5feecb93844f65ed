"""The built-in engine: a transformers causal LM under our own iteration-level scheduler.

One worker thread owns the model. Each iteration it drops cancelled rows, admits waiting requests
(scheduler.py) and runs one packed step (packed_step.py): a token for every decoding row and chunks
of the prompts being prefilled, side by side without padding, their KV written in place into each
row's slot (slot_cache.py, ragged_attention.py); rows leave as soon as they finish (continuous
batching). Each request samples with its own parameters and seed, so its output does not depend on
its batch mates.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..config import MemorySection, SchedulerSection
from ..quantize import QuantizationPlan, weight_bytes
from .base import (EngineStats, EngineUnavailable, GenerationRequest, ModelLoadError, RequestFailed,
                   SamplingParams)
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
        self._cache = None  # SlotCache of the running rows
        self._mla = {}  # absorbed-attention weights per layer (DeepSeek's MLA)
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
        from .slot_cache import SlotCache

        self._use_packed_attention()
        self._cache = SlotCache(kv_tokens, self._scheduler_config.max_batch_size,
                                getattr(self._model.config, "kv_lora_rank", None) if self._mla else None)
        self._warm_up()
        self._worker = threading.Thread(target=self._serve_forever, name="engine", daemon=True)
        self._worker.start()
        self._ready.set()
        log.info("serving %s on %s (%s/%s): %.1f MB of weights, KV cache %d tokens",
                 self.model_name, self._device, self.quantization.mode, self.quantization.method,
                 self._weight_bytes / 1e6, kv_tokens)

    @property
    def _device(self):
        return self._model.device

    def _use_packed_attention(self) -> None:
        """Route the model's attention through ragged_attention (sdpa outside our steps)."""
        import torch

        from . import ragged_attention

        ragged_attention.register()
        try:
            self._model.set_attn_implementation(ragged_attention.ATTENTION)
        except (ValueError, KeyError) as exc:
            raise ModelLoadError(f"{self.model_dir}: the transformers engine cannot batch this model's "
                                 f"attention ({exc}); serve it with engine: vllm") from exc
        self._mla = ragged_attention.mla_weights(self._model)
        self._no_mask = torch.zeros((1, 1, 1, 1), device=self._device)  # steps need none; skips HF's

    def _warm_up(self) -> None:
        """One packed step of one token, so a model our attention cannot serve fails at load."""
        import torch

        from .packed_step import PackedStep

        probe = Sequence(GenerationRequest("warm-up", [self._tokenizer.bos_token_id or 0], SamplingParams(1)),
                         None, None, None, frozenset())
        probe.slot = self._cache.acquire()
        self._cache.reserve(1, 1)
        try:
            with torch.no_grad():
                self._forward(PackedStep([], [(probe, 1)]))
        except NotImplementedError as exc:
            raise ModelLoadError(f"{self.model_dir}: {exc}") from exc
        finally:
            self._cache.release(probe.slot)

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
                log.exception("engine step failed")  # a bug of ours, not a request's: fail what runs
                self._fail(scheduler.running, RequestFailed(f"the engine failed on this request: {exc}"))

    def _device_failed(self, exc: Exception) -> None:
        """The device is unusable: stop serving, fail every request, ask for a restart."""
        log.critical("the device failed (%s); the engine stops and the service must restart", exc)
        self.failure = f"the device failed ({exc}); the service restarts"
        self._ready.clear()
        self._scheduler.close(self.failure)
        if self.on_fatal is not None:
            self.on_fatal(self.failure)
        self._scheduler.fail_all(EngineUnavailable(self.failure))

    def _step(self) -> None:
        """Drop cancelled rows, admit waiting ones, run one packed step (decode tokens + prompt chunks)."""
        from .packed_step import PackedStep
        from .sampling import make_generator

        scheduler = self._scheduler
        scheduler.publish([(s, s.cancelled_event()) for s in scheduler.take_cancelled()])
        self._drop_finished()
        step, budget = PackedStep.plan(scheduler.running, scheduler.max_batch_tokens)
        joining = scheduler.admit(budget, prefilling=bool(step.chunks), kv_fits=self._kv_fits)
        if joining:
            self._cache.reserve(self._cache.slots_spanned(len(scheduler.running) + len(joining)),
                                max(s.reserved_tokens for s in scheduler.running + joining))
            for sequence in joining:
                sequence.slot = self._cache.acquire()
                sequence.generator = make_generator(sequence.request.sampling, self._device)
                budget = step.add_prompt(sequence, budget)
            scheduler.running.extend(joining)
        if step.tokens:
            events: list = []
            self._run(step, events)
            scheduler.publish(events)
            self._drop_finished()
        scheduler.kv_used_tokens = self._cache.allocated_tokens

    def _kv_fits(self, rows: int, longest: int) -> bool:
        """What the cache would really allocate for `rows` rows of `longest` reserved tokens fits."""
        return self._cache.slots_spanned(rows) * longest <= self._scheduler.kv_cache_tokens

    def _run(self, step, events: list) -> None:
        """Run `step`; should it fail, its decode rows and each prompt chunk alone, so that only the
        culprits fail (a failed unit's rows get RequestFailed)."""
        try:
            logits = self._forward(step)
        except Exception as exc:
            if device_broken(exc):
                raise
            units = step.units()
            if len(units) > 1:
                for unit in units:
                    self._run(unit, events)
                return
            rows = step.decoding + [sequence for sequence, _ in step.chunks]
            log.warning("a step of %s failed: %s", ", ".join(s.request_id for s in rows), exc)
            failure = RequestFailed(f"the engine failed on this request: {exc}")
            for sequence in rows:
                sequence.finished = True
                events.append((sequence, failure))
            return
        sampling = step.sampling
        step.advance()
        self._accept(sampling, self._sample(logits, sampling), events)

    def _forward(self, step):
        """Logits [rows sampled, vocabulary] of one packed step; writes its tokens' KV in place."""
        ids, positions, keep, layout = step.inputs(self._cache, self._mla, self._device)
        output = self._model(input_ids=ids, position_ids=positions, attention_mask=self._no_mask, cache=self._cache,
                             use_cache=False, logits_to_keep=keep, step=layout)
        return output.logits[0]

    @staticmethod
    def _accept(sequences: list[Sequence], sampled: list, events: list) -> None:
        for sequence, (token, logprob, failure) in zip(sequences, sampled):
            if failure is None:
                sequence.next_token = token
                events.append((sequence, sequence.accept(token, logprob)))
            else:
                sequence.finished = True
                events.append((sequence, failure))

    def _fail(self, sequences: list[Sequence], failure: Exception) -> None:
        for sequence in sequences:
            sequence.finished = True
        self._scheduler.publish([(s, failure) for s in sequences])
        self._drop_finished()

    def _drop_finished(self) -> None:
        running = self._scheduler.running
        if all(not s.finished for s in running):
            return
        for sequence in running:
            if sequence.finished and sequence.slot is not None:
                self._cache.release(sequence.slot)
                sequence.slot = None
        self._scheduler.running = [s for s in running if not s.finished]

    def _sample(self, logits, sequences: list[Sequence]) -> list[tuple[int, object, Exception | None]]:
        """(next token, its TokenLogprob or None, the row's failure or None) per row: one argmax for
        the plain greedy rows, per-row penalties and sampling for the others, logprobs for the rows
        that asked. A row whose sampling fails (NaN probabilities) fails alone."""
        import torch

        from .sampling import apply_penalties, sample_next_token, token_logprob

        tokens = logits.max(dim=-1).indices.tolist()  # argmax; max is several times faster on CPU
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
