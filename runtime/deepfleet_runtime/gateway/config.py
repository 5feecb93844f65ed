"""The gateway's config file (/etc/deepfleet/gateway.yaml, rendered from templates/gateway.yaml.j2)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..configfile import ConfigError, load_yaml_config


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
    """One runtime replica. `release` and `quantization` label audit records until the replica's
    own /ready reports them."""

    url: str  # http://127.0.0.1:8000 on the same host; https://... (mTLS) on another host
    name: str = ""  # how the admin socket and metrics name it; defaults to the URL's host:port
    release: str = ""
    quantization: str = ""


@dataclass(frozen=True)
class UpstreamTlsSection:
    """TLS to https:// upstreams: the CA that signed their certificates and this gateway's client
    certificate (mutual TLS)."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class RoutingSection:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0  # between two bytes from an upstream (a long generation streams)
    max_attempts: int = 3  # tries of one request, each on a different replica
    backoff_base_s: float = 0.05  # before retry n: base * 2**(n-1), capped, times a random 0.5-1.0
    backoff_max_s: float = 1.0
    health_interval_s: float = 2.0  # active checks: GET /ready on every replica
    health_timeout_s: float = 2.0
    unhealthy_after: int = 2  # consecutive failed checks before a replica gets no traffic
    healthy_after: int = 1  # consecutive good checks before it gets traffic again
    wait_for_replica_s: float = 10.0  # with no replica in service (a restart), hold a request this long,
    #                                   re-checking the down ones every 0.25 s, before answering 503


@dataclass(frozen=True)
class LimitsSection:
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_tokens: int = 1024  # the runtime's limit: larger max_tokens get 400 here already
    default_max_tokens: int = 256  # what the runtime uses when a request does not say
    max_in_flight: int = 64  # requests forwarded at once (all keys together)
    max_queued: int = 256  # requests waiting for a slot; beyond that 503 at once
    queue_timeout_s: float = 30.0  # a queued request waiting longer gets 503
    default_rpm: int = 600  # per key, for keys that set no limit of their own; 0 = unlimited
    default_tpm: int = 600_000
    default_concurrency: int = 16


@dataclass(frozen=True)
class ConnectionsSection:
    """Limits on client connections to the public port (gateway/connections.py)."""

    max_connections: int = 8192  # open at once, all clients; also capped by the process's file limit
    max_per_client: int = 256  # open at once from one client address; more are closed at once
    handshake_timeout_s: float = 10.0  # a TLS handshake not done by then is closed
    header_timeout_s: float = 10.0  # a request's headers (the first one's: from the handshake) by then, else 408
    idle_timeout_s: float = 15.0  # a keep-alive connection without a new request is closed after this
    max_header_bytes: int = 32 << 10  # request line + headers; larger get 431
    max_unauthenticated_per_minute: int = 60  # per client address: 401s beyond it get 429, unrecorded


@dataclass(frozen=True)
class AuditSection:
    dir: Path
    content: Literal["full", "sha256"] = "full"  # prompts and completions, or only their SHA-256
    rotate_bytes: int = 64 << 20  # a new file when the current one would grow past this
    rotate_daily: bool = True  # and at the first record of each UTC day
    retention_days: int = 0  # delete files older than this (0 = keep forever)
    checkpoint_key: Path | None = None  # Ed25519 private key (PEM): signed checkpoints in the chain
    checkpoint_every: int = 1000  # records between two checkpoints


@dataclass(frozen=True)
class MetricsSection:
    host: str = "127.0.0.1"  # loopback only: Prometheus scrapes it on the host
    port: int = 9464


@dataclass(frozen=True)
class LimitsStoreSection:
    """The store the gateways of a fleet share their limits and budgets in (Valkey/Redis; gateway/store.py).
    Without this section a gateway keeps its buckets in memory and its budgets in state_dir."""

    url: str  # rediss://HOST:PORT/0 (TLS) or redis://127.0.0.1:PORT/0 (loopback only)
    password_file: Path | None = None  # the store's password (requirepass), readable by the gateway only
    ca: Path | None = None  # the CA that signed the store's certificate (rediss://)
    gateways: int = 1  # gateways sharing it: while it is unreachable each admits 1/gateways of every limit
    timeout_s: float = 0.5  # per store command; slower counts as unreachable
    retry_s: float = 1.0  # while unreachable, how often to try it again
    lease_s: float = 30.0  # a concurrency slot is held this long unless renewed (a gateway that dies frees them)
    prefix: str = "deepfleet:"  # of every key the gateways write

    def __post_init__(self):
        if not self.url.startswith(("redis://", "rediss://")):
            raise ConfigError(f"limits_store: url {self.url!r} must start with rediss:// (TLS) or redis:// (loopback)")
        if self.url.startswith("redis://") and not _is_loopback(_url_host(self.url)):
            raise ConfigError(f"limits_store: {self.url} is not on loopback; use rediss:// (TLS) for a store on "
                              "another host")
        if self.gateways < 1 or self.timeout_s <= 0 or self.retry_s <= 0 or self.lease_s <= 0:
            raise ConfigError("limits_store: gateways must be >= 1 and timeout_s, retry_s, lease_s > 0")


def _url_host(url: str) -> str:
    netloc = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    return netloc[1:].split("]", 1)[0] if netloc.startswith("[") else netloc.rsplit(":", 1)[0]


@dataclass(frozen=True)
class GatewayConfig:
    tls: TlsSection
    api_keys_file: Path  # JSON of key ids, SHA-256 hashes and limits, never the keys themselves
    upstreams: list[UpstreamSection]
    audit: AuditSection
    listen: ListenSection = field(default_factory=ListenSection)
    upstream_tls: UpstreamTlsSection | None = None
    routing: RoutingSection = field(default_factory=RoutingSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    connections: ConnectionsSection = field(default_factory=ConnectionsSection)
    metrics: MetricsSection | None = field(default_factory=MetricsSection)
    admin_socket: Path | None = None  # unix socket for drain/undrain (docs/gateway.md)
    limits_store: LimitsStoreSection | None = None  # shared limits and budgets (a fleet); None: this gateway's own
    state_dir: Path | None = None  # budgets' usage journal without a store (<state_dir>/budgets/); None: in memory

    def __post_init__(self):
        if not self.upstreams:
            raise ConfigError("upstreams: list at least one runtime replica (url: http://127.0.0.1:8000)")
        names = [upstream_name(u) for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ConfigError(f"upstreams: names must be unique, got {', '.join(names)}; set `name:` on each")
        if any(u.url.startswith("https://") for u in self.upstreams) and self.upstream_tls is None:
            raise ConfigError("upstreams: an https:// upstream needs an upstream_tls section "
                              "(ca, cert, key: the gateway's client certificate)")
        if self.metrics is not None and not _is_loopback(self.metrics.host):
            raise ConfigError(f"metrics: host {self.metrics.host} is not a loopback address; metrics "
                              "are served on loopback only (127.0.0.1 or ::1)")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def upstream_name(upstream: UpstreamSection) -> str:
    """The replica's name: its `name`, else host:port of its URL."""
    return upstream.name or upstream.url.split("://", 1)[-1].rstrip("/")


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Load and validate gateway.yaml."""
    return load_yaml_config(GatewayConfig, path)
