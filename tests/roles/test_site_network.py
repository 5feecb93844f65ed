"""The site's network before any repository is used: proxy (roles/proxy.py), its CAs (roles/trust.py),
time (roles/timesync.py), journald's limits (roles/logs.py), the clock report of deploys/verify.py.

Planned against recorded facts; the files are checked against what the vendors document: apt.conf(5)
and apt-transport-http(1) (parsed by this machine's real apt-config), Docker's "Configure the daemon
to use a proxy" (systemd drop-in) and "Verify repository client with certificates" (certs.d),
update-ca-certificates(8) / update-ca-trust(8), chrony.conf(5), journald.conf(5).
"""

from __future__ import annotations

import configparser
import subprocess

import pytest
from pyinfra.api.util import get_template

from deepfleet.paths import SITE_DEPLOY
from roles.common import RoleError, template
from roles.defaults import DEFAULTS
from roles.facts import ClockOffset
from roles.logs import journald_conf, journald_limits
from roles.proxy import apt_proxy_conf, build_args, docker_proxy_dropin, site_proxy
from roles.timesync import chrony_context, timesync
from roles.trust import site_trust
from roles.verify import clock_check
from tests.hospitalca import TestCA

from .factplan import changed, find, load_case, plan, with_facts

PROXY = {"proxy_http": "http://proxy.hospital.test:3128", "proxy_https": "http://proxy.hospital.test:3128",
         "proxy_no_proxy": ["localhost", "127.0.0.1", "::1", "mirror.hospital.test", ".hospital.test", "10.0.0.0/8"]}


def test_apt_goes_through_the_proxy_and_straight_to_the_internal_mirror_as_apt_reads_it(tmp_path):
    conf = tmp_path / "proxy.conf"
    conf.write_text(apt_proxy_conf({**DEFAULTS, **PROXY}))
    dumped = subprocess.run(["apt-config", "-c", str(conf), "dump", "Acquire"], capture_output=True, text=True,
                            check=True).stdout
    assert 'Acquire::http::Proxy "http://proxy.hospital.test:3128";' in dumped
    assert 'Acquire::https::Proxy "http://proxy.hospital.test:3128";' in dumped
    assert 'Acquire::http::Proxy::mirror.hospital.test "DIRECT";' in dumped
    assert 'Acquire::https::Proxy::127.0.0.1 "DIRECT";' in dumped
    assert "hospital.test::" not in dumped and "10.0.0.0" not in dumped  # apt takes host names only
    assert apt_proxy_conf(DEFAULTS) is None


def test_dockerd_gets_the_drop_in_dockers_documentation_shows():
    text = docker_proxy_dropin({**DEFAULTS, **PROXY})
    assert text.splitlines()[1] == "[Service]"
    assert 'Environment="HTTP_PROXY=http://proxy.hospital.test:3128"' in text
    assert 'Environment="HTTPS_PROXY=http://proxy.hospital.test:3128"' in text
    assert 'Environment="NO_PROXY=localhost,127.0.0.1,::1,mirror.hospital.test,.hospital.test,10.0.0.0/8"' in text
    assert build_args({**DEFAULTS, **PROXY})[:4] == ["--build-arg", "HTTP_PROXY=http://proxy.hospital.test:3128",
                                                     "--build-arg", "http_proxy=http://proxy.hospital.test:3128"]


def test_the_proxy_role_writes_apt_and_dockerd_on_a_gpu_host_and_reloads_docker_on_a_change():
    ops = plan(load_case("ubuntu2204-2xa100"), site_proxy, data=PROXY)
    assert changed(ops) == ["Site proxy | apt through the proxy", "Site proxy | dockerd through the proxy",
                            "Site proxy | dockerd: reload its unit, restart it if it runs"]
    assert find(ops, "dockerd through the proxy").uploads() == {
        "/etc/systemd/system/docker.service.d/http-proxy.conf": docker_proxy_dropin({**DEFAULTS, **PROXY})}
    assert find(ops, "reload its unit").shell() == ["systemctl daemon-reload", "systemctl try-restart docker.service"]
    assert plan(load_case("ubuntu2204-2xa100"), site_proxy) == []  # no proxy, nothing of ours there: nothing


