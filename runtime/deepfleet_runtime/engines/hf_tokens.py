"""Prompt ids and marker ids through a Hugging Face tokenizer (transformers and vllm engines)."""

from __future__ import annotations


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of chat messages rendered with the tokenizer's chat template, ready for the answer."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def text_prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a completion prompt, starting with BOS when the model has one."""
    ids = tokenizer.encode(text, add_special_tokens=True)
    bos = tokenizer.bos_token_id
    return ids if bos is None or ids[:1] == [bos] else [bos, *ids]


def think_token_ids(tokenizer) -> tuple[int, int] | None:
    """Ids of <think> and </think> when the vocabulary has them as single tokens."""
    vocab = tokenizer.get_vocab()
    if "<think>" in vocab and "</think>" in vocab:
        return vocab["<think>"], vocab["</think>"]
    return None
