"""Disposable local hosts for the demo and the tests: Debian 12 containers with systemd and sshd.

The image is built locally with debootstrap (no registry is reachable) and cached under a tag
derived from its recipe, so it is rebuilt only when the recipe changes. By default each host runs
with `--network host` and its own sshd port on 127.0.0.1, so everything stays on loopback; pyinfra
reaches it over real SSH with a per-fleet key and a known_hosts file written from the host's
own key (strict checking, no trust-on-first-use). With `network="none"` hosts have no network at
all (an air-gapped site): pyinfra reaches them through its `@docker/<container>` connector
(docker exec + docker cp). Teardown removes exactly the containers the fleet started. Measured
recipe and quirks: ../shared/notes/test-hosts.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .atomicfile import write_atomic

IMAGE_REPOSITORY = "deepfleet-testhost"
SUITE = "bookworm"  # the default; "trixie" builds a Debian 13 host (tests of current releases)
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "ca-certificates",
            "python3", "python3-venv", "iproute2", "procps", "nftables")
MASKED_UNITS = ("systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
                "getty@tty1.service", "console-getty.service", "systemd-timesyncd.service",
                "systemd-networkd.service", "systemd-resolved.service", "sys-kernel-debug.mount",
                "sys-kernel-tracing.mount", "dev-hugepages.mount", "systemd-logind.service")
SSH_USER = "ci"
CONFIG_MOUNT = "/etc/deepfleet-testhost"  # per-host sshd settings and authorized key, mounted read-only
SHM_SIZE = "1g"  # /dev/shm of every test host (a tmpfs: only what is written there uses memory)

# Files written into the root filesystem before it becomes an image.
_ROOTFS_FILES = {
    "etc/ssh/sshd_config.d/00-testhost.conf": (
        f"Include {CONFIG_MOUNT}/sshd.conf\n"
        f"AuthorizedKeysFile {CONFIG_MOUNT}/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
    ),
    # Host keys are generated at first start, so every container has its own.
    "etc/systemd/system/ssh.service.d/keygen.conf": (
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n"
    ),
    f"etc/sudoers.d/{SSH_USER}": f"{SSH_USER} ALL=(ALL) NOPASSWD:ALL\n",
}
_CHROOT_SETUP = (
    f"useradd --create-home --shell /bin/bash {SSH_USER} && chmod 0440 /etc/sudoers.d/{SSH_USER}"
    " && rm -f /etc/ssh/ssh_host_* && apt-get clean && rm -rf /var/lib/apt/lists/*"
)


class TestHostError(RuntimeError):
    """A test host could not be built or started; the message names the cause and the fix."""


def recipe_digest(suite: str = SUITE) -> str:
    """A digest of everything that defines the image; its tag changes when the recipe does."""
    recipe = {"suite": suite, "packages": PACKAGES, "masked": MASKED_UNITS, "files": _ROOTFS_FILES,
              "setup": _CHROOT_SETUP}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def image_tag(suite: str = SUITE) -> str:
    return f"{IMAGE_REPOSITORY}:{recipe_digest(suite)}"


def ensure_image(cache_dir: Path, log=print, suite: str = SUITE) -> str:
    """Build the test host image (Debian `suite`) unless an image with the current recipe's tag exists."""
    _require_docker()
    tag = image_tag(suite)
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, even across processes
        if _docker("image", "inspect", tag, check=False).returncode == 0:
            return tag
        if os.geteuid() != 0:
            raise TestHostError("building the test host image needs root (debootstrap and chroot); "
                                "run as root once, the image is cached afterwards")
        if not shutil.which("debootstrap"):
            raise TestHostError("debootstrap is not installed; run `apt-get install -y debootstrap`")
        log(f"building test host image {tag} with debootstrap (about a minute, cached afterwards)")
        _build_image(tag, cache_dir / "debs", suite)
    return tag


