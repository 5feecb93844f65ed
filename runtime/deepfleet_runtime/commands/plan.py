"""`deepfleet-runtime plan MODEL_DIR --gpus 2xA100-80GB --quantization int4 [--nodes 2]`: does it fit,
on one host or spread over several, before provisioning."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("plan", help="weights, KV bytes per token and the GPUs a model needs")
    parser.add_argument("model", type=Path, help="model directory (or its config.json)")
    parser.add_argument("--gpus", required=True, help="COUNTxNAME, e.g. 2xA100-80GB, 1xRTX4090-24GB")
    parser.add_argument("--quantization", default="none", choices=["none", "bf16", "int8", "int4", "fp8"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--gpu-memory-fraction", type=float, default=0.9)
    parser.add_argument("--context", type=int, default=4096, help="KV tokens that must fit at least")
    parser.add_argument("--nodes", type=int, default=1,
                        help="hosts of --gpus each that the model may span (pipeline parallel across them)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..planner import PlanError, parse_gpus, plan_nodes

    try:
        result = plan_nodes(args.model, parse_gpus(args.gpus), args.nodes, args.quantization, args.dtype,
                            args.gpu_memory_fraction, args.context)
    except PlanError as exc:
        print(f"deepfleet-runtime: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"parameters:          {result.parameters:,}")
        print(f"weights:             {result.weight_bytes / 1e9:.2f} GB ({args.quantization})")
        print(f"KV cache per token:  {result.kv_bytes_per_token / 1024:.1f} KiB")
        print(f"tensor parallel:     {result.tensor_parallel or '-'}")
        print(f"pipeline parallel:   {result.pipeline_parallel if result.fits else '-'} (hosts)")
        print(f"concurrent tokens:   {result.max_concurrent_tokens}")
        print(result.detail)
    return 0 if result.fits else 1
