"""A small client for a deepfleet gateway that does what the FAQ advises: it honours Retry-After
and otherwise backs off exponentially (with jitter) on 429, 5xx and connection failures. Given
several gateways (base URLs), a connection failure or a 502/503/504 moves on to the next one at once
(a gateway restarting in a rolling update), and it backs off only when a whole round failed.

    client = GatewayClient.from_connection(".deepfleet/demo/connection.json")
    print(client.chat("Hello"))

Any OpenAI client works against the gateway too; this one has the retry policy built in.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import ssl
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx

RETRY_STATUSES = {429, 502, 503, 504}


class GatewayError(RuntimeError):
    """The gateway refused the request, or could not be reached within the retries."""


class GatewayClient:
    """Chat with a gateway; every request is retried as the module docstring says."""

    def __init__(self, base_url: str | list[str], api_key: str, ca_cert: Path | None = None, model: str | None = None,
                 max_retries: int = 5, backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 timeout_s: float = 300.0, sleep: Callable[[float], None] = time.sleep):
        verify = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else True
        urls = base_url.split(",") if isinstance(base_url, str) else list(base_url)
        self._urls = [url.strip().rstrip("/") for url in urls if url.strip()]
        self._current = 0
        self._http = httpx.Client(verify=verify, timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"})
        self.model, self.max_retries = model, max_retries
        self.backoff_base_s, self.backoff_max_s, self._sleep = backoff_base_s, backoff_max_s, sleep

    @classmethod
    def from_connection(cls, path: Path, **kwargs) -> "GatewayClient":
        """A client from a connection file {base_url (or base_urls: a list), ca_cert, api_key, model}
        (the demo writes one); DEEPFLEET_API_KEY, when set, overrides the key in it."""
        connection = json.loads(Path(path).read_text())
        api_key = os.environ.get("DEEPFLEET_API_KEY") or connection.get("api_key")
        if not api_key:
            raise GatewayError(f"{path} has no api_key; set DEEPFLEET_API_KEY")
        return cls(connection.get("base_urls") or connection["base_url"], api_key, connection.get("ca_cert"), connection.get("model"), **kwargs)

    @property
    def base_url(self) -> str:
        """The gateway the next request goes to (the last one that answered)."""
        return self._urls[self._current]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chat(self, prompt: str | list[dict], max_tokens: int | None = None, **params) -> str:
        """The assistant's answer to `prompt` (a user message, or a list of messages)."""
        response = self._retrying(lambda url: self._http.post(f"{url}/chat/completions",
                                                                  json=self._body(prompt, max_tokens, params)))
        return response.json()["choices"][0]["message"]["content"]

    def chat_stream(self, prompt: str | list[dict], max_tokens: int | None = None, **params) -> Iterator[str]:
        """The answer as it is generated, piece by piece (retried only before it starts)."""
        body = self._body(prompt, max_tokens, params) | {"stream": True}
        response = self._retrying(lambda url: self._http.send(
            self._http.build_request("POST", f"{url}/chat/completions", json=body), stream=True))
        try:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise GatewayError(f"the stream broke: {chunk['error'].get('message')}")
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        yield choice["delta"]["content"]
        finally:
            response.close()

    def models(self) -> list[str]:
        return [m["id"] for m in self._retrying(lambda url: self._http.get(f"{url}/models")).json()["data"]]

    def _body(self, prompt, max_tokens, params) -> dict:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        model = self.model or self.models()[0]
        return {"model": model, "messages": messages, **({"max_tokens": max_tokens} if max_tokens else {}), **params}

    def _retrying(self, send: Callable[[str], httpx.Response]) -> httpx.Response:
        attempt, tried = 0, 0
        while True:
            try:
                response = send(self.base_url)
            except httpx.TransportError as exc:
                problem, wait = f"cannot reach the gateway {self.base_url}: {exc}", None
            else:
                if response.status_code < 400:
                    return response
                response.read()
                problem = _error_message(response)
                if response.status_code not in RETRY_STATUSES:
                    response.close()
                    raise GatewayError(f"HTTP {response.status_code}: {problem}")
                wait = retry_after_seconds(response.headers.get("retry-after"))
                response.close()
                if response.status_code == 429:  # this key's limit: another gateway would not help
                    tried = len(self._urls) - 1
            tried += 1
            if tried < len(self._urls):  # another gateway, at once
                self._current = (self._current + 1) % len(self._urls)
                continue
            self._current, tried = (self._current + 1) % len(self._urls), 0
            if attempt == self.max_retries:
                rounds = f"{attempt + 1} attempts" if len(self._urls) == 1 else \
                    f"{attempt + 1} rounds of {len(self._urls)} gateways"
                raise GatewayError(f"gave up after {rounds}; last: {problem}")
            self._sleep(wait if wait is not None else self.backoff(attempt))
            attempt += 1

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff before retry `attempt + 1`."""
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
