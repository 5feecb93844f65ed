"""Capacity planner: from a model's config.json, whether it fits the GPUs, before any provisioning.

Pure Python over config.json (no torch), so the control side imports it too. It counts every weight
matrix of a DeepSeek-V3/V2 (MLA + MoE) or Llama-style (GQA) decoder, prices them under a
quantisation, sizes the KV cache per token (MLA caches the compressed latent: layers x
(kv_lora_rank + qk_rope_head_dim); GQA caches K and V per KV head), and picks the tensor-parallel
degree and the concurrent tokens that fit. When one host's GPUs are not enough and more hosts are
offered, it spreads the model over hosts: tensor parallel across a host's GPUs (fast links inside
a host), pipeline parallel across hosts (one stage per host), as vLLM recommends.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

# Memory, compute capability and memory bandwidth of the GPUs deepfleet plans for.
GPUS = {
    "A100-40GB": (40 * 10**9, (8, 0), 1.555e12),
    "A100-80GB": (80 * 10**9, (8, 0), 2.039e12),
    "H100-80GB": (80 * 10**9, (9, 0), 3.35e12),
    "H200-141GB": (141 * 10**9, (9, 0), 4.8e12),
    "L40S-48GB": (48 * 10**9, (8, 9), 0.864e12),
    "RTX4090-24GB": (24 * 10**9, (8, 9), 1.008e12),
    "A10-24GB": (24 * 10**9, (8, 6), 0.6e12),
    "L4-24GB": (24 * 10**9, (8, 9), 0.3e12),
}
ACTIVATION_RESERVE = 0.10  # share of each GPU kept for activations and allocator slack
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "bf16": 2}
INT4_GROUP = 128  # weights per scale+zero pair in int4 group quantisation


class PlanError(ValueError):
    """Bad planner input (unknown GPU, unreadable config); the message names the fix."""


@dataclass(frozen=True)
class GpuSpec:
    name: str
    count: int
    memory_bytes: int
    capability: tuple[int, int]
    bandwidth: float  # bytes/s


def parse_gpus(text: str) -> GpuSpec:
    """'2xA100-80GB' -> GpuSpec (count 2); names from GPUS, case-insensitive."""
    match = re.fullmatch(r"(?:(\d+)\s*x\s*)?(.+)", text.strip(), re.IGNORECASE)
    count, name = int(match.group(1) or 1), match.group(2)
    known = {key.lower(): key for key in GPUS}
    if name.lower() not in known or count < 1:
        raise PlanError(f"unknown GPU '{text}'; write COUNTxNAME with NAME one of {', '.join(GPUS)}")
    key = known[name.lower()]
    memory, capability, bandwidth = GPUS[key]
    return GpuSpec(key, count, memory, capability, bandwidth)


@dataclass(frozen=True)
class Matrix:
    """`count` weight matrices of rows x cols (rows = output features)."""

    name: str
    rows: int
    cols: int
    count: int = 1

    @property
    def params(self) -> int:
        return self.rows * self.cols * self.count


def load_config(model: str | Path | dict) -> dict:
    """config.json as a dict, from a model directory, a config.json path or a dict."""
    if isinstance(model, dict):
        return model
    path = Path(model)
    path = path / "config.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"cannot read {path}: {exc}; pass a model directory that holds config.json") from None


def _is_mla(config: dict) -> bool:
    return bool(config.get("kv_lora_rank"))


def weight_matrices(config: dict) -> list[Matrix]:
    """Every 2-D/3-D weight the decoder holds (norms and biases are counted in other_params)."""
    hidden, layers, heads = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    vocab = config["vocab_size"]
    out = [Matrix("embed_tokens", vocab, hidden)]
    if not config.get("tie_word_embeddings", False):
        out.append(Matrix("lm_head", vocab, hidden))
    if _is_mla(config):
        nope, rope, v = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
        q_rank, kv_rank = config.get("q_lora_rank"), config["kv_lora_rank"]
        if q_rank:
            out += [Matrix("q_a_proj", q_rank, hidden, layers), Matrix("q_b_proj", heads * (nope + rope), q_rank, layers)]
        else:
            out.append(Matrix("q_proj", heads * (nope + rope), hidden, layers))
        out += [Matrix("kv_a_proj_with_mqa", kv_rank + rope, hidden, layers),
                Matrix("kv_b_proj", heads * (nope + v), kv_rank, layers),
                Matrix("o_proj", hidden, heads * v, layers)]
    else:
        head_dim = config.get("head_dim") or hidden // heads
        kv_heads = config.get("num_key_value_heads") or heads
        out += [Matrix("q_proj", heads * head_dim, hidden, layers),
                Matrix("k_proj", kv_heads * head_dim, hidden, layers),
                Matrix("v_proj", kv_heads * head_dim, hidden, layers),
                Matrix("o_proj", hidden, heads * head_dim, layers)]
    experts = config.get("n_routed_experts") or 0
    dense_layers = min(config.get("first_k_dense_replace", 0), layers) if experts else layers
    moe_layers = layers - dense_layers
    inter = config["intermediate_size"]
    if dense_layers:
        out += [Matrix("mlp.gate_up", 2 * inter, hidden, dense_layers), Matrix("mlp.down", hidden, inter, dense_layers)]
    if moe_layers:
        moe_inter, shared = config["moe_intermediate_size"], config.get("n_shared_experts") or 0
        out += [Matrix("experts.gate_up_proj", 2 * moe_inter, hidden, moe_layers * experts),
                Matrix("experts.down_proj", hidden, moe_inter, moe_layers * experts),
                Matrix("router", experts, hidden, moe_layers)]
        if shared:
            out += [Matrix("shared_experts.gate_up", 2 * moe_inter * shared, hidden, moe_layers),
                    Matrix("shared_experts.down", hidden, moe_inter * shared, moe_layers)]
    return out


def other_params(config: dict) -> int:
    """Norm weights and router biases: small, never quantised."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    total = hidden * (2 * layers + 1)
    if _is_mla(config):
        total += layers * (config["kv_lora_rank"] + (config.get("q_lora_rank") or 0))
    experts = config.get("n_routed_experts") or 0
    if experts:
        total += (layers - min(config.get("first_k_dense_replace", 0), layers)) * experts
    return total


