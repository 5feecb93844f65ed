"""The site's host on a hospital's network, all on loopback and started by the test (hospitalnet.py,
tests/syslogcollector.py): an internal apt mirror over HTTPS whose certificate the hospital's own CA
signed (not deepfleet's), the host's only Debian source during the hospital's deploy; a proxy in
front of an "upstream" repository; the SIEM's syslog collector with a certificate of that CA too.
One deploy with the hospital's settings serves every check here (fleet time is CI's scarcest); the
site's own settings take it all away again.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass

import pytest

from deepfleet.deployrun import DeployResult
from deepfleet import testhosts
from deepfleet.paths import cache_dir
from tests.hospitalca import TestCA
from tests.syslogcollector import SyslogCollector, check_forwarded

from .aptrepo import RepoServer, SigningKey, build_flat_repo, closure, download, dummy_deb
from .hospitalnet import ForwardProxy, HttpsRepoServer

pytestmark = pytest.mark.fleet
MESSAGES = [{"role": "user", "content": "Hello from the hospital's network"}]
AUDIT = "/var/lib/deepfleet-gateway/audit"
# The host's real apt, its real CA store, reading only the test's two repositories.
UPDATE = ("apt-get update -o Dir::Etc::SourceList=/tmp/df-net/sources.list -o Dir::Etc::SourceParts=/tmp/df-net/parts "
          "-o Dir::State::Lists=/tmp/df-net/lists 2>&1; echo rc=$?")
SIEM_PACKAGES = ["rsyslog", "rsyslog-gnutls", "logrotate"]  # roles/siem.py's rsyslog_packages, TLS on
SIEM_OPERATIONS = ["Audit to the SIEM | rsyslog: no forwarding to the SIEM",
                   "Audit to the SIEM | SIEM collector's CA: removed",
                   "Audit to the SIEM | rsyslog: restart for the new forwarding"]


@dataclass
class Hospital:
    before: str  # `apt-get update` of the test's repositories before the hospital's settings
    proxy_requests_before: list[str]
    deployed: DeployResult | None
    proxy: ForwardProxy
    collector: SyslogCollector
    restored: DeployResult | None = None


@pytest.fixture(scope="module")
def hospital(site, tmp_path_factory):
    """The host deployed once with trust_ca_certificates, proxy_* and siem_syslog_*; the site's own
    settings deployed again afterwards (by test_the_sites_own_settings_take_the_hospital_away_again)."""
    tmp = tmp_path_factory.mktemp("hospital")
    ca, key = TestCA(tmp), SigningKey(tmp / "gnupg")
    # The mirror holds what the hospital's deploy installs (the SIEM role's rsyslog), from Debian's packages
    siem_debs = download(closure(SIEM_PACKAGES, testhosts.ensure_image(cache_dir() / "testhost")),
                         cache_dir() / "aptrepo" / "debs")
    mirror = build_flat_repo(tmp / "mirror", [dummy_deb(tmp, "hospital-probe", "1.0"), *siem_debs], key)
    upstream = build_flat_repo(tmp / "upstream", [dummy_deb(tmp, "upstream-probe", "1.0")], key)
    (tmp / "key.asc").write_text(key.public_armored())
    key.close()
    with HttpsRepoServer(mirror, ca.server_context("mirror.hospital.test")) as https_mirror, \
            RepoServer(upstream) as plain, ForwardProxy({"upstream.hospital.test": _port(plain.url)}) as proxy, \
            SyslogCollector(tls=ca.server_context("siem.hospital.test")) as collector:
        (tmp / "sources.list").write_text(
            f"deb [signed-by=/tmp/df-net/key.asc] https://mirror.hospital.test:{https_mirror.port}/ ./\n"
            f"deb [signed-by=/tmp/df-net/key.asc] http://upstream.hospital.test:{_port(plain.url)}/ ./\n")
        (tmp / "debian.list").write_text(
            f"deb [signed-by=/tmp/df-net/key.asc] https://mirror.hospital.test:{https_mirror.port}/ ./\n")
        site.on_host("mkdir -p /tmp/df-net/lists/partial /tmp/df-net/parts "
                     "&& echo '127.0.0.1 mirror.hospital.test upstream.hospital.test' >> /etc/hosts "
                     "&& cp -p /etc/apt/sources.list /tmp/df-sources.list.saved")
        for name in ("key.asc", "sources.list", "debian.list"):
            subprocess.run(["docker", "cp", str(tmp / name), f"{site.host.container}:/tmp/df-net/{name}"], check=True)
        settings = {"trust_ca_certificates": [str(ca.cert_path)], "proxy_http": proxy.url, "proxy_https": proxy.url,
                    "proxy_no_proxy": ["localhost", "127.0.0.1", "mirror.hospital.test"],
                    "siem_syslog_target": f"127.0.0.1:{collector.port}", "siem_syslog_ca": str(ca.cert_path),
                    "siem_syslog_peer_name": "siem.hospital.test"}
        state = Hospital("", [], None, proxy, collector)
        try:
            state.before, state.proxy_requests_before = site.on_host(UPDATE), list(proxy.requests)
            site.on_host("cat /tmp/df-net/debian.list > /etc/apt/sources.list")  # the hospital's mirror, only
            state.deployed = site.deploy(site.with_overrides(tmp / "hospital.json", **settings))
            yield state
        finally:
            site.on_host("cat /tmp/df-sources.list.saved > /etc/apt/sources.list; "
                         "grep -v hospital.test /etc/hosts > /tmp/df-hosts; cat /tmp/df-hosts > /etc/hosts; "
                         "rm -rf /tmp/df-net /tmp/df-hosts /tmp/df-sources.list.saved", check=False)
            if state.restored is None:
                site.deploy()


def test_the_hospitals_settings_deploy(hospital):
    assert hospital.deployed.failed_hosts == [] and hospital.deployed.changed > 0


def test_apt_reaches_an_https_mirror_of_the_hospitals_ca_directly_and_the_rest_through_its_proxy(site, hospital):
    """Before the hospital's settings the host's apt refuses the mirror's certificate; the deploy trusts
    the hospital's CA before it installs anything, so it installs rsyslog from that mirror; then the
    same `apt-get update` reads the mirror directly (proxy_no_proxy) and the upstream through the proxy."""
    assert "Certificate verification failed: The certificate is NOT trusted" in hospital.before, hospital.before
    assert hospital.proxy_requests_before == []  # apt went straight to the upstream repository
    policy = site.on_host("apt-cache policy rsyslog")
    assert re.search(r"\*\*\* \S+ \d+\n\s+\d+ https://mirror\.hospital\.test:\d+ \./ Packages", policy), policy
    after = site.on_host(UPDATE)
    assert after.rstrip().endswith("rc=0") and "Err:" not in after and "Failed to fetch" not in after, after
    lists = site.on_host("ls /tmp/df-net/lists")
    assert "mirror.hospital.test" in lists and "upstream.hospital.test" in lists
    assert hospital.proxy.requests and all("upstream.hospital.test" in line for line in hospital.proxy.requests)


def test_the_gateways_audit_records_reach_the_siem_collector_with_seq_and_hash(site, hospital):
    """The host's own rsyslog (Debian's package) sends every record of the gateway's audit log, from
    its first, as RFC 5424 over TLS to the collector, each carrying its seq, prev and hash; a request
    made now arrives too, its two records (started, request) among them."""
    with site.client() as client:
        request_id = client.chat.completions.with_raw_response.create(
            model="tiny-deepseek-v3", messages=MESSAGES, max_tokens=2).headers["x-request-id"]
    lines = _audit_lines_once_recorded(site, request_id)
    received = hospital.collector.wait_for(len(lines), timeout=60)
    assert hospital.collector.errors == [], hospital.collector.errors
    check_forwarded(received, lines)  # every record, in the chain's order by seq, none altered
    assert [json.loads(message.msg)["type"] for message in received
            if json.loads(message.msg).get("request_id") == request_id] == ["started", "request"]


def test_rsyslogs_own_files_are_rotated_and_the_journal_keeps_to_its_limits(site, hospital):
    """rsyslog also writes the journal to /var/log/syslog (Debian's journald forwards to it): the OS's
    logrotate rotates those files on its daily timer. journald itself reports the limits the logs
    role set (SystemMaxUse=2G; its own default here would be 4G, 10% of the disk at most)."""
    assert site.on_host("test -f /etc/logrotate.d/rsyslog && systemctl is-enabled logrotate.timer").strip() == "enabled"
    journald = site.on_host("journalctl -b -t systemd-journald --no-pager -o cat | grep 'System Journal' | tail -1")
    assert ", max 2.0G," in journald, journald


def test_the_sites_own_settings_take_the_hospital_away_again(site, hospital):
    hospital.restored = site.deploy()
    assert set(SIEM_OPERATIONS) <= set(hospital.restored.changed_operations), hospital.restored.changed_operations
    left = site.on_host("ls /usr/local/share/ca-certificates /etc/apt/apt.conf.d /etc/rsyslog.d")
    assert left.count("deepfleet") == 0, left
    assert "siem-ca.pem" not in site.on_host("ls /etc/deepfleet")


def _audit_lines_once_recorded(site, request_id: str) -> list[bytes]:
    """The host's audit log, in the chain's order, once it holds the request's end record (written just
    after the response went out)."""
    deadline = time.monotonic() + 30
    while True:
        lines = site.on_host(f"cat $(ls {AUDIT}/audit-*.jsonl | sort)").encode().splitlines()
        if sum(request_id.encode() in line for line in lines) >= 2 or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