def test_dnf_gets_one_proxy_line_in_its_main_section():
    ops = plan(load_case("rocky9-8xh100"), site_proxy, data=PROXY)
    assert "proxy=http://proxy.hospital.test:3128" in " ".join(find(ops, "dnf through the proxy").shell())
    assert "/etc/dnf/dnf.conf" in " ".join(find(ops, "dnf through the proxy").shell())


def test_a_proxy_turned_off_is_removed_again():
    facts = with_facts(load_case("ubuntu2204-2xa100"), **{"files.File": {
        "path=/etc/apt/apt.conf.d/80deepfleet-proxy": {"size": 80, "mode": 644},
        "path=/etc/systemd/system/docker.service.d/http-proxy.conf": {"size": 200, "mode": 644}, "*": None}})
    assert changed(plan(facts, site_proxy)) == ["Site proxy | apt: no proxy", "Site proxy | dockerd: no proxy",
                                                "Site proxy | dockerd: reload its unit, restart it if it runs"]


@pytest.mark.parametrize(("case", "anchors", "update"), [
    ("debian12-nogpu", "/usr/local/share/ca-certificates", "update-ca-certificates"),
    ("ubuntu2404-rtx4090", "/usr/local/share/ca-certificates", "update-ca-certificates"),
    ("rocky9-8xh100", "/etc/pki/ca-trust/source/anchors", "update-ca-trust extract")])
def test_the_sites_ca_goes_into_the_os_trust_store_and_dockers(tmp_path, case, anchors, update):
    ca = TestCA(tmp_path)
    data = {"trust_ca_certificates": [str(ca.cert_path)], "trust_docker_registries": ["registry.hospital.test:5000"],
            "docker_registry_mirrors": ["https://mirror.hospital.test"]}
    ops = plan(load_case(case), site_trust, data=data)
    assert find(ops, "Site CA deepfleet-hospital-ca.crt").uploads() == {f"{anchors}/deepfleet-hospital-ca.crt":
                                                                         "hospital-ca.pem"}
    assert find(ops, "Rebuild the host's CA bundle").shell() == [update]
    for registry in ("registry.hospital.test:5000", "mirror.hospital.test"):
        assert find(ops, f"the site's CAs for {registry}").uploads() == {
            f"/etc/docker/certs.d/{registry}/ca.crt": ca.cert_path.read_text()}


def test_site_cas_come_before_the_proxy_time_and_every_repository(control_data, wheelhouse, tmp_path):
    ca = TestCA(tmp_path)
    ops = plan(load_case("debian12-nogpu"), SITE_DEPLOY, {**control_data, **PROXY, "ntp_servers": ["ntp.hospital.test"],
                                                          "trust_ca_certificates": [str(ca.cert_path)]})
    names = [op.name for op in ops]
    first_package_step = next(i for i, name in enumerate(names) if "apt" in name.lower() and "refresh" in name)
    assert names.index("Site CAs | Rebuild the host's CA bundle") < names.index("Site proxy | apt through the proxy")
    assert names.index("Site proxy | apt through the proxy") < first_package_step
    assert names[first_package_step].startswith("Time sync")  # chrony is the first package, through the proxy


def test_a_ca_file_that_is_no_pem_certificate_is_refused_naming_it(tmp_path):
    der = tmp_path / "hospital.der"
    der.write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(RoleError, match="holds no PEM certificate"):
        plan(load_case("debian12-nogpu"), site_trust, data={"trust_ca_certificates": [str(der)]})


def test_a_ca_left_out_of_the_setting_leaves_the_store():
    old = "/usr/local/share/ca-certificates/deepfleet-old-ca.crt"
    facts = with_facts(load_case("debian12-nogpu"), **{"files.FindFiles": {"*": [old]},
                                                       "files.File": {f"path={old}": {"size": 700, "mode": 644},
                                                                      "*": None}})
    ops = plan(facts, site_trust)
    assert changed(ops) == ["Site CAs | Site CA deepfleet-old-ca.crt: no longer trusted",
                            "Site CAs | Rebuild the host's CA bundle"]


@pytest.mark.parametrize(("case", "config", "service"), [
    ("debian12-nogpu", "/etc/chrony/chrony.conf", "chrony.service"),
    ("rocky9-8xh100", "/etc/chrony.conf", "chronyd.service")])
