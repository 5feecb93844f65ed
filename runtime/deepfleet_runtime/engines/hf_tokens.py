"""Prompt ids and marker ids through a Hugging Face tokenizer (transformers and vllm engines)."""

from __future__ import annotations

from ..tinymodel import CHAT_TEMPLATE as DEEPSEEK_CHAT_TEMPLATE


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of chat messages rendered with the tokenizer's chat template (DeepSeek's when it has none)."""
    template = None if tokenizer.chat_template else DEEPSEEK_CHAT_TEMPLATE
    return list(tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def text_prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a completion prompt, starting with BOS when the model has one."""
    ids = tokenizer.encode(text, add_special_tokens=True)
    bos = tokenizer.bos_token_id
    return ids if bos is None or ids[:1] == [bos] else [bos, *ids]


def think_token_ids(tokenizer) -> tuple[int, int] | None:
    """Ids of <think> and </think> when they are special tokens that decode to nothing (then the
    reasoning split must find them by id); None when their text survives decoding, as in R1."""
    vocab = tokenizer.get_vocab()
    if "<think>" not in vocab or "</think>" not in vocab:
        return None
    ids = vocab["<think>"], vocab["</think>"]
    return ids if tokenizer.decode([ids[1]], skip_special_tokens=True) == "" else None
