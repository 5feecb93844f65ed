"""A stand-in for `vllm serve` (vLLM is CUDA-only, so the real one cannot run here).

It takes vllm's command line, records it (and the environment keys the engine sets) in the JSON
file named by $STAND_IN_RECORD, answers GET /health, streams POST /v1/completions the way vLLM does
(text chunks with continuous usage, then [DONE]), and exits with status 3 on POST /crash.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def do_POST(self):
        if self.path == "/crash":
            os._exit(3)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        count = body["max_tokens"]
        for i in range(1, count + 1):
            chunk = {"choices": [{"index": 0, "text": f"t{body['prompt'][-1]}.{i} ",
                                  "finish_reason": "length" if i == count else None}],
                     "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": i}}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


def main() -> None:
    argv = sys.argv[1:]
    port = int(argv[argv.index("--port") + 1])
    with open(os.environ["STAND_IN_RECORD"], "w") as record:
        json.dump({"argv": argv, "pid": os.getpid(), "env": {k: os.environ.get(k) for k in (
            "PYTORCH_CUDA_ALLOC_CONF", "VLLM_NO_USAGE_STATS", "RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")}}, record)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
