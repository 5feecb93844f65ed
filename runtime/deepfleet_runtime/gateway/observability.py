"""Gateway series the alert rules need beyond traffic (monitoring/alerts.rules.yml): the audit log's
free disk (its write failures and writability are the audit log's own series, gateway/app.py), and when the certificates the gateway uses expire. All read when
scraped: a renewed certificate or a cleaned disk shows at the next scrape, without a restart."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import GatewayConfig
from .metrics import GatewayMetrics, Live

log = logging.getLogger(__name__)


def add_observability_metrics(metrics: GatewayMetrics, config: GatewayConfig, audit) -> None:
    """Register the audit and certificate families on `metrics`."""
    metrics.add(Live("deepfleet_gateway_audit_disk_free_bytes", "Bytes free to unprivileged writers on the "
                     "audit directory's filesystem.", (), lambda: _disk(config.audit.dir, "free")))
    metrics.add(Live("deepfleet_gateway_audit_disk_size_bytes", "Size of the audit directory's filesystem.",
                     (), lambda: _disk(config.audit.dir, "size")))
    certificates = {"server": config.tls.cert}
    if config.upstream_tls is not None:
        certificates["upstream_client"] = config.upstream_tls.cert
    metrics.add(Live("deepfleet_certificate_expiry_timestamp_seconds", "When a certificate this process "
                     "presents expires (Unix time).", ("cert",), lambda: _expiry(certificates)))


def _disk(directory: Path, what: str) -> dict:
    try:
        stat = os.statvfs(directory)
    except OSError as exc:
        log.warning("cannot stat the audit directory %s: %s", directory, exc)
        return {}
    return {(): float((stat.f_bavail if what == "free" else stat.f_blocks) * stat.f_frsize)}


def _expiry(certificates: dict[str, Path]) -> dict:
    from cryptography import x509

    values = {}
    for name, path in certificates.items():
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("cannot read the %s certificate %s: %s", name, path, exc)
            continue
        values[(name,)] = cert.not_valid_after_utc.timestamp()
    return values
