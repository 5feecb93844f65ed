"""OpenAI-compatible request schemas (validated) and the error body."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Request parameters of the OpenAI API (and vLLM's extensions) that not every engine implements,
# with the engines of this runtime that do. A request that sets one its engine lacks gets a 400
# naming it: never a 200 that silently ignored it. Fields not listed here (user, metadata, ...)
# do not change the output and are ignored, as OpenAI does.
OPTIONAL_PARAMETERS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("presence_penalty", "frequency_penalty", "min_p", "logprobs", "top_logprobs"),
                    ("transformers",)),
    **dict.fromkeys(("response_format", "tools", "tool_choice", "parallel_tool_calls", "functions",
                     "function_call", "logit_bias", "repetition_penalty", "min_tokens", "best_of", "echo",
                     "stop_token_ids", "bad_words", "prompt_logprobs", "structured_outputs", "guided_json",
                     "guided_regex", "guided_choice", "guided_grammar", "use_beam_search", "length_penalty"),
                    ("vllm",)),
    **dict.fromkeys(("suffix", "prediction", "audio", "modalities", "web_search_options"), ()),
}
# Values that ask for nothing: sending them is the same as leaving the parameter out.
_NEUTRAL = (False, 0.0, [], {}, "none", {"type": "text"})


class _Request(BaseModel):
    # Unknown fields are kept (not validated) so that OPTIONAL_PARAMETERS can be checked by name.
    model_config = ConfigDict(extra="allow")

    def requested_options(self) -> list[str]:
        """The OPTIONAL_PARAMETERS this request sets to something other than a neutral value."""
        values: dict[str, Any] = {**dict(self), **(self.model_extra or {})}
        values["logprobs"] = self.requested_logprobs()  # completions' logprobs=0 still asks for some
        values.pop("top_logprobs", None)  # part of logprobs
        return [name for name in OPTIONAL_PARAMETERS
                if name in values and not any(values[name] == neutral and type(values[name]) is type(neutral)
                                              for neutral in _NEUTRAL) and values[name] is not None]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingFields(_Request):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is supported")
    ignore_eos: bool = False  # vLLM's extension: generate past the end-of-sequence token
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)  # vLLM's extension

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def requested_logprobs(self) -> int | None:
        """None for no logprobs, else how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_SamplingFields):
    prompt: str
    logprobs: int | None = Field(default=None, ge=0, le=5)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def requested_logprobs(self) -> int | None:
        return self.logprobs


MAX_JSON_DEPTH = 32  # request bodies are a few levels deep (messages -> parts); deeper is refused
TOO_DEEP = (f"the request body is nested too deeply (more than {MAX_JSON_DEPTH} levels of arrays and "
            "objects); send a flatter body")


def too_deeply_nested(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests arrays/objects more than `limit` levels (checked without
    recursion, so any depth json.loads accepts is safe to check)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI error schema."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
