"""`deepfleet-runtime tiny-model --out DIR`: a tiny random-weight DeepSeek-V3 for demos and tests."""

from __future__ import annotations

import sys
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("tiny-model", help="build a tiny random-weight DeepSeek-V3 model")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..tinymodel import build_tiny_model

    try:
        out = build_tiny_model(args.out, seed=args.seed)
    except FileExistsError as exc:
        print(f"deepfleet-runtime: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