def parameter_count(config: dict) -> int:
    return sum(m.params for m in weight_matrices(config)) + other_params(config)


def weight_bytes(config: dict, quantization: str = "none", dtype: str = "bfloat16") -> int:
    """Bytes of the weights under `quantization` (none|bf16|int8|int4|fp8); embeddings and norms stay in dtype.

    int8/fp8: one byte per weight + one scale per output row; int4: half a byte + a scale and zero
    point per group of 128 weights. The router stays in full precision.
    """
    base = BYTES["bfloat16" if quantization == "bf16" else dtype]
    total = other_params(config) * base
    for matrix in weight_matrices(config):
        if quantization in ("none", "bf16") or matrix.name in ("embed_tokens", "router"):
            total += matrix.params * base
        elif quantization in ("int8", "fp8"):
            total += matrix.params + matrix.rows * matrix.count * base
        elif quantization == "int4":
            groups = math.ceil(matrix.cols / INT4_GROUP)
            total += matrix.params // 2 + matrix.rows * matrix.count * groups * 2 * base
        else:
            raise PlanError(f"unknown quantization {quantization!r}; use none, bf16, int8, int4 or fp8")
    return total


def kv_bytes_per_token(config: dict, element_bytes: int = 2) -> int:
    """KV cache bytes per token of context across all layers."""
    layers = config["num_hidden_layers"]
    if _is_mla(config):
        return layers * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * element_bytes
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return layers * 2 * kv_heads * head_dim * element_bytes


