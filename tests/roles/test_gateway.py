"""The gateway role planned against recorded facts: its own service account, apart from the runtime's."""

from __future__ import annotations

import configparser

from deepfleet.paths import SITE_DEPLOY

from .factplan import find, load_case, plan


def _unit(text: str) -> dict:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return {section: dict(parser[section]) for section in parser.sections()}


def test_the_gateway_runs_under_its_own_account_that_alone_writes_the_audit_log(control_data, wheelhouse):
    ops = plan(load_case("debian12-nogpu"), SITE_DEPLOY, {**control_data, "gateway_audit_signing": True})
    gateway = _unit(find(ops, "Gateway systemd unit").uploads()["/etc/systemd/system/deepfleet-gateway.service"])
    runtime = _unit(find(ops, "Runtime systemd unit").uploads()["/etc/systemd/system/deepfleet-runtime.service"])
    assert (gateway["Service"]["User"], gateway["Service"]["Group"]) == ("deepfleet-gateway", "deepfleet-gateway")
    assert (runtime["Service"]["User"], runtime["Service"]["Group"]) == ("deepfleet", "deepfleet")
    # the runtime's writable state holds nothing of the gateway's: it could rename the audit directory
    assert "/var/lib/deepfleet " not in gateway["Service"]["ReadWritePaths"] + " "
    audit = " ".join(find(ops, "Audit log directory").shell())
    assert "/var/lib/deepfleet-gateway/audit" in audit and "deepfleet-gateway:deepfleet-gateway" in audit
    for name in ("Audit checkpoint signing key", "API key hashes", "Gateway config"):
        assert "root:deepfleet-gateway" in " ".join(find(ops, name).shell()), name
    account = " ".join(find(ops, "Gateway service user").shell())
    assert "deepfleet-gateway" in account and "-G deepfleet" in account  # reads the host's TLS files