def _build_image(tag: str, debs_cache: Path, suite: str = SUITE) -> None:
    debs_cache.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    scratch_parent = shm if shm.is_dir() and shutil.disk_usage(shm).free > 2 << 30 else None
    scratch = Path(tempfile.mkdtemp(prefix="deepfleet-rootfs-", dir=scratch_parent))
    rootfs = scratch / "rootfs"
    try:
        keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                   f"--cache-dir={debs_cache}"]
        if keyring.exists():
            command.append(f"--keyring={keyring}")
        _run([*command, suite, str(rootfs), debian_mirror()], "debootstrap")
        for relative, content in _ROOTFS_FILES.items():
            target = rootfs / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        for unit in MASKED_UNITS:
            link = rootfs / "etc/systemd/system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        _run(["chroot", str(rootfs), "/bin/sh", "-c", _CHROOT_SETUP], "image setup in chroot")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "--change", 'CMD ["/sbin/init"]', "-", tag],
                                  stdin=tar.stdout, capture_output=True, text=True)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise TestHostError(f"docker import of the test host image failed: {imported.stderr.strip()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def debian_mirror() -> str:
    """The Debian mirror this machine uses (DEEPFLEET_DEBIAN_MIRROR overrides), else deb.debian.org."""
    if os.environ.get("DEEPFLEET_DEBIAN_MIRROR"):
        return os.environ["DEEPFLEET_DEBIAN_MIRROR"]
    sources = sorted(Path("/etc/apt").glob("sources.list.d/*.sources")) + [Path("/etc/apt/sources.list")]
    for source in sources:
        for line in source.read_text().splitlines() if source.is_file() else ():
            if line.startswith("URIs:"):
                urls = line.split()[1:]
            elif line.startswith("deb "):
                urls = [word for word in line.split() if "://" in word][:1]
            else:
                continue
            for url in urls:
                if url.rstrip("/").endswith("/debian"):
                    return url
    return "http://deb.debian.org/debian"


NETWORKS = ("host", "none")


@dataclass
class TestHost:
    name: str
    container: str
    ssh_port: int
    ports: dict[str, int] = field(default_factory=dict)
    network: str = "host"  # "host": loopback, over SSH; "none": no network, through `@docker/<container>`

    @property
    def inventory_name(self) -> str:
        """The host's name in a pyinfra inventory (it picks the connector)."""
        return self.name if self.network == "host" else f"@docker/{self.container}"


class TestFleet:
    """A set of test hosts sharing one SSH key and known_hosts file, all state under `workdir`."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir).resolve()
        self.hosts: list[TestHost] = []
        self.fleet_id = ""

    @property
    def key_path(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def _state_path(self) -> Path:
        return self.workdir / "fleet.json"

    @classmethod
    def load(cls, workdir: Path) -> "TestFleet | None":
        """The fleet recorded in `workdir`, or None if there is none."""
        fleet = cls(workdir)
        if not fleet._state_path.exists():
            return None
        state = json.loads(fleet._state_path.read_text())
        fleet.fleet_id = state["fleet_id"]
        fleet.hosts = [TestHost(**host) for host in state["hosts"]]
        return fleet

    def start(self, count: int, image: str, port_names: tuple[str, ...] = (), name_prefix: str = "h",
              network: str = "host") -> None:
        """Start `count` hosts from `image`, each with an sshd port and one port per name.

        `network="none"`: each host has its own network namespace with only loopback (so ports need
        not differ); pyinfra reaches it with the @docker connector. Air-gapped installs are tested
        on such hosts, and firewall tests (which add links to them), whose rules must never touch
        this machine's own network."""
        if network not in NETWORKS:
            raise TestHostError(f"network {network!r}: use one of {', '.join(NETWORKS)}")
        _require_docker()
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fleet_id = self.fleet_id or secrets.token_hex(4)
        public_key = self._ensure_key()
        ports = iter(_free_ports(count * (1 + len(port_names))))
        for index in range(1, count + 1):
            name = f"{name_prefix}{index}"
            host = TestHost(name, f"deepfleet-{self.fleet_id}-{name}", next(ports),
                            {port_name: next(ports) for port_name in port_names} if network == "host" else {},
                            network)
            self._run_container(host, image, public_key)
            self.hosts.append(host)
            self._save()
        self.known_hosts_path.write_text("")
        for host in self.hosts:
            self._wait_for_ssh(host)

    def running(self) -> bool:
        """True when every recorded host's container is running."""
        if not self.hosts:
            return False
        result = _docker("inspect", "-f", "{{.State.Running}}", *(h.container for h in self.hosts), check=False)
        return result.returncode == 0 and set(result.stdout.split()) == {"true"}

    def inventory_hosts(self, extra_data: dict | None = None) -> list[tuple[str, dict]]:
        """pyinfra (name, data) pairs for the hosts: SSH settings, sudo, ports, plus `extra_data`
        (no-network hosts: `@docker/<container>` names, where pyinfra runs as root)."""
        entries = []
        for host in self.hosts:
            if host.network == "none":
                entries.append((host.inventory_name, {**host.ports, **(extra_data or {})}))
                continue
            data = {
                "ssh_hostname": "127.0.0.1",
                "ssh_port": host.ssh_port,
                "ssh_user": SSH_USER,
                "ssh_key": str(self.key_path),
                "ssh_known_hosts_file": str(self.known_hosts_path),
                "ssh_strict_host_key_checking": "yes",
                "ssh_allow_agent": False,
                "ssh_look_for_keys": False,
                "_sudo": True,
                **host.ports,
                **(extra_data or {}),
            }
            entries.append((host.name, data))
        return entries

    def destroy(self) -> None:
        """Remove the containers this fleet started, and its working directory."""
        containers = [host.container for host in self.hosts]
        if containers:
            _docker("rm", "--force", "--volumes", *containers, check=False)
        self.hosts = []
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _ensure_key(self) -> str:
        if not self.key_path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                        serialization.NoEncryption())
            write_atomic(self.key_path, private, mode=0o600)
        key = serialization.load_ssh_private_key(self.key_path.read_bytes(), password=None)
        return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()

    def _run_container(self, host: TestHost, image: str, public_key: str) -> None:
        config_dir = self.workdir / "hosts" / host.name
        config_dir.mkdir(parents=True, exist_ok=True)
        config_dir.chmod(0o755)  # sshd's StrictModes: root-owned, not group/world writable
        (config_dir / "sshd.conf").write_text(f"Port {host.ssh_port}\nListenAddress 127.0.0.1\n")
        (config_dir / "authorized_keys").write_text(public_key + "\n")
        name_resolution = ["--add-host", f"{host.name}:127.0.0.1"] if host.network == "host" else []
        _docker(
            "run", "--detach", "--name", host.container,
            "--label", "deepfleet.testhost=1", "--label", f"deepfleet.fleet={self.fleet_id}",
            "--network", host.network, "--hostname", host.name, *name_resolution,
            # Firewall rules only ever inside a host's own network namespace, never this machine's:
            *(["--cap-add", "NET_ADMIN"] if host.network != "host" else []),
            "--cap-add", "SYS_ADMIN", "--cgroupns", "private",
            "--tmpfs", "/run", "--tmpfs", "/run/lock", "--stop-signal", "SIGRTMIN+3",
            # Docker's default /dev/shm is 64 MiB; a host's is half its RAM, and vLLM's engine needs
            # 160 MiB of it for its message queue (found by tests/fleet/test_vllm_host.py)
            "--shm-size", SHM_SIZE,
            "--volume", f"{config_dir}:{CONFIG_MOUNT}:ro",
            image, "/sbin/init",
        )

    def _wait_for_ssh(self, host: TestHost, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        probe = "systemctl is-active --quiet ssh && cat /etc/ssh/ssh_host_ed25519_key.pub"
        while time.monotonic() < deadline:
            result = _docker("exec", host.container, "sh", "-c", probe, check=False)
            if result.returncode == 0 and result.stdout.startswith("ssh-ed25519"):
                key_type, key_data = result.stdout.split()[:2]
                if host.network == "none":
                    return  # reached with docker exec: no host key to trust
                with open(self.known_hosts_path, "a") as known_hosts:
                    known_hosts.write(f"[127.0.0.1]:{host.ssh_port} {key_type} {key_data}\n")
                return
            time.sleep(0.3)
        logs = _docker("logs", "--tail", "20", host.container, check=False)
        raise TestHostError(f"test host {host.name} ({host.container}) did not start sshd within "
                            f"{timeout:.0f}s; container log:\n{logs.stdout}{logs.stderr}")

    def _save(self) -> None:
        state = {"fleet_id": self.fleet_id, "hosts": [asdict(host) for host in self.hosts]}
        write_atomic(self._state_path, json.dumps(state, indent=1) + "\n", mode=0o600)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _require_docker() -> None:
    if not shutil.which("docker"):
        raise TestHostError("docker is not installed; on Debian/Ubuntu run `make demo` as root, "
                            "or install docker.io and start dockerd")
    if _docker("info", "--format", "{{.ServerVersion}}", check=False).returncode != 0:
        raise TestHostError("the Docker engine is not running; start it (`dockerd &` or "
                            "`systemctl start docker`) and retry")


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise TestHostError(f"docker {args[0]} failed: {result.stderr.strip()}")
    return result


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise TestHostError(f"{what} failed (exit {result.returncode}):\n{tail}")
