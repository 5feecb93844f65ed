"""What the gateway exports for the alert rules: audit write failures, the audit disk's free space,
certificate expiry, and how long requests wait for a slot."""

from __future__ import annotations

import os
import re

import httpx
from cryptography import x509

from .conftest import running_gateway, write_gateway

MESSAGES = [{"role": "user", "content": "Hi"}]


def _metrics(site) -> str:
    config = site.gateway.config.metrics
    return httpx.get(f"http://{config.host}:{config.port}/metrics").text


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match, f"{series} not in the metrics"
    return float(match.group(1))


def test_audit_disk_certificates_and_queue_wait_are_exported(gateway, gateway_pki):
    with gateway.openai() as client:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    text = _metrics(gateway)
    disk = os.statvfs(gateway.audit_dir)
    assert _value(text, "deepfleet_gateway_audit_disk_size_bytes") == disk.f_blocks * disk.f_frsize
    free = _value(text, "deepfleet_gateway_audit_disk_free_bytes")
    assert 0 < free <= disk.f_blocks * disk.f_frsize
    assert _value(text, "deepfleet_gateway_audit_write_failures_total") == 0
    expiry = x509.load_pem_x509_certificate(gateway_pki.cert.read_bytes()).not_valid_after_utc.timestamp()
    assert _value(text, 'deepfleet_certificate_expiry_timestamp_seconds{cert="server"}') == expiry
    assert _value(text, "deepfleet_gateway_queue_seconds_count") >= 1
    assert 'deepfleet_gateway_queue_seconds_bucket{le="+Inf"}' in text


def test_a_failing_audit_disk_is_counted(tmp_path, gateway_pki, runtime_url, monkeypatch):
    from deepfleet_runtime.gateway import audit as audit_module

    site = write_gateway(tmp_path / "gw", gateway_pki, [{"url": runtime_url, "name": "r1"}], {"tester": {}})
    with running_gateway(site):
        def broken(fd, data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(audit_module, "_write_all", broken)
        with site.http() as client:
            answer = client.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2})
        assert answer.status_code >= 500
        assert _value(_metrics(site), "deepfleet_gateway_audit_write_failures_total") == 1


def test_a_replaced_certificate_is_read_at_scrape_time(tmp_path, gateway_pki, runtime_url):
    """A renewal on disk shows without a restart (the alert clears when the deploy renews)."""
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_path = tmp_path / "server.crt"
    cert_path.write_bytes(gateway_pki.cert.read_bytes())
    site = write_gateway(tmp_path / "gw", gateway_pki, [{"url": runtime_url, "name": "r1"}], {"tester": {}},
                         tls={"cert": str(cert_path), "key": str(gateway_pki.key)})
    with running_gateway(site):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "short")])
        not_after = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=10)
        short = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                 .serial_number(1).not_valid_before(not_after - timedelta(days=20)).not_valid_after(not_after)
                 .sign(key, hashes.SHA256()))
        cert_path.write_bytes(short.public_bytes(serialization.Encoding.PEM))
        value = _value(_metrics(site), 'deepfleet_certificate_expiry_timestamp_seconds{cert="server"}')
        assert value == not_after.timestamp()


def test_large_values_keep_every_digit():
    """Counters past a million and Unix times must not be rounded to 6 digits (rate() would step)."""
    from deepfleet_runtime.gateway.metrics import Counter, Live

    counter = Counter("c_total", "c")
    counter.inc(amount=1234567)
    assert "c_total 1234567\n" in "".join(counter.render())
    live = Live("t", "t", (), lambda: {(): 1830510123.5})
    assert "t 1830510123.5\n" in "".join(live.render())
