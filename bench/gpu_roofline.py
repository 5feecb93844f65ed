"""Transformers-engine decode speed on a GPU against the memory-bandwidth roofline.

Builds a random-weight model of a real DeepSeek shape directly on the device (no download, no
disk), serves it with deepfleet's TransformersEngine at batch 1 and 32 in bf16, int8 and int4,
and prints tokens/s next to the roofline: a decode step must read every weight it uses once, so
tokens/s <= batch x bandwidth / bytes read per step (all dense weights + the experts the batch
touches). int8/int4 use torchao; without it those modes are reported as skipped.

Needs only torch and transformers (+ torchao for int8/int4). Sized to finish in under 8 minutes
on one H200: --shape v2-lite (15.7B, DeepSeek-V2-Lite's dims: MLA + 64 experts) by default.

Usage: PYTHONPATH=runtime python bench/gpu_roofline.py [--device cuda] [--shape v2-lite]
       PYTHONPATH=runtime python bench/gpu_roofline.py --device cpu --shape tiny   # logic check
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time

import torch

from deepfleet_runtime.config import MemorySection, SchedulerSection
from deepfleet_runtime.engines.base import GenerationRequest, SamplingParams
from deepfleet_runtime.engines.transformers_engine import TransformersEngine
from deepfleet_runtime.quantize import EXPERT_PARAMETERS, QuantizationPlan, apply_torchao, tensor_bytes, weight_bytes

SHAPES = {
    # DeepSeek-V2-Lite's published dimensions, in the V3 architecture class (MLA + routed/shared experts)
    "v2-lite": dict(vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
                    num_hidden_layers=27, first_k_dense_replace=1, num_attention_heads=16, num_key_value_heads=16,
                    q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                    n_routed_experts=64, num_experts_per_tok=6, n_group=1, topk_group=1, n_shared_experts=2),
    "tiny": dict(vocab_size=2048, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                 num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
                 q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32,
                 n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=1),
}
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.864e12, "4090": 1.008e12}


class IdTokenizer:
    """What the engine needs of a tokenizer, for random weights: ids in, ids (as words) out."""

    bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)

    def get_vocab(self):
        return {}


def build_model(shape: str, device: str, eager_experts: bool):
    """A random-weight DeepSeek model built in place on `device` (bf16)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(**SHAPES[shape], bos_token_id=0, eos_token_id=1, pad_token_id=2,
                              tie_word_embeddings=False, max_position_embeddings=4096)
    if eager_experts:
        config._experts_implementation = "eager"
    torch.manual_seed(0)
    with torch.device(device):
        model = DeepseekV3ForCausalLM(config).to(torch.bfloat16).eval()
    return model


def expected_distinct_experts(experts: int, per_token: int, batch: int) -> float:
    """Expected experts a batch touches in one MoE layer, with uniform routing."""
    return experts * (1 - (1 - per_token / experts) ** batch)


def bytes_read_per_step(model, batch: int) -> float:
    """Dense weights + the share of expert weights a decode step of `batch` rows reads."""
    total = weight_bytes(model)
    experts = sum(tensor_bytes(p) for n, p in model.named_parameters() if n.endswith(EXPERT_PARAMETERS))
    config = model.config
    share = expected_distinct_experts(config.n_routed_experts, config.num_experts_per_tok, batch) / config.n_routed_experts
    return total - experts + experts * share


def decode_rate(engine: TransformersEngine, batch: int, new_tokens: int, prompt_tokens: int) -> float:
    """Tokens per second once every request of the batch is decoding (prefills are not counted)."""
    async def run():
        firsts, times = [], []

        async def one(index):
            ids = [(index * 7919 + j) % 1000 + 3 for j in range(prompt_tokens)]
            request = GenerationRequest(f"b{index}", ids, SamplingParams(new_tokens, temperature=0, ignore_eos=True))
            async for event in engine.generate(request):
                (firsts if event.completion_tokens == 1 else times).append(time.perf_counter())
        await asyncio.gather(*(one(i) for i in range(batch)))
        start = max(firsts)
        decoded = [t for t in times if t > start]
        return len(decoded) / (max(decoded) - start)
    return asyncio.run(run())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="v2-lite", choices=sorted(SHAPES))
    parser.add_argument("--modes", default="bf16,int8,int4")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--bandwidth", type=float, default=0.0, help="bytes/s; default from the GPU's name")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what would start after this")
    args = parser.parse_args(argv)
    started = time.monotonic()
    torch.set_grad_enabled(False)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    bandwidth = args.bandwidth or next((v for k, v in BANDWIDTH.items() if k in gpu), 0.0)
    results, skipped = [], {}
    for mode in args.modes.split(","):
        if time.monotonic() - started > args.budget_s:
            skipped[mode] = "time budget"
            continue
        if mode != "bf16" and importlib.util.find_spec("torchao") is None:
            skipped[mode] = "torchao not installed"
            continue
        built = time.monotonic()
        model = build_model(args.shape, args.device, eager_experts=mode != "bf16")
        try:
            if mode != "bf16":
                apply_torchao(model, mode)
            sync(args.device)
        except Exception as exc:  # e.g. no int4 kernel for this device: report, go on
            skipped[mode] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        engine = TransformersEngine("roofline", "(in memory)", args.device, "bfloat16",
                                    QuantizationPlan(mode, "none" if mode == "bf16" else "torchao"),
                                    SchedulerSection(max_batch_size=max(int(b) for b in args.batches.split(","))),
                                    MemorySection(cpu_kv_cache_bytes=2**30))
        engine.start(model, IdTokenizer())
        print(f"{mode}: built and quantised in {time.monotonic() - built:.0f} s, "
              f"{engine.stats().weight_bytes / 1e9:.2f} GB of weights", file=sys.stderr)
        for batch in (int(b) for b in args.batches.split(",")):
            rate = decode_rate(engine, batch, args.new_tokens, args.prompt_tokens)
            roofline = batch * bandwidth / bytes_read_per_step(model, batch) if bandwidth else None
            results.append({"mode": mode, "batch": batch, "tok_per_s": round(rate, 1),
                            "roofline_tok_per_s": round(roofline, 1) if roofline else None,
                            "of_roofline": round(rate / roofline, 3) if roofline else None,
                            "weight_gb": round(engine.stats().weight_bytes / 1e9, 3)})
            print(json.dumps(results[-1]), file=sys.stderr)
        engine.close()
        del engine, model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(json.dumps({"gpu": gpu, "shape": args.shape, "bandwidth": bandwidth, "results": results,
                      "skipped": skipped, "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
