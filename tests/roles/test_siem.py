"""Audit records to the SIEM: the rendered rsyslog configuration run by a real rsyslogd (Debian 12's,
unpacked into the cache) against a collector on 127.0.0.1 whose TLS certificate comes from a CA that
is not deepfleet's, fed by the gateway's real audit log (rotation, a record of ~100 KB of prompt).

What rsyslog's documentation prescribes is what is checked: RFC 5424 messages (collector parses them
strictly), octet-counted framing over TLS with the peer's name verified, imfile state kept across a
restart (no record twice, none lost), a disk-assisted queue while the collector is away.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from pyinfra.api.util import get_template

from deepfleet.filelock import exclusive_lock
from deepfleet.paths import cache_dir
from deepfleet_runtime.gateway.audit import AuditLog
from deepfleet_runtime.gateway.auditchain import chain_files
from deepfleet_runtime.gateway.config import AuditSection
from roles.common import RoleError, template
from roles.defaults import DEFAULTS
from roles.siem import rsyslog_context, siem_forwarding
from tests.hospitalca import TestCA
from tests.syslogcollector import SyslogCollector, check_forwarded

from .factplan import changed, find, load_case, plan, with_facts

PACKAGES = ("rsyslog", "rsyslog-gnutls", "libestr0", "libfastjson4")
MULTIARCH = f"/usr/lib/{os.uname().machine}-linux-gnu"


def _version(package: str) -> str:
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("Version: "):
            return line.split(" ", 1)[1].strip()
    pytest.skip(f"apt offers no {package} package here (Debian 12's main has it)")


@pytest.fixture(scope="module")
def rsyslog_root() -> Path:
    """Debian's rsyslog (+ gnutls driver and libraries) unpacked once into the cache, keyed by version."""
    key = "-".join(_version(package).replace(":", "_") for package in PACKAGES)
    base = cache_dir() / "debian-bin" / "rsyslog"
    root = base / key
    if (root / "usr/sbin/rsyslogd").exists():
        return root
    base.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(base / ".lock"):
        if not (root / "usr/sbin/rsyslogd").exists():
            with tempfile.TemporaryDirectory(dir=base) as tmp:
                subprocess.run(["apt-get", "download", "-q", *PACKAGES], cwd=tmp, check=True, capture_output=True)
                for deb in Path(tmp).glob("*.deb"):
                    subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
                os.rename(f"{tmp}/x", root)
    return root


