"""What the gateway reads from a request body: enough to limit, route and audit it.

The runtime validates requests fully; the gateway checks the fields it relies on (so that a bad
body is refused before it costs a reservation or an upstream call) and refuses what would harm
the layers behind it: bodies that are not JSON objects or nest too deeply, text that is not valid
Unicode, max_tokens beyond the runtime's limit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..schema import TOO_DEEP, too_deeply_nested
from .config import LimitsSection

SAMPLING_FIELDS = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "seed",
                   "n", "stream")
_TOKENS_PER_MESSAGE = 4  # chat template overhead, as an estimate


class BadRequest(Exception):
    """A body the gateway refuses; answered 400 with OpenAI's error schema."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class Inspected:
    model: str
    stream: bool
    include_usage: bool  # the client asked for a usage chunk at the end of the stream
    max_tokens: int  # as asked, else the runtime's default
    prompt: Any  # chat messages (list) or completion prompt (str): what the audit records
    prompt_estimate: int  # tokens, estimated from UTF-8 bytes; settled against real usage later
    params: dict  # sampling parameters as sent, for the audit
    upstream_body: bytes  # what is sent on: the body as received, or with usage requested in streams


def inspect_body(body: bytes, chat: bool, limits: LimitsSection) -> Inspected:
    """Check a completion request body; raise BadRequest naming the problem and the fix."""
    try:
        payload = json.loads(body)
    except ValueError as exc:  # includes bodies that are not valid UTF-8
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
    if not isinstance(payload, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(payload).__name__}")
    if too_deeply_nested(payload):
        raise BadRequest(TOO_DEEP)
    _require_unicode(payload)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string naming the model", "model")
    prompt, prompt_bytes = (_messages(payload) if chat else _prompt(payload))
    max_tokens = _max_tokens(payload, chat, limits)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    options = payload.get("stream_options")
    if options is not None and not (isinstance(options, dict) and isinstance(options.get("include_usage", False), bool)):
        raise BadRequest("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    upstream_body = body
    if stream and not include_usage:  # the gateway needs the token count to settle the key's limits
        upstream_body = json.dumps({**payload, "stream_options": {**(options or {}), "include_usage": True}},
                                   ensure_ascii=False).encode()
    estimate = math.ceil(prompt_bytes / 3) + (_TOKENS_PER_MESSAGE * len(prompt) if chat else 1)
    params = {name: payload[name] for name in SAMPLING_FIELDS if name in payload}
    return Inspected(model, stream, include_usage, max_tokens, prompt, estimate, params, upstream_body)


def _messages(payload: dict) -> tuple[list, int]:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...}", "messages")
    size = 0
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"'{where}' must be an object with a string 'role'", where)
        content = message.get("content")
        if isinstance(content, str):
            size += len(content.encode())
        elif isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
            size += sum(len(p["text"].encode()) for p in content)
        else:
            raise BadRequest(f"'{where}.content' must be a string or a list of text parts", f"{where}.content")
    return messages, size


def _prompt(payload: dict) -> tuple[str, int]:
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string", "prompt")
    return prompt, len(prompt.encode())


def _max_tokens(payload: dict, chat: bool, limits: LimitsSection) -> int:
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    for name in names:
        value = payload.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limits.max_tokens:
            raise BadRequest(f"'{name}' must be a whole number from 1 to {limits.max_tokens}", name)
        return value
    return limits.default_max_tokens


def _require_unicode(value: Any) -> None:
    """Refuse strings with lone surrogates (\\ud800 escapes): they are not text and break tokenizers."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise BadRequest("the request contains a lone UTF-16 surrogate (like \\ud800), which is "
                                 "not valid Unicode; send well-formed text") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
