"""A stand-in runtime for tests that need an upstream to behave in a set way (stream slowly, hang,
fail): /ready, /v1/models, and completions that stream `events` chunks `delay_s` apart."""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port


def fake_runtime_app(events: int = 4, delay_s: float = 0.0, hang_after: int | None = None) -> Starlette:
    """Streams `events` content chunks; with `hang_after`, goes silent after that many."""

    async def ready(_):
        return JSONResponse({"status": "ready", "release": "fake@1", "quantization": "none"})

    async def models(_):
        return JSONResponse({"object": "list", "data": [{"id": "tiny", "object": "model"},
                                                        {"id": "other", "object": "model"}]})

    async def chat(request: Request):
        body = await request.json()
        if not body.get("stream"):
            await asyncio.sleep(delay_s)
            return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * events},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": events, "total_tokens": 3 + events}})

        async def stream():
            for index in range(events):
                if hang_after is not None and index >= hang_after:
                    await asyncio.sleep(3600)
                chunk = {"id": "x", "object": "chat.completion.chunk", "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": f"w{index} "}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(delay_s)
            usage = {"id": "x", "object": "chat.completion.chunk", "choices": [],
                     "usage": {"prompt_tokens": 3, "completion_tokens": events, "total_tokens": 3 + events}}
            yield f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/ready", ready), Route("/v1/models", models),
                             Route("/v1/chat/completions", chat, methods=["POST"])])


@contextlib.contextmanager
def fake_runtime(**behaviour):
    """Run a fake runtime on a loopback port; yields its URL."""
    port = free_port()
    with ServerThread(build_server(fake_runtime_app(**behaviour), "127.0.0.1", port)):
        yield f"http://127.0.0.1:{port}"