class Rsyslogd:
    """rsyslogd in the foreground with the rendered deepfleet file included, its own work directory."""

    def __init__(self, root: Path, work: Path, included: Path):
        self.root, self.work = root, work
        work.mkdir(exist_ok=True)
        self.config = work.parent / "rsyslog.conf"
        self.config.write_text(f'global(workDirectory="{work}")\ninclude(file="{included}")\n')
        self.process = None

    def start(self) -> None:
        env = {**os.environ, "LD_LIBRARY_PATH": f"{self.root}{MULTIARCH}"}
        self.process = subprocess.Popen(
            [str(self.root / "usr/sbin/rsyslogd"), "-n", "-f", str(self.config), "-i", str(self.work / "pid"),
             "-M", f"{self.root}{MULTIARCH}/rsyslog"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=30)
        return output


def _write_records(directory: Path, records: list[dict]) -> None:
    async def run():
        log = AuditLog(AuditSection(dir=directory, rotate_bytes=4096))
        for record in records:
            await log.append(record)
        log.close()

    asyncio.run(run())


def _chain_lines(directory: Path) -> list[bytes]:
    return [line for _, path in chain_files(directory) for line in path.read_bytes().splitlines()]


def _rendered(tmp_path: Path, audit: Path, port: int, ca: Path, **settings) -> Path:
    context = rsyslog_context({**DEFAULTS, "gateway_audit_dir": str(audit), "siem_syslog_target": f"127.0.0.1:{port}",
                               "siem_syslog_ca": str(ca), "siem_syslog_peer_name": "siem.test", **settings})
    context["ca_file"] = str(ca)  # on hosts /etc/deepfleet/siem-ca.pem, pushed from siem_syslog_ca
    path = tmp_path / "30-deepfleet-audit.conf"
    path.write_text(get_template(template("rsyslog-deepfleet-audit.conf.j2")).render(**context))
    return path


def test_rsyslog_forwards_every_record_over_tls_with_its_seq_and_hash_across_a_restart_and_an_outage(
        rsyslog_root, tmp_path):
    audit = tmp_path / "audit"
    ca = TestCA(tmp_path)
    records = [{"type": "request", "n": n, "prompt": "x" * (100_000 if n == 3 else 40)} for n in range(12)]
    _write_records(audit, records[:6])
    assert len(chain_files(audit)) > 1  # rotated: rsyslog follows new files

    with SyslogCollector(tls=ca.server_context("siem.test")) as collector:
        rsyslogd = Rsyslogd(rsyslog_root, tmp_path / "work", _rendered(tmp_path, audit, collector.port, ca.cert_path))
        rsyslogd.start()
        try:
            collector.wait_for(6)
            _write_records(audit, records[6:9])  # the gateway goes on writing (a new AuditLog recovers the chain)
            collector.wait_for(9)
        finally:
            output = rsyslogd.stop()
        assert collector.errors == [], collector.errors
        port = collector.port
        forwarded = list(collector.messages)

    _write_records(audit, records[9:])  # written while rsyslog is down and the collector unreachable
    rsyslogd.start()
    time.sleep(2)  # rsyslog retries into the void, queueing
    with SyslogCollector(tls=ca.server_context("siem.test"), port=port) as collector:
        try:
            later = collector.wait_for(3, timeout=60)
            time.sleep(1)
        finally:
            output += rsyslogd.stop()
    check_forwarded(forwarded + later, _chain_lines(audit))  # none lost, each intact
    assert "error" not in output.lower(), output


def test_a_collector_whose_certificate_names_another_host_gets_nothing(rsyslog_root, tmp_path):
    audit = tmp_path / "audit"
    ca = TestCA(tmp_path)
    _write_records(audit, [{"type": "request"}])
    with SyslogCollector(tls=ca.server_context("impostor.test")) as collector:
        rsyslogd = Rsyslogd(rsyslog_root, tmp_path / "work", _rendered(tmp_path, audit, collector.port, ca.cert_path))
        rsyslogd.start()
        try:
            with pytest.raises(AssertionError, match="received 0 of 1"):
                collector.wait_for(1, timeout=4)
        finally:
            rsyslogd.stop()
    assert collector.connections >= 1


def test_the_role_installs_rsyslog_and_its_config_only_on_gateways_with_a_target(tmp_path, control_data):
    ca = TestCA(tmp_path)
    data = {**control_data, "siem_syslog_target": "siem.hospital.internal:6514", "siem_syslog_ca": str(ca.cert_path)}
    ops = plan(load_case("debian12-nogpu"), siem_forwarding, data=data)
    assert [op.name.split(" | ")[1] for op in ops] == [
        "rsyslog: refresh apt lists (after a repository change, or for missing packages)", "rsyslog: packages",
        "SIEM collector's CA", "rsyslog: audit records to the SIEM", "rsyslog runs",
        "rsyslog: restart for the new forwarding"]
    conf = find(ops, "audit records to the SIEM").uploads()["/etc/rsyslog.d/30-deepfleet-audit.conf"]
    assert 'target="siem.hospital.internal" port="6514"' in conf
    assert 'StreamDriverPermittedPeers="siem.hospital.internal"' in conf
    assert 'File="/var/lib/deepfleet-gateway/audit/audit-*.jsonl"' in conf
    assert plan(load_case("debian12-nogpu"), siem_forwarding, data=control_data) == []
    rocky = plan(load_case("rocky9-8xh100"), siem_forwarding, data=data)
    assert "dnf install -y rsyslog rsyslog-gnutls logrotate" in find(rocky, "rsyslog: packages").shell()


@pytest.mark.parametrize(("target", "problem"), [("siem.hospital.internal", "write the collector as host:port"),
                                                 ("siem:99999", "write the collector as host:port")])
def test_a_target_without_a_port_is_refused_naming_the_setting(target, problem):
    with pytest.raises(RoleError, match=problem):
        rsyslog_context({**DEFAULTS, "siem_syslog_target": target, "siem_syslog_ca": "ca.pem"})


def test_tls_without_the_collectors_ca_is_refused():
    with pytest.raises(RoleError, match="siem_syslog_ca is not set"):
        rsyslog_context({**DEFAULTS, "siem_syslog_target": "siem:6514"})



def test_forwarding_turned_off_is_removed_again_and_rsyslog_restarted(control_data):
    """A site that stops forwarding (or a host that no longer runs a gateway) keeps no forwarding
    configuration: rsyslog would otherwise go on sending the audit trail where nobody asked for it."""
    facts = with_facts(load_case("debian12-nogpu"), **{"files.File": {
        "path=/etc/rsyslog.d/30-deepfleet-audit.conf": {"size": 2000, "mode": 644},
        "path=/etc/deepfleet/siem-ca.pem": {"size": 700, "mode": 644}, "*": None}})
    assert changed(plan(facts, siem_forwarding, data=control_data)) == [
        "Audit to the SIEM | rsyslog: no forwarding to the SIEM", "Audit to the SIEM | SIEM collector's CA: removed",
        "Audit to the SIEM | rsyslog: restart for the new forwarding"]
    assert plan(load_case("debian12-nogpu"), siem_forwarding, data=control_data) == []  # never configured: nothing


@pytest.mark.parametrize("case", ["debian12-nogpu", "rocky9-8xh100"])
def test_rsyslogs_own_files_are_rotated_by_the_os_logrotate(tmp_path, control_data, case):
    """rsyslog also writes the journal to /var/log (Debian: syslog, auth.log...; RHEL: messages) and its
    packages leave their rotation to logrotate (/etc/logrotate.d/rsyslog), which Debian's rsyslog only
    recommends; deepfleet installs without recommends, so it names logrotate itself."""
    data = {**control_data, "siem_syslog_target": "siem.hospital.internal:6514",
            "siem_syslog_ca": str(TestCA(tmp_path).cert_path)}
    install = " ".join(find(plan(load_case(case), siem_forwarding, data=data), "rsyslog: packages").shell())
    assert "logrotate" in install.split(), install
