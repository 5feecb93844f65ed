"""2,400 malformed requests through the gateway to the real runtime: only 4xx answers, no 5xx, and
the gateway (and its audit chain) healthy afterwards."""

from __future__ import annotations

import asyncio
import json
import random

import httpx

from deepfleet_runtime.gateway.auditchain import verify_chain

CASES_PER_KIND = 200
GOOD_MESSAGES = [{"role": "user", "content": "hi"}]


def _kinds(key: str):
    """Generators of one malformed request each: (method, path, headers, body bytes)."""
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    chat = "/v1/chat/completions"

    def post(body, path=chat, headers=auth):
        return "POST", path, headers, body if isinstance(body, bytes) else json.dumps(body).encode()

    def chat_with(rng, **fields):
        return post({"model": "tiny", "messages": GOOD_MESSAGES, "max_tokens": 2, **fields})

    return {
        "random bytes": lambda rng: post(rng.randbytes(rng.randint(0, 300))),
        "truncated json": lambda rng: post(json.dumps({"model": "tiny", "messages": GOOD_MESSAGES}).encode()[:rng.randint(1, 40)]),
        "not an object": lambda rng: post(rng.choice([[], [1, 2], "text", 42, None, True, 1.5])),
        "bad model": lambda rng: post({"model": rng.choice([None, 7, [], {}, "", "no-such-model", "\ud800"]),
                                       "messages": GOOD_MESSAGES, "max_tokens": 2}),
        "bad messages": lambda rng: post({"model": "tiny", "max_tokens": 2, "messages": rng.choice(
            ["hi", [], [1], [{"role": 1, "content": "x"}], [{"role": "user", "content": 5}],
             [{"role": "user", "content": [{"type": "image_url"}]}], [{"role": "robot", "content": "x"}],
             [{"content": "no role"}], {"role": "user"}])}),
        "absurd max_tokens": lambda rng: chat_with(rng, max_tokens=rng.choice(
            [10**30, -5, 0, 1.5, "ten", True, 1e308, 65, 2**63, [], ""])),
        "bad sampling": lambda rng: chat_with(rng, **rng.choice([
            {"temperature": "hot"}, {"temperature": 99}, {"top_p": 0}, {"top_p": 7}, {"top_k": -1}, {"n": 5},
            {"stop": ["a"] * 9}, {"seed": "x"}, {"stream": "yes"}, {"stream_options": 5},
            {"max_completion_tokens": -1}, {"stop": 5}])),
        "huge or empty prompt": lambda rng: rng.choice([
            post({"model": "tiny", "prompt": "word " * rng.randint(2_000, 40_000), "max_tokens": 2}, "/v1/completions"),
            post({"model": "tiny", "prompt": "", "max_tokens": 2}, "/v1/completions"),
            post({"model": "tiny", "messages": [], "max_tokens": 2}),
            post(b'{"model":"tiny","prompt":"' + b"x" * (1 << 20) + b'"}', "/v1/completions")]),
        "invalid utf-8": lambda rng: post(b'{"model":"tiny","messages":[{"role":"user","content":"'
                                          + rng.randbytes(8).replace(b'"', b"").replace(b"\\", b"") + b'\xff\xfe"}]}'),
        "lone surrogates": lambda rng: post(('{"model":"tiny","prompt":"ab\\ud%03x","max_tokens":2}' % rng.randint(0x800, 0xfff)).encode(),
                                            "/v1/completions"),
        "bad headers": lambda rng: rng.choice([
            ("POST", chat, {"authorization": f"Bearer {key}x", "content-type": "application/json"}, b"{}"),
            ("POST", chat, {"authorization": key, "content-type": "application/json"}, b"{}"),
            ("POST", chat, {"authorization": "Bearer " + "A" * 4000}, b"{}"),
            ("POST", chat, {**auth, "content-type": "text/plain", "x-request-id": b"\xff\x80" * 150}, b"hello"),
            ("POST", chat, {**auth, "content-type": "application/x-www-form-urlencoded"}, b"model=tiny&x=1"),
            ("POST", chat, {**auth, "x-forwarded-for": "1.2.3.4" * 200}, b"[]"),
        ]),
        "wrong method or path": lambda rng: rng.choice([
            ("GET", chat, auth, b""), ("PUT", "/v1/completions", auth, b"{}"), ("DELETE", "/v1/models", auth, b""),
            ("GET", "/v1/../etc/passwd", auth, b""), ("POST", "/v1/embeddings", auth, b"{}"),
            ("GET", "/%ff%fe", auth, b""), ("POST", "/v1/chat/completions/", auth, b"{}")]),
    }


async def _send_all(url, tls, requests, concurrency=8):
    statuses = []
    queue = list(reversed(requests))

    async def worker():
        async with httpx.AsyncClient(base_url=url, verify=tls, timeout=60) as client:
            while queue:
                method, path, headers, body = queue.pop()
                response = await client.request(method, path, headers=headers, content=body)
                statuses.append((response.status_code, method, path, body[:160]))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def test_malformed_requests_get_only_4xx_and_the_gateway_stays_healthy(gateway):
    key = gateway.add_key("fuzzer", rpm=0, tpm=0, concurrency=0)
    rng = random.Random(6)
    requests = [make(rng) for make in _kinds(key).values() for _ in range(CASES_PER_KIND)]
    rng.shuffle(requests)
    statuses = asyncio.run(_send_all(gateway.url, gateway.tls(), requests))
    assert len(statuses) == len(requests) >= 2000
    outside_4xx = [s for s in statuses if not 400 <= s[0] < 500]
    assert outside_4xx == [], sorted(set(outside_4xx))[:20]
    assert {s[0] for s in statuses} >= {400, 401, 404, 405, 413}
    with gateway.openai() as client:
        assert client.chat.completions.create(model="tiny", messages=GOOD_MESSAGES, max_tokens=2).choices
        assert httpx.get(f"{gateway.url}/health", verify=gateway.tls()).json() == {"status": "ok"}
    assert verify_chain(gateway.audit_dir).records >= 2000
