"""`deepfleet-runtime serve --config runtime.yaml`: the OpenAI-compatible server on loopback."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("serve", help="serve the model in runtime.yaml (OpenAI-compatible)")
    parser.add_argument("--config", required=True, type=Path)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_runtime_config
    from ..engines.transformers_engine import TransformersEngine
    from ..server import create_app
    from ..serving import serve

    config = load_runtime_config(args.config)
    engine = TransformersEngine(config.model.name, config.model.path, config.device, config.dtype,
                                keys_dir=config.model.keys_dir)
    serve(create_app(engine, config.limits), config.server.host, config.server.port)
    return 0
