"""Build a tiny random-weight DeepSeek-V3 model (MoE + MLA) with a locally trained tokenizer.

No model hub is needed: the architecture comes from transformers' DeepseekV3Config, the weights
are random (seeded, so the same seed gives the same files), and the byte-level BPE tokenizer is
trained on a small corpus embedded here. The result loads with `from_pretrained` like any
DeepSeek-V3 checkpoint, so the real loading code is exercised end to end.
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


def build_tiny_model(out_dir: Path, seed: int = 0, **shape_overrides) -> Path:
    """Write a tiny DeepSeek-V3 model + tokenizer to `out_dir` atomically; returns `out_dir`.

    The directory appears complete or not at all: files are written to a sibling temporary
    directory that is renamed into place.
    """
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it or choose another --out")
    tokenizer = train_tokenizer()
    shape = {**TINY_SHAPE, **shape_overrides}
    config = DeepseekV3Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "deepfleet-tiny.json").write_text(
            json.dumps({"seed": seed, "shape": shape, "vocab_size": VOCAB_SIZE}, indent=1) + "\n"
        )
        staging.chmod(0o755)
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
