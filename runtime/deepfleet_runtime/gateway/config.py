"""The gateway's config file (/etc/deepfleet/gateway.yaml, rendered from templates/gateway.yaml.j2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..configfile import load_yaml_config


@dataclass(frozen=True)
class ListenSection:
    host: str = "0.0.0.0"
    port: int = 8443


@dataclass(frozen=True)
class TlsSection:
    cert: Path  # server certificate chain (PEM)
    key: Path  # its private key (PEM), readable only by the service user


@dataclass(frozen=True)
class UpstreamSection:
    url: str = "http://127.0.0.1:8000"  # the runtime, on loopback
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0


@dataclass(frozen=True)
class GatewayConfig:
    tls: TlsSection
    api_keys_file: Path  # JSON of key ids and SHA-256 hashes, never the keys themselves
    listen: ListenSection = field(default_factory=ListenSection)
    upstream: UpstreamSection = field(default_factory=UpstreamSection)


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Load and validate gateway.yaml."""
    return load_yaml_config(GatewayConfig, path)
