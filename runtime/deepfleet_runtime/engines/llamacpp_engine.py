"""The llama.cpp engine (CPU and edge): a GGUF file (q8_0, q4_0, q2_k, …) through llama-cpp-python.

llama.cpp runs one sequence at a time here, so the shared BatchScheduler is used with a batch of
one: it queues requests, applies the finish rules and delivers events, exactly as for the
transformers engine. The chat template and tokenizer come from the GGUF file itself.

An encrypted release holding one .gguf file is decrypted into private memory (modelstore.tmpfs),
read by llama.cpp into its own memory (no mmap), and wiped at once: no plaintext stays behind.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..config import LlamaCppSection
from ..modelstore import ModelStoreError, is_release
from ..modelstore.tmpfs import decrypted_copy
from .base import EngineStats, ModelLoadError
from .scheduler import BatchScheduler, ScheduledEngine, Sequence

log = logging.getLogger(__name__)


class _GgufTokenizer:
    """The decode() that IncrementalDecoder needs, over llama.cpp's own vocabulary."""

    def __init__(self, llama):
        self._llama = llama

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._llama.detokenize(ids, special=not skip_special_tokens).decode("utf-8", errors="replace")


class LlamaCppEngine(ScheduledEngine):
    """Serves one GGUF file with llama-cpp-python."""

    def __init__(self, model_name: str, model_path: Path, settings: LlamaCppSection = LlamaCppSection(),
                 keys_dir: Path | None = None):
        super().__init__()
        self.model_name = model_name
        self.model_path = Path(model_path)  # a .gguf file, or an encrypted release of a directory holding one
        self.settings = settings
        self.keys_dir = keys_dir
        self._llama = None
        self._formatter = None
        self._weight_bytes = 0

    @property
    def reasoning_token_ids(self) -> tuple[int, int] | None:
        ids = [self._llama.tokenize(marker.encode(), add_bos=False, special=True) for marker in ("<think>", "</think>")]
        return (ids[0][0], ids[1][0]) if all(len(i) == 1 for i in ids) else None

    def load(self) -> None:
        """Open the GGUF file, read its chat template, start the worker."""
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise ModelLoadError(f"the llamacpp engine needs llama-cpp-python ({exc}); install "
                                 "deepfleet-runtime[llamacpp]") from None
        if is_release(self.model_path):
            try:
                with decrypted_copy(self.model_path, self.keys_dir) as files:
                    self._open(Llama, _single_gguf(files, self.model_path), use_mmap=False)
            except ModelStoreError as exc:
                raise ModelLoadError(f"refusing to load {self.model_path}: {exc}") from None
        elif self.model_path.is_file():
            self._open(Llama, self.model_path, use_mmap=True)
        else:
            raise ModelLoadError(f"{self.model_path} does not exist; convert a model with "
                                 "`deepfleet-runtime convert-gguf MODEL_DIR --out FILE.gguf`")
        metadata = self._llama.metadata
        template = metadata.get("tokenizer.chat_template")
        if template:
            vocab = self._llama
            self._formatter = Jinja2ChatFormatter(
                template, eos_token=_token_text(vocab, vocab.token_eos()), bos_token=_token_text(vocab, vocab.token_bos()))
        self._tokenizer = _GgufTokenizer(self._llama)
        self._eos_ids = frozenset({self._llama.token_eos()})
        self._scheduler = BatchScheduler(1, self.settings.n_ctx, self.settings.n_ctx)
        self._worker = threading.Thread(target=self._serve_forever, name="llamacpp", daemon=True)
        self._worker.start()
        self._ready.set()
        log.info("loaded %s from %s (%s)", self.model_name, self.model_path, metadata.get("general.file_type"))

    def _open(self, llama_class, gguf: Path, use_mmap: bool) -> None:
        try:
            self._llama = open_llama(llama_class, gguf, n_ctx=self.settings.n_ctx, n_batch=self.settings.n_batch,
                                     n_threads=self.settings.n_threads or None, use_mmap=use_mmap, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"llama.cpp cannot load {self.model_path}: {exc}") from exc
        self._weight_bytes = gguf.stat().st_size

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if self._formatter is None:
            raise ModelLoadError(f"{self.model_path} carries no chat template; use /v1/completions")
        prompt = self._formatter(messages=messages).prompt
        return self._llama.tokenize(prompt.encode(), add_bos=False, special=True)

    def encode_text(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode(), add_bos=True, special=False)

    def stats(self) -> EngineStats:
        if not self._scheduler:
            return EngineStats()
        return self._scheduler.stats(self._weight_bytes)

    def _serve_forever(self) -> None:
        scheduler = self._scheduler
        while not scheduler.closed:
            if not scheduler.wait_for_work():
                continue
            scheduler.take_cancelled()  # drops cancelled requests still in the queue
            for sequence in scheduler.admit():
                scheduler.running = [sequence]
                try:
                    self._run(sequence)
                except Exception as exc:
                    log.exception("generation %s failed", sequence.request_id)
                    scheduler.publish([(sequence, exc)])
                scheduler.running, scheduler.kv_used_tokens = [], 0

    def _run(self, sequence: Sequence) -> None:
        params = sequence.request.sampling
        prompt = sequence.request.prompt_token_ids
        if params.seed is not None:
            self._llama.set_seed(params.seed)
        tokens = self._llama.generate(prompt, top_k=params.top_k, top_p=params.top_p, min_p=0.0,
                                      temp=params.temperature, repeat_penalty=1.0, reset=True)
        for token in tokens:
            if any(s is sequence for s in self._scheduler.take_cancelled()):
                self._scheduler.publish([(sequence, sequence.cancelled_event())])
                return
            event = sequence.accept(token)
            self._scheduler.kv_used_tokens = len(prompt) + sequence.produced
            self._scheduler.publish([(sequence, event)])
            if sequence.finished:
                return


def _single_gguf(directory: Path, release: Path) -> Path:
    found = sorted(directory.rglob("*.gguf"))
    if len(found) != 1:
        raise ModelLoadError(f"{release}: the llamacpp engine serves a release holding exactly one .gguf file; it "
                             f"holds {len(found)}; encrypt a directory with one (deepfleet-runtime convert-gguf)")
    return found[0]


def _token_text(llama, token: int) -> str:
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace")


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has Intel AMX (Sapphire Rapids and newer), read from the kernel's CPU flags."""
    try:
        return "amx_int8" in cpuinfo.read_text().split()
    except OSError:
        return False


def open_llama(llama_class, gguf: Path, **kwargs):
    """`llama_class(gguf, **kwargs)`, without llama.cpp's extra weight buffer types on AMX CPUs.

    llama.cpp's AMX buffer type aborts the whole process on DeepSeek's graph while reserving it
    (`GGML_ASSERT(*cur_backend_id != -1)` in ggml_backend_sched_split_graph; llama-cpp-python 0.3.36
    built natively on a Sapphire Rapids Xeon): there the weights stay in plain CPU buffers
    (llama_model_params.use_extra_bufts = false), which llama-cpp-python's Llama() offers no argument for.
    """
    if not cpu_has_amx():
        return llama_class(str(gguf), **kwargs)
    import llama_cpp.llama_cpp as bindings

    default_params = bindings.llama_model_default_params

    def without_extra_buffers():
        params = default_params()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = without_extra_buffers
    try:
        return llama_class(str(gguf), **kwargs)
    finally:
        bindings.llama_model_default_params = default_params
