"""Which names a host's certificates carry (roles/tls.py) and whose client certificates a runtime
admits (roles/runtime.py), planned on a small fleet."""

from __future__ import annotations

from pathlib import Path

import yaml
from cryptography import x509

from deepfleet.paths import SITE_DEPLOY

from .factplan import find, load_case, plan

FLEET = ('gateways = [("gw1", {"ssh_hostname": "10.0.0.11"})]\n'
         'gpu_nodes = [("gpu1", {"ssh_hostname": "10.0.1.21"}), ("gpu2", {"ssh_hostname": "10.0.1.22"})]\n')


def _names(pki: Path, host: str, kind: str) -> list[str]:
    cert = x509.load_pem_x509_certificate((pki / "hosts" / host / f"{kind}.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(str(name.value) for name in sans)


def _plan(control_data, tmp_path, host: str):
    (tmp_path / "fleet.py").write_text(FLEET)
    data = {**control_data, "gateway_server_names": ["llm.example.internal"]}
    return plan(load_case("debian12-nogpu"), SITE_DEPLOY, data=data, inventory=tmp_path / "fleet.py", host_name=host)


def test_only_gateways_get_the_name_clients_use_gpu_nodes_name_themselves(control_data, tmp_path, wheelhouse):
    pki = Path(control_data["gateway_pki_dir"])
    for host in ("gw1", "gpu1"):
        _plan(control_data, tmp_path, host)
    assert "llm.example.internal" in _names(pki, "gw1", "server")
    assert _names(pki, "gpu1", "server") == ["10.0.1.21", "127.0.0.1", "gpu1", "localhost"]


def test_a_gpu_nodes_runtime_admits_the_gateways_and_its_own_readiness_check_only(control_data, tmp_path, wheelhouse):
    ops = _plan(control_data, tmp_path, "gpu1")
    config = yaml.safe_load(find(ops, "Runtime config").uploads()["/etc/deepfleet/runtime.yaml"])
    assert config["tls"]["allowed_clients"] == ["gpu1", "gw1"]  # not gpu2


def test_with_monitoring_the_runtime_also_admits_the_prometheus_hosts(control_data, tmp_path, wheelhouse):
    (tmp_path / "fleet.py").write_text(FLEET + 'monitoring = [("mon1", {"ssh_hostname": "10.0.2.31"})]\n')
    ops = plan(load_case("debian12-nogpu"), SITE_DEPLOY, data={**control_data, "monitoring_enabled": True},
               inventory=tmp_path / "fleet.py", host_name="gpu1")
    config = yaml.safe_load(find(ops, "Runtime config").uploads()["/etc/deepfleet/runtime.yaml"])
    assert config["tls"]["allowed_clients"] == ["gpu1", "gw1", "mon1"]  # Prometheus scrapes /metrics
