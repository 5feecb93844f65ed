"""A minimal stand-in runtime for gateway benchmarks: answers as fast as it can, so what is
measured is the gateway. Plain asyncio, keep-alive HTTP/1.1:

- GET /ready, GET /v1/models: small JSON;
- POST /v1/chat/completions: `{"stream": true}` gets `chunks` SSE events (the request's
  max_tokens) and a usage event, chunked encoding; otherwise one JSON answer.

    python bench/fake_upstream.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

READY = json.dumps({"status": "ready", "release": "fake@1", "quantization": "none"}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()
ANSWER = json.dumps({"id": "x", "object": "chat.completion", "model": "tiny",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
EVENT = b'data: {"id":"x","object":"chat.completion.chunk","model":"tiny","choices":[{"index":0,"delta":{"content":"w "},"finish_reason":null}]}\n\n'
USAGE = b'data: {"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":%d,"total_tokens":%d}}\n\ndata: [DONE]\n\n'


def _whole(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
            body = await reader.readexactly(length) if length else b""
            if path == "/ready":
                writer.write(_whole(b"200 OK", READY))
            elif path == "/v1/models":
                writer.write(_whole(b"200 OK", MODELS))
            elif method == "POST" and path == "/v1/chat/completions":
                request = json.loads(body)
                if request.get("stream"):
                    count = int(request.get("max_tokens", 16))
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    for _ in range(count):
                        writer.write(_chunk(EVENT))
                        await writer.drain()  # one event per write, as a generating runtime sends them
                    writer.write(_chunk(USAGE % (count, count + 3)) + b"0\r\n\r\n")
                else:
                    writer.write(_whole(b"200 OK", ANSWER))
            else:
                writer.write(_whole(b"404 Not Found", b'{"error":{"message":"not found"}}'))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