@dataclass(frozen=True)
class Plan:
    parameters: int
    weight_bytes: int
    kv_bytes_per_token: int
    fits: bool
    tensor_parallel: int  # GPUs to shard over (0 when it does not fit)
    max_concurrent_tokens: int  # KV slots left after the weights, over all shards
    detail: str
    pipeline_parallel: int = 1  # hosts (pipeline stages) the model spans; 1 = one host

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def plan(model: str | Path | dict, gpus: GpuSpec, quantization: str = "none", dtype: str = "bfloat16",
         gpu_memory_fraction: float = 0.9, min_context_tokens: int = 4096) -> Plan:
    """The smallest tensor-parallel degree (dividing the heads) whose GPUs hold the weights plus
    `min_context_tokens` of KV cache; fits=False with the fix in `detail` when none does."""
    config = load_config(model)
    weights = weight_bytes(config, quantization, dtype)
    per_token = kv_bytes_per_token(config, BYTES["bfloat16" if quantization == "bf16" else dtype])
    usable = gpus.memory_bytes * (gpu_memory_fraction - ACTIVATION_RESERVE)
    heads = config["num_attention_heads"]
    for degree in (d for d in (1, 2, 4, 8, 16) if d <= gpus.count and heads % d == 0):
        free = usable * degree - weights
        if free >= per_token * min_context_tokens:
            tokens = int(free // per_token)
            return Plan(parameter_count(config), weights, per_token, True, degree, tokens,
                        f"fits on {degree} x {gpus.name} with {tokens} tokens of KV cache")
    need = (weights + per_token * min_context_tokens) / (gpu_memory_fraction - ACTIVATION_RESERVE)
    detail = (f"does not fit: {weights / 1e9:.1f} GB of weights + {min_context_tokens} tokens of KV need "
              f"about {math.ceil(need / gpus.memory_bytes)} x {gpus.name}; quantise (int8, int4) or add GPUs")
    return Plan(parameter_count(config), weights, per_token, False, 0, 0, detail)


def plan_nodes(model: str | Path | dict, gpus_per_node: GpuSpec, max_nodes: int, quantization: str = "none",
               dtype: str = "bfloat16", gpu_memory_fraction: float = 0.9, min_context_tokens: int = 4096) -> Plan:
    """plan() on one host of `gpus_per_node`; when that does not fit, the fewest hosts (up to
    `max_nodes`) whose GPUs hold the weights plus `min_context_tokens` of KV: every GPU of a host
    in tensor parallel, one pipeline stage per host."""
    single = plan(model, gpus_per_node, quantization, dtype, gpu_memory_fraction, min_context_tokens)
    if single.fits or max_nodes < 2:
        return single
    config = load_config(model)
    degree = gpus_per_node.count
    if config["num_attention_heads"] % degree:
        return single
    usable = gpus_per_node.memory_bytes * (gpu_memory_fraction - ACTIVATION_RESERVE) * degree
    for nodes in range(2, min(max_nodes, config["num_hidden_layers"]) + 1):
        free = usable * nodes - single.weight_bytes
        if free >= single.kv_bytes_per_token * min_context_tokens:
            tokens = int(free // single.kv_bytes_per_token)
            return Plan(single.parameters, single.weight_bytes, single.kv_bytes_per_token, True, degree, tokens,
                        f"fits on {nodes} hosts of {degree} x {gpus_per_node.name} (tensor parallel {degree} "
                        f"x pipeline parallel {nodes}) with {tokens} tokens of KV cache", nodes)
    return Plan(single.parameters, single.weight_bytes, single.kv_bytes_per_token, False, 0, 0,
                f"{single.detail.split(';')[0]}, more than {max_nodes} hosts of {degree} x {gpus_per_node.name}; "
                "quantise (int8, int4) or add hosts")


def context_tokens(config: dict) -> int:
    """The model's own context window (max_position_embeddings; 0 when config.json does not say)."""
    return int(config.get("max_position_embeddings") or 0)


def vllm_max_model_len(model: str | Path | dict, limits) -> int:
    """vLLM's --max-model-len: the longest request the runtime accepts (limits.max_prompt_tokens +
    limits.max_tokens), capped by the model's own context. vLLM sizes its KV check at start-up by
    this, so a long-context model on a small GPU starts instead of failing that check; a request
    beyond it gets 400 context_length_exceeded. An unreadable config.json (an encrypted release
    before decryption) gives the limits alone."""
    accepted = limits.max_prompt_tokens + limits.max_tokens
    try:
        own = context_tokens(load_config(model))
    except PlanError:
        return accepted
    return min(accepted, own) if own else accepted
