"""`deepfleet-runtime convert-gguf MODEL_DIR --out FILE.gguf --type q8_0`: a model for the llamacpp engine."""

from __future__ import annotations

import sys
from pathlib import Path


def register(commands) -> None:
    from ..gguf_convert import GGUF_TYPES

    parser = commands.add_parser("convert-gguf", help="convert a transformers model to GGUF (llama.cpp's converter)")
    parser.add_argument("model", type=Path, help="transformers model directory")
    parser.add_argument("--out", required=True, type=Path, help="the .gguf file to write")
    parser.add_argument("--type", default="q8_0", choices=GGUF_TYPES)
    parser.add_argument("--pre-tokenizer", default="",
                        help="force llama.cpp's pre-tokenizer name (gpt-2 for a custom byte-level BPE tokenizer)")
    parser.add_argument("--llama-cpp-src", type=Path,
                        help="llama-cpp-python sdist (.tar.gz) or llama.cpp checkout holding the converter; "
                             "default: the sdist of the installed version, downloaded once with pip")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..gguf_convert import ConversionError, convert, llama_cpp_sources

    try:
        sources = llama_cpp_sources(sdist=args.llama_cpp_src)
        print(convert(args.model, args.out, args.type, args.pre_tokenizer, sources))
    except ConversionError as exc:
        print(f"deepfleet-runtime: {exc}", file=sys.stderr)
        return 2
    return 0
