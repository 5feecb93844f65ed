"""`deepfleet-runtime serve --config runtime.yaml`: the OpenAI-compatible server on loopback."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("serve", help="serve the model in runtime.yaml (OpenAI-compatible)")
    parser.add_argument("--config", required=True, type=Path)
    parser.set_defaults(func=run)


def serving_labels(config) -> dict[str, str]:
    """What /ready reports about the model: its release (the `<name>@<release>` directory the path
    resolves to, e.g. through `<name>@current`) and its quantisation."""
    resolved = Path(config.model.path).resolve().name
    release = resolved.rpartition("@")[2] if "@" in resolved else ""
    return {"release": release, "quantization": config.quantization.mode}


def run(args) -> int:
    from ..config import load_runtime_config
    from ..engines import build_engine
    from ..engines.base import EngineConfigError
    from ..gpuhealth import GpuHealth, check_policy
    from ..metrics import gpu_capability
    from ..privatememory import keep_memory_private
    from ..server import create_app
    from ..serving import build_server

    keep_memory_private()  # the model keys and decrypted weights never reach a core dump
    config = load_runtime_config(args.config)
    # Read by torch when it first touches CUDA: set before any engine imports torch.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", config.memory.pytorch_cuda_alloc_conf)
    try:
        check_policy(config.gpu_health)
        engine = build_engine(config, gpu_capability() if config.device.startswith("cuda") else None)
    except (EngineConfigError, ValueError) as exc:
        print(f"deepfleet-runtime: {args.config}: {exc}", file=sys.stderr)
        return 2
    # On a host with NVIDIA GPUs the policy applies (also to an engine on CPU: its GPUs still say
    # what state the host is in); without NVML there is nothing to check.
    gpu_health = GpuHealth.create(config.gpu_health) if config.gpu_health.enabled else None
    try:
        tls = config.tls
        server = build_server(create_app(engine, config.limits, reasoning_parser=config.reasoning_parser,
                                         labels=serving_labels(config), gpu_health=gpu_health),
                              config.server.host, config.server.port, tls.cert if tls else None,
                              tls.key if tls else None, tls.client_ca if tls else None,
                              tls.allowed_clients if tls else ())
        # a broken device stops the server; the non-zero exit makes systemd restart the unit
        engine.on_fatal = lambda reason: setattr(server, "should_exit", True)
        server.run()
    finally:
        engine.close()
    failure = getattr(engine, "failure", None)
    if failure:
        print(f"deepfleet-runtime: {failure}", file=sys.stderr)
        return 1
    return 0