def test_chrony_asks_only_the_sites_servers(case, config, service):
    ops = plan(load_case(case), timesync, data={"ntp_servers": ["ntp1.hospital.test", "10.0.0.5"]})
    text = find(ops, "the site's NTP servers").uploads()[config]
    servers = [line for line in text.splitlines() if line.startswith(("server ", "pool ", "peer "))]
    assert servers == ["server ntp1.hospital.test iburst", "server 10.0.0.5 iburst"]
    assert "makestep 1.0 3" in text and "rtcsync" in text
    assert "chrony" in " ".join(find(ops, "Time sync: packages").shell())
    restart = find(ops, "restart for its new servers")  # start: it is not running in the case's facts
    assert restart.change == "conditional" and restart.shell() == [f"systemctl start {service}"]
    assert plan(load_case(case), timesync) == []


def test_chrony_files_are_where_each_distribution_keeps_them():
    from roles.hostos import HostOS

    debian = chrony_context({**DEFAULTS, "ntp_servers": ["a"]}, HostOS("debian", "12", "bookworm", "x86_64"))
    rocky = chrony_context({**DEFAULTS, "ntp_servers": ["a"]}, HostOS("rocky", "9.4", "", "x86_64"))
    assert (debian["driftfile"], debian["keyfile"]) == ("/var/lib/chrony/chrony.drift", "/etc/chrony/chrony.keys")
    assert (rocky["driftfile"], rocky["keyfile"]) == ("/var/lib/chrony/drift", "/etc/chrony.keys")
    rendered = get_template(template("chrony.conf.j2")).render(**rocky)
    assert "driftfile /var/lib/chrony/drift\n" in rendered


def test_journald_is_limited_and_restarted_only_when_its_limits_change():
    conf = configparser.ConfigParser()
    conf.read_string(journald_conf(DEFAULTS))
    assert dict(conf["Journal"]) == {"systemmaxuse": "2G", "systemkeepfree": "4G", "maxretentionsec": "30day"}
    ops = plan(load_case("debian12-nogpu"), journald_limits)
    assert list(find(ops, "journald: limits").uploads()) == ["/etc/systemd/journald.conf.d/60-deepfleet.conf"]
    assert find(ops, "restart for its new limits").change == "conditional"
    off = {"logs_journald_max_use": None, "logs_journald_keep_free": None, "logs_journald_max_retention": None}
    assert plan(load_case("debian12-nogpu"), journald_limits, data=off) == []


CHRONY_TRACKING = "C0A80001,ntp1.hospital.test,3,1765090000.123456789,-0.000412345,-0.000012000,0.000200000," \
                  "-12.345,0.010,0.100,0.001234567,0.000456789,64.5,Normal"


def test_the_clock_offset_is_read_from_chrony_and_timesyncd():
    chrony = ClockOffset().process(["source=chrony", CHRONY_TRACKING])
    assert chrony["offset_s"] == pytest.approx(-0.000412345) and "ntp1.hospital.test" in chrony["detail"]
    unsynced = ClockOffset().process(["source=chrony", CHRONY_TRACKING.replace("Normal", "Not synchronised")])
    assert unsynced["offset_s"] is None
    down = ClockOffset().process(["source=chrony", "506 Cannot talk to daemon"])
    assert down["offset_s"] is None and "506" in down["detail"]
    timesyncd = ClockOffset().process(load_case("ubuntu2204-2xa100")["roles.facts.ClockOffset"]["$output"])
    assert timesyncd["offset_s"] == pytest.approx(-0.001201)


def test_verify_reports_the_offset_and_fails_a_clock_too_far_off():
    clock = ClockOffset().process(["source=chrony", CHRONY_TRACKING])
    assert clock_check(DEFAULTS, clock).ok and "-0.412 ms" in clock_check(DEFAULTS, clock).detail
    far = {**clock, "offset_s": 0.25}
    assert not clock_check(DEFAULTS, far).ok and "+250.000 ms, at most 100 ms" in clock_check(DEFAULTS, far).detail
    unsynced = {**clock, "offset_s": None}
    assert clock_check(DEFAULTS, unsynced).ok  # nothing promised without ntp_servers
    assert not clock_check({**DEFAULTS, "ntp_servers": ["ntp1"]}, unsynced).ok
